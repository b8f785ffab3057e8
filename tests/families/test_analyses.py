"""The logit lens and DLA on every family, against the plain transformers model (its own
modules, hooked, and its own logits): the lens decodes as the model does, soft-capping
included (Gemma 2); DLA's parts sum to the logit difference the model computes, and a
family whose logits are no such sum (Gemma 2) is refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import actstore
from actstore.analysis import direct_logit_attribution, logit_lens
from actstore.errors import ConfigError
from actstore.random_models import FAMILIES

from ..conftest import DOCS

ROWS = 4


@pytest.fixture(scope="module")
def family_store(family_model, tmp_path_factory):
    """``family_store(family)``: 4 rows of 16 tokens of the family's random model, with
    every residual, z and MLP output; each cached once."""
    made: dict[str, actstore.ActivationStore] = {}

    def get(family: str) -> actstore.ActivationStore:
        if family not in made:
            out = tmp_path_factory.mktemp("fam") / f"{family}.zarr"
            made[family] = actstore.cache(
                out=str(out),
                model=family_model(family),
                dataset=DOCS,
                seq_len=16,
                n_rows=ROWS,
                sites="resid_post:all,z:all,mlp_out:all",
                device="cpu",
                dtype="float32",
                progress=False,
            )
        return made[family]

    return get


def _plain(store: actstore.ActivationStore) -> Any:
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        store.metadata["model"]["name"], dtype=torch.float32
    ).eval()


def _parts(hf: Any) -> dict[str, Any]:
    """The plain model's modules DLA's reference needs, by family layout."""
    norm, unembed = _final(hf)
    if hasattr(hf, "gpt_neox"):
        m = hf.gpt_neox
        return dict(
            layers=[(block.attention.dense, block.mlp) for block in m.layers],
            embed=m.embed_in,
            norm=norm,
            unembed=unembed,
            eps=norm.eps,
            centre=True,
        )
    m = hf.model
    return dict(
        layers=[(block.self_attn.o_proj, block.mlp) for block in m.layers],
        embed=m.embed_tokens,
        norm=norm,
        unembed=unembed,
        eps=norm.variance_epsilon,
        centre=False,
    )


def _final(hf: Any) -> tuple[Any, Any]:
    """The plain model's final norm and unembedding."""
    body = getattr(hf, "gpt_neox", None) or getattr(hf, "transformer", None) or hf.model
    norm = getattr(body, "final_layer_norm", None) or getattr(body, "ln_f", None) or body.norm
    return norm, hf.get_output_embeddings()


