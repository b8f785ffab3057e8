"""actstore.patching's options and engine against transformer_lens.patching on the
same bridge, tokens and metric: every option (reduce, baseline, metric mappings,
index_df, custom setters and batched metrics), clean activations from an
ActivationCache or from a store, what the engine skips, and its errors. Every sweep on
the trained demo model and a wide model, late and early prompts: tests/patching/test_fidelity.py.

The model: the tiny shape (3 layers, d_model 64, 4 heads) with weights drawn 10x wider
than GPT-2's init (std 0.2), so that patches move the metrics by O(0.1-1); a few
sweeps also run on the conftest's default-init tiny model, whose values barely move.

Tolerance: 1e-4 of the spread of the reference's values (tests/fidelity_cases.py),
which each comparison asserts is large; references run under torch.no_grad() (see
test_fidelity for why). Baselines (the unpatched run, one value) to 1e-6 relative."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

import actstore
from actstore import patching as ap
from actstore.errors import ConfigError, StoreMismatchError
from actstore.patching import engine as _patch_engine

from ..conftest import TL4, needs_tl4
from ..fidelity_cases import assert_close_rel, boot

PAIRS = [  # (clean, corrupted, answer, wrong): 6 tokens each, + BOS; they differ at positions 2, 5 and 4
    ("The cat sat on the warm", "The dog sat on the warm", " mat", " rug"),
    ("Alice gave Bob a red ball", "Alice gave Bob a blue ball", " to", " and"),
    ("When Mary and John left,", "When Mary and Tom left,", " Mary", " John"),
]


def tokens_of(tokenizer, texts):
    ids = [
        [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in texts
    ]
    assert len({len(i) for i in ids}) == 1
    return torch.tensor(ids)


class Setup:
    def __init__(self, bridge, tokenizer):
        self.bridge = bridge
        self.clean = tokens_of(tokenizer, [p[0] for p in PAIRS])
        self.corrupted = tokens_of(tokenizer, [p[1] for p in PAIRS])
        self.answer = [tokenizer(p[2])["input_ids"][0] for p in PAIRS]
        self.wrong = [tokenizer(p[3])["input_ids"][0] for p in PAIRS]
        with torch.no_grad():
            self.clean_logits, self.cache = bridge.run_with_cache(self.clean)
            self.corrupted_logits = bridge(self.corrupted)
        self.logit_scale = float(self.corrupted_logits.abs().max())
        # batched, last position only: the engine computes two logits per prompt
        self.ld = ap.LogitDiff(self.answer, self.wrong)
        b = torch.arange(len(PAIRS))
        a, w = torch.tensor(self.answer), torch.tensor(self.wrong)

        def every_position(logits):  # a plain TransformerLens metric reading all logits
            return (logits[b, :, a] - logits[b, :, w]).sum(-1).mean()

        def every_position_per_prompt(logits):
            return (logits[b, :, a] - logits[b, :, w]).sum(-1)

        self.plain = every_position
        self.plain_pe = every_position_per_prompt


@pytest.fixture(scope="module")
def s(sharp_model, tokenizer) -> Setup:
    bridge = boot(sharp_model)
    return Setup(bridge, tokenizer)


def close(got: torch.Tensor, want: torch.Tensor, s: Setup, min_spread: float = 0.05) -> None:
    assert got.dtype == want.dtype
    assert_close_rel(got, want, min_spread=min_spread, scale=s.logit_scale)


def close_baseline(got: torch.Tensor, want: torch.Tensor) -> None:
    """The unpatched run: one plain forward on both sides."""
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def ref(fn, *args, **kwargs):
    # transformer_lens writes its patch into the hooked tensor (see test_fidelity)
    with torch.no_grad():
        return fn(*args, **kwargs)


@pytest.mark.parametrize(
    "name",
    [
        "get_act_patch_resid_pre",
        "get_act_patch_attn_head_out_by_pos",
        "get_act_patch_attn_head_pattern_all_pos",
    ],
)
def test_default_init_model(bridge, tokenizer, name):
    """GPT-2's init: the values barely move (spreads of 4e-4 to 1e-2), and still agree to
    1e-4 of that spread."""
    d = Setup(bridge, tokenizer)
    for metric in (d.ld, d.plain):
        want = ref(getattr(tlp, name), d.bridge, d.corrupted, d.cache, metric)
        close(
            getattr(ap, name)(d.bridge, d.corrupted, d.cache, metric, progress=False),
            want,
            d,
            min_spread=1e-4,
        )


def result_close(got, want, s) -> None:
    assert type(got) is type(want)
    close(got.values, want.values, s)
    assert got.axis_names == want.axis_names and got.metric_names == want.metric_names
    assert got.reduced == want.reduced and got.has_metric_axis == want.has_metric_axis
    assert got.patch_type_names == want.patch_type_names
    pd.testing.assert_frame_equal(got.index_df, want.index_df)
    if want.baseline is None:
        assert got.baseline is None
    else:
        close_baseline(got.baseline, want.baseline)


@needs_tl4
@pytest.mark.parametrize("name", ["get_act_patch_resid_pre", "get_act_patch_attn_head_out_all_pos"])
@pytest.mark.parametrize(
    "reduce,baseline,mapping",
    [("none", False, False), ("mean", True, False), ("none", True, True), ("scalar", True, True)],
)
def test_reduce_baseline_and_metric_mappings(s, name, reduce, baseline, mapping):
    per_example = reduce != "scalar"
    ld = ap.LogitDiff(s.answer, s.wrong, per_example=per_example)
    plain = s.plain_pe if per_example else s.plain
    metric = {"ld": ld, "plain": plain} if mapping else ld
    want = ref(
        getattr(tlp, name), s.bridge, s.corrupted, s.cache, metric, reduce=reduce, baseline=baseline
    )
    got = getattr(ap, name)(
        s.bridge, s.corrupted, s.cache, metric, reduce=reduce, baseline=baseline, progress=False
    )
    if reduce == "mean" and not baseline:
        close(got, want, s)
    else:
        result_close(got, want, s)


@needs_tl4
def test_every_helper_with_per_example_results(s):
    ld = ap.LogitDiff(s.answer, s.wrong, per_example=True)
    want = ref(
        tlp.get_act_patch_block_every,
        s.bridge,
        s.corrupted,
        s.cache,
        ld,
        reduce="none",
        baseline=True,
    )
    got = ap.get_act_patch_block_every(
        s.bridge, s.corrupted, s.cache, ld, reduce="none", baseline=True, progress=False
    )
    result_close(got, want, s)
    assert got.patch_type_names == ["resid_pre", "attn_out", "mlp_out"]


def test_index_df_and_return_index_df(s):
    df = tlp.make_df_from_ranges([3, 7, 4], ["layer", "pos", "head"]).sample(25, random_state=0)
    args = (s.bridge, s.corrupted, s.cache, s.plain, ap.layer_pos_head_vector_patch_setter, "z")
    want, want_df = ref(tlp.generic_activation_patch, *args, index_df=df, return_index_df=True)
    got, got_df = ap.generic_activation_patch(
        *args, index_df=df, return_index_df=True, progress=False
    )
    close(got, want, s)
    assert got.shape == (25,)
    pd.testing.assert_frame_equal(got_df, want_df)


def test_custom_patch_setter_and_batched_metric(s):
    """A user's setter (here: a mean ablation-like blend, not a copy) and a metric
    wrapped with batched_metric, reading only the last two positions; on resid_mid,
    where writing into the hooked tensor also changes the block's residual."""

    def blend(corrupted, index, clean):
        layer, pos = index
        corrupted[:, pos] = 0.5 * corrupted[:, pos] + 0.5 * clean[:, pos]
        return corrupted

    a, w = s.answer, s.wrong
    cols = sorted(set(a) | set(w))
    ai, wi = [cols.index(t) for t in a], [cols.index(t) for t in w]

    def two_last(lg):  # (variant, batch, 2 positions, len(cols)) -> (variant,)
        return torch.stack(
            [lg[:, i, :, ai[i]] - lg[:, i, :, wi[i]] for i in range(len(a))], 1
        ).mean((-1, -2))

    metric = ap.batched_metric(two_last, positions=[-2, -1], token_ids=cols)
    args = (s.bridge, s.corrupted, s.cache, metric, blend, "resid_mid", ("layer", "pos"))
    want = ref(tlp.generic_activation_patch, *args)
    got = ap.generic_activation_patch(*args, progress=False)
    close(got, want, s)

    # returns a new tensor: only ln2 (the MLP's input) sees it
    def blend_copy(corrupted, index, clean):
        return blend(corrupted.clone(), index, clean)

    args = (s.bridge, s.corrupted, s.cache, metric, blend_copy, "resid_mid", ("layer", "pos"))
    copy = ap.generic_activation_patch(*args, progress=False)
    close(copy, ref(tlp.generic_activation_patch, *args), s)
    assert (copy - got).abs().max() > 0.05  # the two setters mean different patches there


