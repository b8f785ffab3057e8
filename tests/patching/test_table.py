"""The one sweep table (actstore.patching.table): every sweep of transformer_lens.patching
has a row and a drop-in function; attribution, `actstore patch` and its CLI list exactly
the table's sweeps; rows read real hooks of a model; broken rows are refused."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from transformer_lens import patching as tlp
from transformer_lens.utilities import get_act_name

from actstore import patching as ap
from actstore.errors import ConfigError
from actstore.patching import attribution as at
from actstore.patching import job, table
from actstore.sites import SHORT_SITES, Site, layer_of

from ..conftest import TL4

TL_SWEEPS = sorted(
    n.removeprefix("get_act_patch_")
    for n, f in vars(tlp).items()
    if n.startswith("get_act_patch_") and callable(f)
)
ROWS = {row.name: row for row in table.ROWS}


@pytest.fixture(scope="module")
def demo():
    from actstore.models import load_model

    return load_model("actstore-demo", "float32", "cpu").bridge


def test_every_transformer_lens_sweep_has_a_row_and_a_drop_in_function():
    assert "resid_pre" in TL_SWEEPS and "block_every" in TL_SWEEPS  # the listing works
    if TL4:
        assert sorted(ROWS) == TL_SWEEPS
    else:  # TransformerLens 3.x has no direct path patching; actstore's rows for it stay
        assert sorted(ROWS) == sorted([*TL_SWEEPS, *table.PATH_SWEEPS])
    for name in TL_SWEEPS:
        fn = getattr(ap, f"get_act_patch_{name}")
        assert f"get_act_patch_{name}" in ap.__all__ and fn.__doc__
        params = list(inspect.signature(fn).parameters)
        ref = list(inspect.signature(getattr(tlp, f"get_act_patch_{name}")).parameters)
        assert params[:4] == ref[:4]  # model, corrupted_tokens, clean_cache, metric (as positional)


def test_single_rows_are_the_drop_in_partials_and_match_the_reference_defaults():
    for row in table.SWEEPS.values():
        if row.kind != "single":
            continue
        kw = getattr(ap, row.function).keywords
        assert (kw["activation_name"], kw["patch_setter"], tuple(kw["index_axis_names"])) == (
            row.activation,
            row.setter,
            row.axes,
        )
        ref = inspect.signature(getattr(tlp, row.function)).parameters
        assert ref["activation_name"].default == row.activation
        assert ref["patch_setter"].default is row.setter
        assert tuple(ref["index_axis_names"].default) == row.axes
        assert getattr(at, row.function).keywords["patch_setter"] is row.setter


def test_attribution_job_and_cli_list_exactly_the_tables_sweeps():
    import argparse

    from actstore.cli import patch as cli_patch

    assert set(at.SWEEPS) == set(job.SWEEPS) == set(table.SWEEPS)
    assert set(table.SWEEPS) | set(table.PATH_SWEEPS) == set(ROWS)
    for name in table.SWEEPS:
        assert (
            callable(getattr(at, f"get_act_patch_{name}")) and f"get_act_patch_{name}" in at.__all__
        )
    parser = argparse.ArgumentParser()
    cli_patch.register(parser.add_subparsers())
    sweep = next(
        a
        for a in parser._subparsers._group_actions[0].choices["patch"]._actions
        if a.dest == "sweep"
    )
    assert list(sweep.choices) == list(table.SWEEPS)
    for name, row in table.SWEEPS.items():  # --help lists each with what it patches
        assert f"  {name:<31}{row.what} [{', '.join(row.result_axes)}]" in cli_patch.SWEEP_LINES
    assert table.SWEEPS["block_every"].result_axes == ("patch_type", "layer", "pos")


def test_each_rows_sites_are_hooks_of_the_demo_model(demo):
    n_layers = int(demo.cfg.n_layers)
    hooks = set(demo.hook_dict)
    table.check_model_sites(table.ROWS, hooks, n_layers)
    for row in table.ROWS:
        sites = row.sites(n_layers)
        assert sites and all(s.hook in hooks for s in sites), row.name
        assert {Site.from_hook(s.hook).short for s in sites} == set(row.reads)
        assert sorted({layer_of(s.hook) for s in sites}) == list(range(n_layers))
    assert table.SWEEPS["block_every"].reads == ("resid_pre", "attn_out", "mlp_out")
    assert table.SWEEPS["attn_head_by_pos_every"].site_spec == "z:all,q:all,k:all,v:all,pattern:all"


def test_each_setter_applies_to_its_activation_on_the_demo_model(demo):
    """A row's setter and axes fit the activation it names: patching index 0 of every axis
    writes the clean value there."""
    tokens = torch.tensor([[0, 1, 2, 3, 4]])
    _, cache = demo.run_with_cache(tokens)
    for row in table.SWEEPS.values():
        if row.kind != "single":
            continue
        act = cache[row.hooks(1)[0]]
        clean = act + 1.0
        patched = row.setter(act.clone(), [0] * len(row.axes), clean)
        assert patched.shape == act.shape and (patched != act).any(), row.name


def test_hooks_are_built_by_actstore_sites_and_agree_with_transformer_lens():
    for short in SHORT_SITES:
        assert table.act_hook(short)(3) == get_act_name(short, layer=3)
    # the rest of transformer_lens's vocabulary
    assert table.act_hook("pre")(2) == "blocks.2.mlp.hook_pre"


def test_stacks_list_their_parts_in_the_reference_order():
    every = table.SWEEPS["attn_head_by_pos_every"]
    assert every.kind == "stack" and every.patch_types == ("out", "q", "k", "v", "pattern")
    assert [p.name for p in every.parts] == [
        f"attn_head_{t}_by_pos" for t in ("out", "q", "k", "v", "pattern")
    ]
    assert every.axes == ("layer", "pos", "head")
    assert [p.name for p in table.SWEEPS["block_every"].parts] == [
        "resid_pre",
        "attn_out",
        "mlp_out",
    ]


def _row(**change):
    return dataclasses.replace(table.SWEEPS["resid_pre"], **change)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(activation="resid_pree"), "not a short site name"),
        (dict(activation="embed"), "not a short site name|outside the blocks"),
        (dict(axes=("pos", "layer")), "starting with 'layer'"),
        (dict(axes=("layer", "position")), "are not distinct names"),
        (dict(what=" "), "no description"),
        (dict(name="resid pre"), "not an identifier"),
        (dict(setter=None, activation=None), "no activation"),
    ],
)
def test_a_broken_row_is_refused(change, match):
    with pytest.raises(ConfigError, match=match) as e:
        _row(**change)
    assert "table.py" in str(e.value)


def test_a_broken_stack_or_table_is_refused():
    s = table.SWEEPS
    with pytest.raises(ConfigError, match="not a reordering"):
        dataclasses.replace(
            s["block_every"], parts=(s["resid_pre"], s["attn_head_out_by_pos"], s["mlp_out"])
        )
    with pytest.raises(ConfigError, match="patch_types"):
        dataclasses.replace(s["block_every"], patch_types=("resid_pre", "attn_out"))
    with pytest.raises(ConfigError, match="not a single sweep"):
        dataclasses.replace(
            s["block_every"], parts=(s["resid_pre"], s["block_every"], s["mlp_out"])
        )
    with pytest.raises(ConfigError, match="two rows named 'resid_pre'"):
        table.check_table([*table.ROWS, _row(what="again")])
    with pytest.raises(ConfigError, match="part 'attn_out' is not a row"):
        table.check_table([r for r in table.ROWS if r.name != "attn_out"])
    bad = _row(activation="mlp_post")
    with pytest.raises(ConfigError, match="blocks.0.hook_mlp_out|does not have"):
        table.check_model_sites([bad], ["blocks.0.hook_resid_pre"], 1)


def test_generic_functions_share_one_signature():
    act = inspect.signature(ap.generic_activation_patch).parameters
    attr = inspect.signature(at.generic_attribution_patch).parameters
    common = [n for n in act if n in attr]
    assert common == list(act)[:-1] and "kv_prefix" in act and "as_effect" in attr
    ref = inspect.signature(tlp.generic_activation_patch).parameters
    assert [n for n in ref] == [n for n in act if n in ref]
    with pytest.raises(TypeError, match="generic_attribution_patch.*nonsense"):
        at.generic_attribution_patch(None, None, None, None, None, "resid_pre", nonsense=1)
