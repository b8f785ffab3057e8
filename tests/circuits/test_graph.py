"""The edge graph: EAP-IG's convention and counts."""

import numpy as np
import pytest

from actstore.circuits.graph import Graph
from actstore.errors import ConfigError


def _count(n_layers: int, n_heads: int) -> int:
    heads = sum(3 * n_heads * (1 + (n_heads + 1) * layer) for layer in range(n_layers))
    mlps = sum(1 + n_heads * (layer + 1) + layer for layer in range(n_layers))
    return heads + mlps + 1 + n_layers * (n_heads + 1)


def test_gpt2_small_has_32491_edges():
    g = Graph(12, 12)
    assert g.n_edges == 32491 == _count(12, 12)
    assert len(g.upstream) == 1 + 12 * 13 and len(g.downstream) == 12 * (36 + 1) + 1


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (4, 4), (48, 25)])
def test_counts_and_order(shape):
    g = Graph(*shape)
    assert g.n_edges == _count(*shape)
    assert np.all(np.diff(g.dst) >= 0)  # destination-major
    for d in range(len(g.downstream)):
        assert np.all(np.diff(g.src[g.edges_into(d)]) > 0)  # sources in forward order


def test_names_and_rules():
    g = Graph(3, 2)
    names = set(g.names)
    assert {
        "input->a0.h0<q>",
        "a0.h1->a2.h0<k>",
        "m0->a1.h1<v>",
        "a1.h0->m1",
        "m2->logits",
        "input->logits",
    } <= names
    assert not {"a1.h0->a1.h1<q>", "m1->m1", "m1->a1.h0<q>", "a2.h0->m1"} & names
    i = g.edge_index(["a0.h1->a2.h0<k>", "input->logits"])
    assert [g.names[k] for k in i] == ["a0.h1->a2.h0<k>", "input->logits"]
    assert g.downstream[g.downstream_index("a2.h0<k>")].node == "a2.h0"
    with pytest.raises(ConfigError, match="edges are named like"):
        g.edge_index("a1.h0->a1.h1<q>")
