"""actstore.patching.attribution: the gradient estimate of every patching sweep.

What it is checked against:
- finite differences (float64: the sharp tiny model, and the trained demo model with
  late and early IOI prompts): each cell equals the directional derivative of the
  metric along (patched - corrupted) at the corrupted run, the patch written into the
  hooked tensor as transformer_lens's setters write it (so resid_mid is the residual
  stream), rtol 1e-6, atol 1e-9 (central differences, eps 1e-4: truncation and
  rounding both ~1e-11 here);
- exact patching (actstore.patching, itself equal to transformer_lens.patching) where the
  metric is affine in the patched activation: at the last layer of a model whose final
  LayerNorm scale is frozen to 1 (a permanent hook: the LayerNorm becomes centring, an
  affine map) and whose last MLP reads zeros (its output is then constant), the logit
  difference is affine in that layer's attn_out, z, v and pattern (and, with the MLP
  left alone, in mlp_out): attribution = exact to 1e-4 of the spread (float32), while
  the earlier layers (nonlinear paths) differ by far more;
- TransformerLens 4's own attribution_patch (node scores of head outputs and MLP outputs,
  computed with backward hooks), 1e-4 of the spread.
Plus shapes of every sweep, one forward and one backward for many sweeps, options.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

import actstore
from actstore import patching as ap
from actstore.errors import ConfigError
from actstore.patching import attribution as at
from actstore.selftest_references import (
    directional_derivative,  # the reference: finite differences of the in-place patch
)

from ..conftest import TL4, needs_tl4
from ..fidelity_cases import assert_close_rel, boot, demo_case
from .test_patching import PAIRS, Setup, tokens_of


@pytest.fixture(scope="module")
def s(sharp_model, tokenizer) -> Setup:
    return Setup(boot(sharp_model), tokenizer)


@pytest.fixture(scope="module")
def s64(sharp_model, tokenizer) -> Setup:
    return Setup(boot(sharp_model, torch.float64), tokenizer)


_DEMO64: dict = {}


def _demo64(kind: str):
    if kind not in _DEMO64:
        _DEMO64[kind] = demo_case(kind, torch.float64)
    return _DEMO64[kind]


def sweep_fns(name: str):
    return getattr(ap, f"get_act_patch_{name}"), getattr(at, f"get_act_patch_{name}")


# --- shapes and meaning ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", at.SWEEPS)
def test_every_sweep_has_the_exact_sweeps_shape_and_meaning(s, name):
    exact_fn, attr_fn = sweep_fns(name)
    exact = exact_fn(s.bridge, s.corrupted, s.cache, s.ld, progress=False)
    approx = attr_fn(s.bridge, s.corrupted, s.cache, s.ld, progress=False)
    assert approx.shape == exact.shape and approx.dtype == exact.dtype == torch.float32
    base = s.ld(s.corrupted_logits)
    # a patch that changes nothing has attribution exactly 0: every such cell holds the attribution's
    # own corrupted metric, bit for bit; that metric is the corrupted run's up to float rounding (its
    # forward runs another batch, and some CPU kernels round a row differently by batch: 1.5e-7 seen
    # on AVX-512), and the exact value there is the corrupted metric
    values, counts = approx.unique(return_counts=True)
    own = values[counts.argmax()]
    noop = approx == own
    if "all_pos" not in name:
        assert counts.max() > 1
        torch.testing.assert_close(own, base, atol=1e-6 * s.logit_scale, rtol=0)
    else:
        noop = approx == base
    torch.testing.assert_close(exact[noop], base.expand(int(noop.sum())), atol=1e-6, rtol=0)
    # a first-order estimate of the same numbers (this random model is far from linear: r measured 0.53-0.97)
    r = np.corrcoef(exact.flatten().numpy(), approx.flatten().numpy())[0, 1]
    assert r > 0.4, r
    assert (exact - approx).abs().max() > 1e-2  # not exact: the checks below have teeth


# --- finite differences -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,reduce",
    [
        ("resid_pre", "scalar"),
        ("resid_mid", "scalar"),
        ("mlp_out", "scalar"),
        ("attn_head_out_by_pos", "scalar"),
        ("attn_head_q_all_pos", "scalar"),
        pytest.param("attn_head_k_by_pos", "none", marks=needs_tl4),
        pytest.param("attn_head_v_all_pos", "none", marks=needs_tl4),
        ("attn_head_pattern_dest_src_pos", "scalar"),
        pytest.param("attn_head_pattern_by_pos", "none", marks=needs_tl4),
    ],
)
@pytest.mark.parametrize("model", ["sharp", "demo_late", "demo_early"])
def test_equals_finite_differences_float64(s64, model, name, reduce):
    from transformer_lens.utilities import get_act_name

    if model != "sharp":
        s64 = _demo64(model.removeprefix("demo_"))
    kw = getattr(ap, f"get_act_patch_{name}").keywords
    metric = ap.LogitDiff(s64.answer, s64.wrong, per_example=reduce != "scalar")
    got = getattr(at, f"get_act_patch_{name}")(
        s64.bridge, s64.corrupted, s64.cache, metric, reduce=reduce, as_effect=True, progress=False
    )
    values = got.values if reduce == "none" else got  # (*cells[, batch])
    assert values.dtype == torch.float64
    flat = values.reshape(-1, *values.shape[len(kw["index_axis_names"]) :])
    score = flat.abs().reshape(len(flat), -1).amax(1)
    cells = torch.argsort(score, descending=True)[:3].tolist() + [
        int(torch.nonzero(score > 0)[-1, 0])
    ]
    shape = values.shape[: len(kw["index_axis_names"])]
    for c in cells:
        index = [int(i) for i in np.unravel_index(c, tuple(shape))]
        hook = get_act_name(kw["activation_name"], layer=index[0])
        fd = directional_derivative(
            s64.bridge, s64.corrupted, s64.cache, metric, hook, kw["patch_setter"], index
        )
        torch.testing.assert_close(flat[c], fd, rtol=1e-6, atol=1e-9)
    assert score.max() > 1e-2  # the cells checked carry real gradients


# --- exact where the metric is affine in the patched activation ----------------------------------


@contextmanager
def affine_readout(bridge, zero_last_mlp: bool):
    """ln_final's scale frozen to 1 (LayerNorm -> centring: affine), optionally the last
    MLP fed zeros (its output constant): from the last layer's attention on, the logits are
    an affine function of the activation."""
    last = bridge.cfg.n_layers - 1
    bridge.add_hook("ln_final.hook_scale", lambda x, hook: torch.ones_like(x), is_permanent=True)
    if zero_last_mlp:
        bridge.add_hook(
            f"blocks.{last}.mlp.hook_pre", lambda x, hook: torch.zeros_like(x), is_permanent=True
        )
    try:
        yield
    finally:
        bridge.reset_hooks(including_permanent=True)


@pytest.fixture(scope="module")
def affine_bridge(sharp_model):
    return boot(sharp_model)  # its own: hooks are added and removed per test


@pytest.mark.parametrize(
    "name",
    [
        "attn_out",
        "attn_head_out_by_pos",
        "attn_head_out_all_pos",
        "attn_head_v_by_pos",
        "attn_head_v_all_pos",
        "attn_head_pattern_by_pos",
        "attn_head_pattern_all_pos",
        "attn_head_pattern_dest_src_pos",
        "mlp_out",
    ],
)
def test_equals_exact_patching_where_the_metric_is_affine(affine_bridge, tokenizer, name):
    bridge, last = affine_bridge, affine_bridge.cfg.n_layers - 1
    with affine_readout(bridge, zero_last_mlp=name != "mlp_out"):
        d = Setup(bridge, tokenizer)  # the clean cache and logits under the same hooks
        if name != "mlp_out":
            mlp = d.cache[f"blocks.{last}.hook_mlp_out"]
            assert (
                mlp - mlp[:1, :1]
            ).abs().max() == 0  # constant: the last MLP is out of the picture
        exact_fn, attr_fn = sweep_fns(name)
        base = d.ld(d.corrupted_logits)
        exact = exact_fn(bridge, d.corrupted, d.cache, d.ld, progress=False) - base
        approx = attr_fn(bridge, d.corrupted, d.cache, d.ld, as_effect=True, progress=False)
    # patches there move it...
    assert_close_rel(approx[last], exact[last], min_spread=0.05, scale=d.logit_scale)
    assert (
        approx[:last] - exact[:last]
    ).abs().max() > 1e-2  # ...and upstream (nonlinear paths) it is not exact


# --- against TransformerLens's attribution ----------------------------------------------------------


@needs_tl4
def test_equals_transformer_lens_node_attribution(s):
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    # one answer for every prompt: TL scores prompts one at a time
    ld = ap.LogitDiff(s.answer[0], s.wrong[0])
    ref = attribution_patch(s.bridge, s.clean, s.corrupted, ld).node_scores  # mean over prompts
    heads = at.get_act_patch_attn_head_out_by_pos(
        s.bridge, s.corrupted, s.cache, ld, as_effect=True, progress=False
    )
    mlp = at.get_act_patch_mlp_out(
        s.bridge, s.corrupted, s.cache, ld, as_effect=True, progress=False
    )
    want_heads, want_mlp = torch.zeros_like(heads), torch.zeros_like(mlp)
    for node, score in ref.items():
        if node.kind == "attn_head_out":
            want_heads[node.layer, node.position, node.head] = score
        elif node.kind == "mlp_out":
            want_mlp[node.layer, node.position] = score
    assert_close_rel(heads, want_heads, min_spread=0.05, scale=s.logit_scale)
    assert_close_rel(mlp, want_mlp, min_spread=0.05, scale=s.logit_scale)


# --- one pass, options ------------------------------------------------------------------------------


@needs_tl4  # metric mappings
def test_many_sweeps_from_one_forward_and_one_backward(s, monkeypatch):
    calls = {"forward": 0, "backward": 0}
    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["backward"] += 1
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    handle = s.bridge.blocks[0].register_forward_pre_hook(
        lambda m, a: calls.__setitem__("forward", calls["forward"] + 1)
    )
    names = [
        "resid_pre",
        "attn_head_out_by_pos",
        "block_every",
        "attn_head_by_pos_every",
        "attn_head_pattern_all_pos",
    ]
    try:
        got = at.attribution_patch(
            s.bridge, s.corrupted, s.cache, s.ld, sweeps=names, progress=False
        )
        assert calls == {"forward": 1, "backward": 1}
        two = at.attribution_patch(
            s.bridge,
            s.corrupted,
            s.clean,
            {"ld": s.ld, "plain": s.plain},
            sweeps=["resid_pre", "mlp_out"],
            progress=False,
        )
        # the clean run, then one forward and one backward per metric
        assert calls == {
            "forward": 3,
            "backward": 3,
        }
    finally:
        handle.remove()
    for name in names:
        alone = getattr(at, f"get_act_patch_{name}")(
            s.bridge, s.corrupted, s.cache, s.ld, progress=False
        )
        torch.testing.assert_close(got[name], alone, atol=1e-6, rtol=0)
    assert two["resid_pre"].metric_names == ["ld", "plain"]
    torch.testing.assert_close(two["resid_pre"].values[0], got["resid_pre"], atol=1e-6, rtol=0)


@needs_tl4
def test_reduce_baseline_and_metric_mappings(s):
    ld_pe = ap.LogitDiff(s.answer, s.wrong, per_example=True)
    metric = {"ld": ld_pe, "plain": s.plain_pe}
    exact = ap.get_act_patch_attn_head_out_all_pos(
        s.bridge, s.corrupted, s.cache, metric, reduce="none", baseline=True, progress=False
    )
    got = at.get_act_patch_attn_head_out_all_pos(
        s.bridge, s.corrupted, s.cache, metric, reduce="none", baseline=True, progress=False
    )
    assert type(got) is type(exact) and got.values.shape == exact.values.shape == (2, 3, 4, 3)
    assert (
        got.axis_names == exact.axis_names
        and got.metric_names == exact.metric_names
        and not got.reduced
    )
    torch.testing.assert_close(got.baseline, exact.baseline, atol=1e-5, rtol=0)
    mean = at.get_act_patch_attn_head_out_all_pos(
        s.bridge, s.corrupted, s.cache, ld_pe, reduce="mean", progress=False
    )
    torch.testing.assert_close(mean, got.values[0].mean(-1), atol=1e-6, rtol=0)
    scalar = at.get_act_patch_attn_head_out_all_pos(
        s.bridge, s.corrupted, s.cache, s.ld, progress=False
    )
    # the mean logit difference, either way
    torch.testing.assert_close(scalar, mean, atol=1e-5, rtol=0)


def test_normalised_metric_is_the_attribution_itself(s):
    norm = s.ld.normalised(s.clean_logits, s.corrupted_logits)
    a = at.get_act_patch_resid_pre(s.bridge, s.corrupted, s.cache, norm, progress=False)
    b = at.get_act_patch_resid_pre(
        s.bridge, s.corrupted, s.cache, norm, as_effect=True, progress=False
    )
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # the corrupted run scores 0


def test_custom_setter_and_index_df(s):
    def blend(corrupted, index, clean):
        layer, pos = index
        corrupted[:, pos] = 0.75 * corrupted[:, pos] + 0.25 * clean[:, pos]
        return corrupted

    args = (s.bridge, s.corrupted, s.cache, s.ld)
    copy = at.generic_attribution_patch(
        *args,
        ap.layer_pos_patch_setter,
        "resid_mid",
        ("layer", "pos"),
        as_effect=True,
        progress=False,
    )
    blended = at.generic_attribution_patch(
        *args, blend, "resid_mid", ("layer", "pos"), as_effect=True, progress=False
    )
    torch.testing.assert_close(blended, 0.25 * copy, atol=1e-6, rtol=0)  # linear in the patch
    df = ap.make_df_from_ranges([3, 7, 4], ["layer", "pos", "head"]).sample(20, random_state=1)
    full = at.get_act_patch_attn_head_out_by_pos(*args, progress=False)
    part, part_df = at.generic_attribution_patch(
        *args,
        ap.layer_pos_head_vector_patch_setter,
        "z",
        index_df=df,
        return_index_df=True,
        progress=False,
    )
    want = torch.stack([full[tuple(row)] for row in df.to_numpy()])
    torch.testing.assert_close(part, want, atol=1e-6, rtol=0)
    assert part_df is df


def test_clean_activations_from_a_store(s, sharp_model, tmp_path):
    docs = [PAIRS[2][0], "An unrelated prompt", PAIRS[0][0], PAIRS[1][0]]
    store = actstore.cache(
        out=str(tmp_path / "clean.zarr"),
        model=sharp_model,
        dataset=docs,
        packing="document",
        seq_len=10,
        sites="resid_pre:all,z:all",
        progress=False,
    )
    assert np.array_equal(store.tokens()[[2, 3, 0], :7], s.clean.numpy())
    got = at.attribution_patch(
        s.bridge,
        s.corrupted,
        store,
        s.plain,
        sweeps=["resid_pre", "attn_head_out_by_pos"],
        clean_rows=[2, 3, 0],
        progress=False,
    )
    for name, value in got.items():
        want = getattr(at, f"get_act_patch_{name}")(
            s.bridge, s.corrupted, s.cache, s.plain, progress=False
        )
        torch.testing.assert_close(value, want, atol=1e-5, rtol=0)


def test_bad_input_is_a_clear_error(s, tokenizer):
    def not_differentiable(logits):
        return torch.tensor(logits[0, -1, 0].item())

    with pytest.raises(ConfigError, match="not differentiable"):
        at.get_act_patch_resid_pre(
            s.bridge, s.corrupted, s.cache, not_differentiable, progress=False
        )
    with pytest.raises(ConfigError, match="Unknown sweep 'resid_post'"):
        at.attribution_patch(s.bridge, s.corrupted, s.cache, s.ld, sweeps=["resid_post"])
    with pytest.raises(
        ConfigError, match=r"must return a \[batch\] tensor" if TL4 else "needs transformer_lens>=4"
    ):
        at.get_act_patch_resid_pre(
            s.bridge, s.corrupted, s.cache, s.ld, reduce="none", progress=False
        )
    with pytest.raises(ConfigError, match="cover 7 positions but the corrupted prompts have 6"):
        at.get_act_patch_resid_pre(s.bridge, s.corrupted[:, :6], s.cache, s.ld, progress=False)
    one = tokens_of(tokenizer, [PAIRS[0][1]])
    with pytest.raises(ConfigError, match="evaluation mode"):
        s.bridge.train()
        try:
            at.get_act_patch_resid_pre(s.bridge, one, s.cache, s.ld, progress=False)
        finally:
            s.bridge.eval()


def test_compare_and_plot(tmp_path):
    x = torch.arange(12.0).reshape(3, 4)
    c = at.compare(x, 2 * x + 1, changed=x > 3)
    assert c["pearson"] == pytest.approx(1.0) and c["n_cells"] == 12 and c["n_changed"] == 8
    assert at.compare(x, -x)["pearson"] == pytest.approx(-1.0)
    assert at.compare(x, torch.ones_like(x))["pearson"] is None  # undefined, not NaN
    with pytest.raises(ConfigError, match="differ in shape"):
        at.compare(x, x.T)
    path = at.plot_comparison(x, x, str(tmp_path / "s.png"), title="t")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
