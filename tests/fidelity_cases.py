"""The models, prompt pairs and tolerance of the fidelity tests (tests/patching/test_fidelity.py
and the other families' tests): cases where patching moves the metrics a lot, with
prompts that differ late (the engine then reuses the most keys and values) and early.

- ``demo_late``: actstore-demo (the trained model: 4 layers, d_model 128, 4 heads of
  d_head 32), 4 held-out IOI pairs whose corrupted prompt names the indirect object
  where the clean one repeats the subject: they differ at position 10 of 15, and the
  clean logit difference IO - S is about 9.
- ``demo_early``: the same clean prompts, the corrupted ones with another first name at
  position 2.
- ``wide_late``: a random GPT-2 (3 layers, d_model 96, 6 heads: d_head 16 = the prompts'
  16 tokens), weights drawn 5x wider than GPT-2's init (std 0.1), so patches move the
  metrics by O(0.1-1); 3 pairs of random tokens differing from positions 9, 11 and 12.

Tolerance: 1e-4 of the spread (max - min) of the reference's values, or the float32
resolution of the logits the values are computed from (16 ulps of the largest logit)
where that is larger; every comparison asserts the spread is at least ``min_spread`` and
at least 100 tolerances, so a tolerance is never loose against a signal that barely
moves. References run under ``torch.no_grad()`` (see test_fidelity's docstring for why
that matters for resid_mid).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformer_lens import patching as tlp

from actstore import patching as ap

from .conftest import TL4

REL = 1e-4


@dataclass
class Case:
    name: str
    bridge: Any
    clean: torch.Tensor  # (batch, pos)
    corrupted: torch.Tensor
    answer: list[int]
    wrong: list[int]
    min_spread: float  # the smallest spread of reference values a comparison accepts
    first_change: int  # first position at which any pair differs

    def __post_init__(self) -> None:
        with torch.no_grad():
            self.clean_logits, self.cache = self.bridge.run_with_cache(self.clean)
            self.corrupted_logits, self.corrupted_cache = self.bridge.run_with_cache(self.corrupted)
        self.logit_scale = float(self.corrupted_logits.abs().max())
        # batched: the engine computes 2 logits a prompt
        self.ld = ap.LogitDiff(self.answer, self.wrong)
        b = torch.arange(len(self.answer))
        a, w = torch.tensor(self.answer), torch.tensor(self.wrong)

        def every_position(
            logits: torch.Tensor,
        ) -> torch.Tensor:  # a plain metric reading all logits
            return (logits[b, :, a] - logits[b, :, w]).mean()

        self.plain: Callable[[torch.Tensor], torch.Tensor] = every_position


def assert_close_rel(
    got: torch.Tensor, want: torch.Tensor, *, min_spread: float, scale: float = 0.0, what: str = ""
) -> float:
    """|got - want| <= REL x the spread of ``want`` (or 16 float32 ulps of ``scale``, the
    size of the logits both are computed from, where larger); the spread at least
    ``min_spread`` and 100 tolerances. Returns the spread."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    finite = want[torch.isfinite(want)].double()
    spread = float(finite.max() - finite.min())
    tol = max(REL * spread, 16 * torch.finfo(torch.float32).eps * scale)
    assert spread >= min_spread and spread >= 100 * tol, (
        f"{what}: the reference's values span only {spread:.3g} (want >= {min_spread} and >= 100 x tolerance {tol:.2g})"
    )
    assert torch.equal(torch.isfinite(got), torch.isfinite(want)), what
    err = float((got.double() - want.double())[torch.isfinite(want)].abs().max())
    assert err <= tol, (
        f"{what}: max |got - reference| {err:.3g} > tolerance {tol:.2g} (spread {spread:.3g})"
    )
    return spread


def assert_matches(
    got: torch.Tensor,
    want: torch.Tensor,
    case: Case,
    what: str = "",
    min_spread: float | None = None,
) -> float:
    """:func:`assert_close_rel` at the case's logit scale and minimum spread."""
    return assert_close_rel(
        got,
        want,
        min_spread=case.min_spread if min_spread is None else min_spread,
        scale=case.logit_scale,
        what=what,
    )


def boot(folder: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=dtype)
    bridge.eval()
    return bridge