def _softcapped(hf: Any, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return logits if not cap else cap * torch.tanh(logits / cap)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logit_lens_decodes_as_the_model_does(family_store, family):
    """Every layer's residual through the plain model's final norm, unembedding and
    soft-cap; the last layer's equal the model's own logits."""
    store = family_store(family)
    hf = _plain(store)
    rows = list(range(ROWS))
    got = logit_lens(store, None, rows, k=5, progress=False)
    tokens = torch.from_numpy(store.tokens()).long()
    with torch.no_grad():
        final = torch.softmax(hf(tokens).logits.double(), -1)  # (row, pos, vocab): the model's own
    norm, unembed = _final(hf)
    for j, hook in enumerate(got.hooks):
        x = torch.from_numpy(store.acts(hook)).float()
        with torch.no_grad():
            # (row, pos, vocab)
            want = torch.softmax(_softcapped(hf, unembed(norm(x))).double(), -1)
        top = want.topk(5, dim=-1).values.log().numpy()  # compared as log-probabilities: nats apart
        spread = np.ptp(top)
        assert spread > 1, spread
        assert np.abs(np.log(got.topk_probs[:, j]) - top).max() <= 1e-4 * spread
        if j == len(got.hooks) - 1:
            assert (want.log() - final.log()).abs().max() <= 1e-4 * spread
    # the cap moves the lens far more than the tolerance
    if getattr(hf.config, "final_logit_softcapping", None):
        x = torch.from_numpy(store.acts(got.hooks[-1])).float()
        with torch.no_grad():
            uncapped = (
                torch.softmax(unembed(norm(x)).double(), -1).topk(5, dim=-1).values.log().numpy()
            )
        assert np.abs(np.log(got.topk_probs[:, -1]) - uncapped).max() > 100 * 1e-4 * np.ptp(
            uncapped
        )


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("gpt2", "gemma2")])
@torch.no_grad()
def test_dla_parts_sum_to_the_models_logit_difference(family_store, family):
    """Each head's share equals its slice of the plain model's output projection through
    the final norm; all the shares, with the embedding's and the biases', sum to the
    logit difference the plain model computes."""
    store = family_store(family)
    hf = _plain(store)
    parts = _parts(hf)
    t, w = 262, 290  # " the", " and"
    got = direct_logit_attribution(store, None, list(range(ROWS)), t, w, progress=False)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        parts["norm"].register_forward_hook(lambda m, a, o: seen.__setitem__("final", a[0])),
        parts["embed"].register_forward_hook(lambda m, a, o: seen.__setitem__("embed", o)),
    ]
    for layer, (o_proj, mlp) in enumerate(parts["layers"]):
        handles.append(
            o_proj.register_forward_hook(
                lambda m, a, o, layer=layer: seen.__setitem__(f"z{layer}", a[0])
            )
        )
        handles.append(
            mlp.register_forward_hook(
                lambda m, a, o, layer=layer: seen.__setitem__(f"mlp{layer}", o)
            )
        )
    tokens = torch.from_numpy(store.tokens()).long()
    with torch.no_grad():
        logits = hf(tokens).logits.double()
    for h in handles:
        h.remove()
    pos = got.positions
    rows = torch.arange(ROWS)
    U = parts["unembed"].weight.double()
    direction = (U[t] - U[w]) * parts["norm"].weight.double()
    x = seen["final"].double()[rows, pos]  # (row, d_model)
    x = x - x.mean(-1, keepdim=True) if parts["centre"] else x
    scale = ((x**2).mean(-1, keepdim=True) + parts["eps"]).sqrt()

    def project(c: torch.Tensor) -> torch.Tensor:  # (row, ..., d_model) -> (row, ...)
        c = c - c.mean(-1, keepdim=True) if parts["centre"] else c
        return (c / scale.view(-1, *[1] * (c.dim() - 2), 1)) @ direction

    n_heads, total = hf.config.num_attention_heads, torch.zeros(ROWS, dtype=torch.float64)
    rest = seen["embed"].double()[rows, pos]
    for layer, (o_proj, _) in enumerate(parts["layers"]):
        z = seen[f"z{layer}"].double()[rows, pos].view(ROWS, n_heads, -1)  # (row, head, d_head)
        W = o_proj.weight.double().view(-1, n_heads, z.shape[-1])  # (d_model, head, d_head)
        heads = project(torch.einsum("rhd,mhd->rhm", z, W))  # (row, head)
        mlp = project(seen[f"mlp{layer}"].double()[rows, pos])
        ref = torch.cat([heads, mlp[:, None]], 1).numpy()
        spread = np.ptp(ref)
        assert spread > 0.1, spread
        assert np.abs(np.c_[got.heads[:, layer], got.mlp[:, layer]] - ref).max() <= 1e-5 * spread
        total += heads.sum(1) + mlp
        if o_proj.bias is not None:
            rest = rest + o_proj.bias.double()
    total += project(rest)
    if getattr(parts["norm"], "bias", None) is not None:
        total += parts["norm"].bias.double() @ (U[t] - U[w])
    want = (logits[rows, pos, t] - logits[rows, pos, w]).numpy()  # the model's own logit difference
    assert np.ptp(want) > 0.1 and np.abs(total.numpy() - want).max() <= 1e-5 * np.ptp(want)
    # the rest matters
    assert np.abs(got.heads.sum((1, 2)) + got.mlp.sum(1) - want).max() > 1e-3 * np.ptp(want)


def test_dla_refuses_gemma2(family_store):
    with pytest.raises(
        ConfigError, match=r"gemma2 models are not such a sum.*refuses rather than approximate"
    ):
        direct_logit_attribution(family_store("gemma2"), None, [0], 262, 290, progress=False)
