"""Activation patching on every family, against transformer_lens.patching on the same
bridge: every sweep of the table and direct path patching, within 1e-4 of the
reference's spread (tests/fidelity_cases.py), on random models of each family (weights
at std 0.2, so patches move the metrics a lot, which each comparison asserts). Prompts
are 16 tokens, twice the sliding window of Gemma 2's and Mistral's random models, and
differ late (from position 11) or early (position 2). What a family does not define
is refused up front, with the reason."""

from __future__ import annotations

import random

import pytest
import torch
from transformer_lens import patching as tlp

from actstore import patching as ap
from actstore.errors import ConfigError
from actstore.patching import engine as _engine
from actstore.patching.table import SWEEPS
from actstore.random_models import FAMILIES

from ..conftest import needs_tl4
from ..fidelity_cases import Case, assert_matches, boot, compared, ours, reference

OTHERS = [f for f in FAMILIES if f != "gpt2"]  # (GPT-2: tests/patching/test_fidelity.py)
SINGLE = [name for name, row in SWEEPS.items() if row.kind == "single"]
EVERY = [name for name, row in SWEEPS.items() if row.kind == "stack"]
EARLY = ["resid_pre", "attn_head_k_by_pos"]
# the costliest sweeps (a forward per cell in the reference) on two families: grouped-query
# Llama and parallel GPT-NeoX; every family runs them through the same whole-forward engine
COSTLY = ["attn_head_pattern_dest_src_pos", "attn_head_by_pos_every"]
CASES = [
    (f, s) for s in SINGLE + EVERY for f in OTHERS if s not in COSTLY or f in ("llama", "gpt_neox")
]


def family_case(family: str, folder: str, kind: str) -> Case:
    from actstore.corpus import ordinary_tokens
    from actstore.resources import gpt2_tokenizer

    tok = gpt2_tokenizer()
    rng = random.Random(family)
    pool = [int(t) for t in ordinary_tokens(tok)]
    clean = torch.tensor([[tok.bos_token_id] + rng.sample(pool, 15) for _ in range(3)])
    corrupted = clean.clone()
    first = 11 if kind == "late" else 2
    for row in range(3):
        corrupted[row, first + row :: 2] = torch.tensor(
            rng.sample(pool, len(range(first + row, 16, 2)))
        )
    answer, wrong = rng.sample(pool, 3), rng.sample(pool, 3)
    return Case(
        f"{family}_{kind}",
        boot(folder),
        clean,
        corrupted,
        answer,
        wrong,
        min_spread=0.02,
        first_change=first,
    )


@pytest.fixture(scope="module")
def family_case_of(family_model):
    made: dict[tuple[str, str], Case] = {}

    def get(family: str, kind: str = "late") -> Case:
        if (family, kind) not in made:
            made[family, kind] = family_case(family, family_model(family), kind)
        return made[family, kind]

    return get


def _runnable(family: str, sweep: str) -> bool:
    return not (family == "gpt_neox" and "resid_mid" in SWEEPS[sweep].hooks(1)[0])


@pytest.mark.parametrize("family,sweep", CASES)
def test_every_sweep_equals_transformer_lens(family_case_of, family, sweep):
    if not _runnable(family, sweep):
        pytest.skip("GPT-NeoX has no resid_mid (test_a_parallel_block_has_no_resid_mid)")
    case = family_case_of(family)
    got_ld, got_plain, want_ld, want_plain = compared(case, sweep, *ours(case, sweep))
    assert_matches(got_ld, want_ld, case, f"{family} {sweep} LogitDiff")
    assert_matches(
        got_plain, want_plain, case, min_spread=case.min_spread / 4, what=f"{family} {sweep} plain"
    )


@pytest.mark.parametrize("sweep", EARLY)
@pytest.mark.parametrize("family", OTHERS)
def test_prompts_that_differ_early(family_case_of, family, sweep):
    case = family_case_of(family, "early")
    got_ld, got_plain = ours(case, sweep)
    want_ld, want_plain = reference(case, sweep)
    assert_matches(got_ld, want_ld, case, f"{family} {sweep} LogitDiff")
    assert_matches(
        got_plain, want_plain, case, min_spread=case.min_spread / 4, what=f"{family} {sweep} plain"
    )