def test_logit_diff_normalised(s):
    norm = s.ld.normalised(s.clean_logits, s.corrupted_logits)
    torch.testing.assert_close(norm(s.corrupted_logits), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(norm(s.clean_logits), torch.tensor(1.0), atol=1e-6, rtol=0)
    b = torch.arange(3)
    raw = s.clean_logits[b, -1, s.answer] - s.clean_logits[b, -1, s.wrong]
    torch.testing.assert_close(s.ld(s.clean_logits), raw.mean(), atol=1e-6, rtol=0)
    want = ref(tlp.get_act_patch_attn_out, s.bridge, s.corrupted, s.cache, norm)
    close(ap.get_act_patch_attn_out(s.bridge, s.corrupted, s.cache, norm, progress=False), want, s)


def test_noop_variants_and_early_positions_are_not_run(s, tokenizer):
    """One pair differing at one position p: of the 7 resid_pre patches of layer 0,
    only position p's changes anything, and it runs over positions p.. only (then the
    self-check runs that variant once more, in full, with a plain run_with_hooks)."""
    clean, corrupted = tokens_of(tokenizer, [PAIRS[1][0]]), tokens_of(tokenizer, [PAIRS[1][1]])
    p = int(torch.nonzero(clean[0] != corrupted[0])[0, 0])
    _, cache = s.bridge.run_with_cache(clean)
    ld = ap.LogitDiff(s.answer[1], s.wrong[1])
    seen = []
    handle = s.bridge.blocks[0].register_forward_pre_hook(
        lambda m, args: seen.append(tuple(args[0].shape[:2]))
    )
    try:
        got = ap.get_act_patch_resid_pre(s.bridge, corrupted, cache, ld, progress=False)
    finally:
        handle.remove()
    # the corrupted run, one variant over positions p..6, then the self-check's plain forward of one variant
    assert seen == [(1, 7), (1, 7 - p), (1, 7)]
    close(got, ref(tlp.get_act_patch_resid_pre, s.bridge, corrupted, cache, ld), s)


def test_plan_chunks_cover_every_variant_once():
    starts = [0, 0, 1, 3, 3, 3, 5, 6]
    for max_var, cost in [(2, 0), (100, 0), (100, 10**6), (3, 50)]:
        chunks = _patch_engine._plan_chunks(starts, 2, max_var, 8, cost)
        covered = [i for a, b in chunks for i in range(a, b)]
        assert covered == list(range(len(starts)))
        assert all(b - a <= max_var for a, b in chunks)
    # calls dear: one forward
    assert _patch_engine._plan_chunks(starts, 2, 100, 8, 10**6) == [(0, 8)]
    assert len(_patch_engine._plan_chunks(starts, 2, 100, 8, 0)) == 5  # calls free: one per start


# --- clean activations from a store ----------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory, sharp_model):
    # rows in another order than the pairs, padded to 10 tokens: clean_rows and trimming are exercised
    docs = [PAIRS[2][0], "An unrelated prompt", PAIRS[0][0], PAIRS[1][0]]
    return actstore.cache(
        out=str(tmp_path_factory.mktemp("p") / "clean.zarr"),
        model=sharp_model,
        dataset=docs,
        packing="document",
        seq_len=10,
        sites="resid_pre:all,z:all,pattern:all",
        progress=False,
    )


@pytest.mark.parametrize(
    "name",
    [
        "get_act_patch_resid_pre",
        "get_act_patch_attn_head_out_by_pos",
        "get_act_patch_attn_head_pattern_by_pos",
    ],
)
def test_clean_activations_from_a_store(s, clean_store, name):
    rows = [2, 3, 0]
    assert np.array_equal(clean_store.tokens()[rows, :7], s.clean.numpy())
    want = ref(getattr(tlp, name), s.bridge, s.corrupted, s.cache, s.plain)
    got = getattr(ap, name)(
        s.bridge, s.corrupted, clean_store, s.plain, clean_rows=rows, progress=False
    )
    close(got, want, s)


# tiny_model: same shape, other weights
def test_store_errors(s, clean_store, tmp_path, tiny_model):
    with pytest.raises(
        StoreMismatchError, match=r"no activations for blocks\.0\.hook_mlp_out.*--sites mlp_out:all"
    ):
        ap.get_act_patch_mlp_out(
            s.bridge, s.corrupted, clean_store, s.ld, clean_rows=[2, 3, 0], progress=False
        )
    with pytest.raises(ConfigError, match="clean_rows names 2 rows but the corrupted batch has 3"):
        ap.get_act_patch_resid_pre(
            s.bridge, s.corrupted, clean_store, s.ld, clean_rows=[2, 3], progress=False
        )
    with pytest.raises(ConfigError, match="pass clean_rows"):
        ap.get_act_patch_resid_pre(s.bridge, s.corrupted, clean_store, s.ld, progress=False)
    foreign = actstore.cache(
        out=str(tmp_path / "foreign.zarr"),
        model=tiny_model,
        dataset=[p[0] for p in PAIRS],
        packing="document",
        seq_len=7,
        sites="resid_pre:all",
        progress=False,
    )
    with pytest.raises(StoreMismatchError, match="cached with another model.*fingerprint"):
        ap.get_act_patch_resid_pre(
            s.bridge, s.corrupted, foreign, s.ld, clean_rows=[0, 1, 2], progress=False
        )


def test_bad_options_are_clear_errors(s):
    with pytest.raises(ConfigError, match="reduce must be one of"):
        ap.get_act_patch_resid_pre(s.bridge, s.corrupted, s.cache, s.ld, reduce="median")
    with pytest.raises(ConfigError, match="must return a scalar under reduce='scalar'"):
        ap.get_act_patch_resid_pre(s.bridge, s.corrupted, s.cache, s.plain_pe, progress=False)
    with pytest.raises(
        ConfigError, match=r"must return a \[batch\] tensor" if TL4 else "needs transformer_lens>=4"
    ):
        ap.get_act_patch_resid_pre(
            s.bridge, s.corrupted, s.cache, s.ld, reduce="none", progress=False
        )
    with pytest.raises(
        ConfigError, match="cover 7 positions but the corrupted prompts have 6 tokens"
    ):
        ap.get_act_patch_resid_pre(s.bridge, s.corrupted[:, :6], s.cache, s.plain, progress=False)
    with pytest.raises(ConfigError, match="return_index_df only applies"):
        ap.get_act_patch_resid_pre(
            s.bridge, s.corrupted, s.cache, s.ld, baseline=True, return_index_df=True
        )
    s.bridge.train()
    try:
        with pytest.raises(ConfigError, match="evaluation mode"):
            ap.get_act_patch_resid_pre(s.bridge, s.corrupted, s.cache, s.ld, progress=False)
    finally:
        s.bridge.eval()