def hooked_transformer(bridge: Any) -> Any:
    """TransformerLens 3.x's HookedTransformer with a GPT-2 bridge's weights, in eval mode."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    hf = bridge.original_model
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_heads=c.n_head,
        d_head=c.n_embd // c.n_head,
        d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        device="cpu",
    )
    ht = HookedTransformer(cfg)
    ht.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    ht.eval()
    return ht


def _ids(tok: Any, text: str) -> list[int]:
    return [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]


def demo_case(kind: str, dtype: torch.dtype = torch.float32) -> Case:
    from actstore.demo import data as demo_data
    from actstore.demo import demo_model_dir, demo_tokenizer

    tok = demo_tokenizer()
    pairs = demo_data.ioi_pairs(4, template=0)
    clean = torch.tensor([_ids(tok, p["clean"]) for p in pairs])
    if kind == "late":
        corrupted = torch.tensor([_ids(tok, p["corrupted"]) for p in pairs])
    else:  # another first name at position 2: everything after it differs too
        others = [n for n in demo_data.NAMES if all(n not in p["clean"] for p in pairs)]
        corrupted = clean.clone()
        corrupted[:, 2] = torch.tensor([_ids(tok, " " + n)[1] for n in others[: len(pairs)]])
    answer = [_ids(tok, p["answer"])[1] for p in pairs]
    wrong = [_ids(tok, p["wrong"])[1] for p in pairs]
    first = int(torch.nonzero((clean != corrupted).any(0))[0, 0])
    assert first == (10 if kind == "late" else 2), first
    return Case(
        f"demo_{kind}",
        boot(demo_model_dir(), dtype),
        clean,
        corrupted,
        answer,
        wrong,
        min_spread=0.02,
        first_change=first,
    )


def wide_model(folder: Path) -> Path:
    from actstore.demo import build_random_gpt2, demo_tokenizer

    if not (folder / "config.json").exists():
        tok = demo_tokenizer()
        build_random_gpt2(
            folder,
            seed=7,
            tokenizer=tok,
            n_layer=3,
            n_embd=96,
            n_head=6,
            n_positions=64,
            vocab_size=len(tok),
            initializer_range=0.1,
        )
    return folder


def wide_case(folder: Path) -> Case:
    from actstore.corpus import ordinary_tokens
    from actstore.demo import demo_tokenizer

    tok = demo_tokenizer()
    rng = random.Random(0)
    pool = [int(t) for t in ordinary_tokens(tok)]
    clean = torch.tensor([[tok.bos_token_id] + rng.sample(pool, 15) for _ in range(3)])
    corrupted = clean.clone()
    for row, first in enumerate((9, 11, 12)):
        corrupted[row, first::2] = torch.tensor(rng.sample(pool, len(range(first, 16, 2))))
    answer, wrong = rng.sample(pool, 3), rng.sample(pool, 3)
    return Case(
        "wide_late",
        boot(wide_model(folder)),
        clean,
        corrupted,
        answer,
        wrong,
        min_spread=0.02,
        first_change=9,
    )


# --- the reference and actstore, side by side -----------------------------------------------


_REFS: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def reference(
    case: Case, sweep: str, index_df: pd.DataFrame | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformer_lens.patching's values for (LogitDiff, plain metric), under no_grad."""
    key = (case.name, sweep)
    if index_df is None and key in _REFS:
        return _REFS[key]
    if index_df is None:
        fn = getattr(tlp, f"get_act_patch_{sweep}")
        args: tuple = (case.bridge, case.corrupted, case.cache)
        kwargs: dict = {}
    else:  # a subset of the cells of a pattern sweep (every cell: one forward each)
        fn = tlp.generic_activation_patch
        args = (case.bridge, case.corrupted, case.cache)
        kwargs = dict(
            patch_setter=tlp.layer_head_dest_src_pos_pattern_patch_setter,
            activation_name="pattern",
            index_df=index_df,
        )
    with torch.no_grad():
        if TL4:
            res = fn(*args, {"ld": case.ld, "plain": case.plain}, **kwargs)
            out = (res.values[0], res.values[1])
        else:
            out = (fn(*args, case.ld, **kwargs), fn(*args, case.plain, **kwargs))
    if index_df is None:
        _REFS[key] = out
    return out


def ours(case: Case, sweep: str, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    fn = getattr(ap, f"get_act_patch_{sweep}")
    return (
        fn(case.bridge, case.corrupted, case.cache, case.ld, progress=False, **kw),
        fn(case.bridge, case.corrupted, case.cache, case.plain, progress=False, **kw),
    )


def dest_src_sample(case: Case, ours_ld: torch.Tensor) -> pd.DataFrame:
    """The reference runs one forward a cell (3600 for the demo), so it gets 180: the 50
    cells our sweep finds the largest effects at (the full spread), a seeded sample of
    100 other cells a patch can change (the key at or before the query, the query at or
    after the first difference) and 30 of the rest."""
    cfg = case.bridge.cfg
    n_pos = case.corrupted.shape[1]
    df = tlp.make_df_from_ranges(
        [cfg.n_layers, cfg.n_heads, n_pos, n_pos], ["layer", "head_index", "dest_pos", "src_pos"]
    )
    effect = (ours_ld - case.ld(case.corrupted_logits)).abs().flatten()
    top = df.iloc[torch.argsort(effect, descending=True)[:50].numpy()]
    rest = df.drop(top.index)
    live = rest[(rest.src_pos <= rest.dest_pos) & (rest.dest_pos >= case.first_change)].sample(
        100, random_state=0
    )
    return pd.concat([top, live, rest.drop(live.index).sample(30, random_state=0)]).sort_index()


def compared(
    case: Case, sweep: str, got_ld: torch.Tensor, got_plain: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ours LogitDiff, ours plain, reference LogitDiff, reference plain) of ``sweep``,
    compared cell for cell: the dest/src pattern sweep on a sample of cells
    (:func:`dest_src_sample`); the stack of by-position sweeps built from the reference's
    five sweeps as its own helper builds it (grouped-query k/v sweeps, with fewer heads,
    padded with zeros)."""
    if sweep == "attn_head_pattern_dest_src_pos":
        df = dest_src_sample(case, got_ld)
        want_ld, want_plain = reference(case, sweep, df)
        cells = tuple(torch.tensor(df[c].to_numpy()) for c in df.columns)
        return got_ld[cells], got_plain[cells], want_ld, want_plain
    if sweep == "attn_head_by_pos_every":
        parts = [
            reference(case, f"attn_head_{k}_by_pos") for k in ("out", "q", "k", "v", "pattern")
        ]
        pad = [
            torch.nn.functional.pad(p[i], (0, parts[0][i].shape[-1] - p[i].shape[-1]))
            for p in parts[:4]
            for i in (0, 1)
        ]
        want_ld, want_plain = (
            torch.stack(pad[i::2] + [parts[4][i].permute(0, 2, 1)]) for i in (0, 1)
        )
        return got_ld, got_plain, want_ld, want_plain
    return (got_ld, got_plain, *reference(case, sweep))