def test_the_whole_forward_engine_is_the_one_that_ran(family_case_of, monkeypatch):
    """These families run as whole plain forwards: the block runner is never called, and
    a setter that loses its patch there changes the result (the comparison can fail)."""
    case = family_case_of("llama")
    monkeypatch.setattr(
        _engine, "_run_chunk", lambda *a, **k: pytest.fail("the block runner ran on llama")
    )
    got = ap.get_act_patch_resid_pre(
        case.bridge, case.corrupted, case.cache, case.ld, progress=False
    )
    assert_matches(got, reference(case, "resid_pre")[0], case, "llama resid_pre")

    def lost(act, index, clean):  # patches the wrong position: a bug the fidelity test must catch
        act[:, index[1] - 1 if index[1] else 0] = clean[:, index[1]]
        return act

    wrong = ap.generic_activation_patch(
        case.bridge,
        case.corrupted,
        case.cache,
        case.ld,
        lost,
        "resid_pre",
        ("layer", "pos"),
        progress=False,
    )
    with pytest.raises(AssertionError, match="max |got - reference|"):
        assert_matches(wrong, reference(case, "resid_pre")[0], case, "a wrong setter")


def test_a_parallel_block_has_no_resid_mid(family_case_of):
    case = family_case_of("gpt_neox")
    with pytest.raises(
        ConfigError,
        match=r"reads blocks.0.hook_resid_mid, and this gpt_neox model has no such hook: "
        r"its blocks run attention and the MLP in parallel",
    ):
        ap.get_act_patch_resid_mid(case.bridge, case.corrupted, case.cache, case.ld, progress=False)


# --- direct path patching -------------------------------------------------------------------------


@needs_tl4
@pytest.mark.parametrize(
    "family,component",
    [
        ("llama", "q"),
        ("qwen2", "q"),
        ("mistral", "q"),
        ("gpt_neox", "q"),
        ("gpt_neox", "k"),
        ("gpt_neox", "v"),
    ],
)
def test_direct_path_equals_transformer_lens(family_case_of, family, component):
    case = family_case_of(family)
    n_heads = int(case.bridge.cfg.n_heads)
    got = ap.get_act_patch_direct_path_all_sources(
        case.bridge,
        case.corrupted,
        case.cache,
        case.corrupted_cache,
        case.ld,
        component,
        verbose=False,
    )[0]  # sources in layer 0
    with torch.no_grad():
        want = torch.stack(
            [
                tlp.get_act_patch_direct_path(
                    case.bridge,
                    case.corrupted,
                    case.cache,
                    case.corrupted_cache,
                    case.ld,
                    0,
                    h,
                    component,
                    verbose=False,
                )
                for h in range(n_heads)
            ]
        )
    assert_matches(
        got[:, 1:], want[:, 1:], case, f"{family} direct path into {component}", min_spread=0.005
    )
    # no edge into the source's own layer (placeholders, as the reference)
    assert bool((got[:, 0] == 0).all())


@pytest.mark.parametrize(
    "family,component,why",
    [
        ("llama", "k", r"shares each key/value head among 2 query heads .* component='q' works"),
        ("mistral", "v", r"shares each key/value head among 2 query heads"),
        (
            "gemma2",
            "q",
            r"normalises each attention output before it joins the residual, so a head's write is not "
            r"z @ W_O",
        ),
    ],
)
def test_direct_path_refuses_what_a_family_does_not_define(family_case_of, family, component, why):
    case = family_case_of(family)
    with pytest.raises(ConfigError, match=why):
        ap.get_act_patch_direct_path(
            case.bridge, case.corrupted, case.cache, None, case.ld, 0, 1, component, verbose=False
        )
    assert not case.bridge.cfg.use_split_qkv_input  # nothing left switched on
