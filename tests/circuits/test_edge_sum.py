"""edge_sum's hand-written backward against autograd's gradcheck (float64 finite differences)."""

import torch

from actstore.circuits.edge_sum import edge_sum


def test_edge_sum_value_and_gradients():
    g = torch.Generator().manual_seed(0)
    n_edges = 40
    mask = torch.rand(2, n_edges, generator=g, dtype=torch.float64, requires_grad=True)
    d1 = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    d2 = torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    c1 = torch.arange(12).view(4, 3)  # (u, n) edge numbers
    c2 = torch.tensor([[20, 25, 39]])
    want = torch.einsum("vun,vu...->vn...", mask[:, c1], d1) + torch.einsum(
        "vun,vu...->vn...", mask[:, c2], d2
    )
    assert torch.allclose(edge_sum(mask, [(c1, d1), (c2, d2)]), want, rtol=0, atol=1e-12)
    assert want.abs().max() > 1
    assert torch.autograd.gradcheck(lambda m, a, b: edge_sum(m, [(c1, a), (c2, b)]), (mask, d1, d2))
