"""The public API after `import actstore`: the entry points and the jobs over a store, and
the names that moved, each a deprecated alias of its new home (docs/changelog.md)."""

from __future__ import annotations

import importlib
import warnings

import pytest

import actstore
from actstore import errors

TOP = {
    "cache",
    "CacheConfig",
    "open",
    "ActivationStore",
    "load_model",
    "save_model",
    "patch_pairs",
    "PatchJobConfig",
    "PatchJobResult",
    "find_circuit",
    "CircuitJobConfig",
    "CircuitJobResult",
    "fit_probes",
    "ProbeConfig",
    "ProbeReport",
    "Probe",
    "patching",
    "circuits",
    "probes",
    "analysis",
    "errors",
    "ActStoreError",
    "__version__",
}
STORE = {
    "ActivationStore",
    "open_store",
    "is_store",
    "StoreMeta",
    "CorpusMeta",
    "SiteMeta",
    "Layout",
    "ResultWriter",
    "write_result",
    "ActivationLoader",
    "ActivationDataLoader",
    "make_dataloader",
    "verify_store",
    "Damage",
}
# (package, old name, new home): every name that left a package's top
MOVED = [
    ("actstore", "attribution", "actstore.patching.attribution"),
    ("actstore", "tasks", "actstore.patching.tasks"),
    ("actstore", "make_pairs", "actstore.patching.tasks.make_pairs"),
    ("actstore", "PromptPair", "actstore.patching.tasks.PromptPair"),
    ("actstore", "CorpusSpec", "actstore.corpus.CorpusSpec"),
    ("actstore", "Site", "actstore.sites.Site"),
    ("actstore", "parse_sites", "actstore.sites.parse_sites"),
    ("actstore", "ModelInfo", "actstore.models.ModelInfo"),
    ("actstore", "StoreMeta", "actstore.store.StoreMeta"),
    ("actstore", "Moments", "actstore.stats.Moments"),
    *[
        ("actstore", name, f"actstore.errors.{name}")
        for name in errors.__all__
        if name != "ActStoreError"
    ],
    ("actstore.integrations", "MissingDependencyError", "actstore.errors.MissingDependencyError"),
    *[
        ("actstore.store", name, f"actstore.store.format.{name}")
        for name in (
            "FORMAT_VERSION",
            "INDEX_ARRAYS",
            "create_store",
            "estimate_bytes",
            "finalize_stats",
            "parse_codec",
            "plan_layout",
            "read_checked",
        )
    ],
]


def home(path: str) -> object:
    """The object at a dotted path, looked up directly (not through the alias)."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module, _, name = path.rpartition(".")
        return vars(importlib.import_module(module))[name]


def test_open_and_the_jobs_are_there_after_import(tmp_path, tiny_model):
    made = actstore.cache(
        out=str(tmp_path / "s.zarr"),
        model=tiny_model,
        dataset=["a b c d e f"],
        seq_len=4,
        n_rows=1,
        sites="resid_post:0",
        progress=False,
    )
    store = actstore.open(tmp_path / "s.zarr")
    assert isinstance(store, actstore.ActivationStore) and store.sites == made.sites
    assert (store.tokens() == made.tokens()).all()
    for name, fn in [
        ("patching", "get_act_patch_resid_pre"),
        ("patching.attribution", "attribution_patch"),
        ("patching.tasks", "make_pairs"),
        ("circuits", "edge_attribution"),
        ("probes", "fit_probes"),
        ("analysis", "induction_scores"),
    ]:
        module = actstore
        for part in name.split("."):
            module = getattr(module, part)
        assert callable(getattr(module, fn)), name
    assert actstore.probes.Probe.load.__qualname__ == "Probe.load"


def test_the_entry_points_their_configs_and_results_are_at_the_top():
    from actstore.circuits import CircuitJobConfig, CircuitJobResult, find_circuit
    from actstore.models import save_model
    from actstore.patching.job import PatchJobConfig, PatchJobResult, patch_pairs
    from actstore.probes import Probe, ProbeConfig, ProbeReport, fit_probes

    for name, obj in [
        ("patch_pairs", patch_pairs),
        ("PatchJobConfig", PatchJobConfig),
        ("PatchJobResult", PatchJobResult),
        ("fit_probes", fit_probes),
        ("ProbeConfig", ProbeConfig),
        ("ProbeReport", ProbeReport),
        ("Probe", Probe),
        ("save_model", save_model),
        ("find_circuit", find_circuit),
        ("CircuitJobConfig", CircuitJobConfig),
        ("CircuitJobResult", CircuitJobResult),
        ("ActStoreError", errors.ActStoreError),
    ]:
        assert getattr(actstore, name) is obj and name in actstore.__all__, name
    assert all(hasattr(actstore, name) for name in actstore.__all__)


def test_the_public_surface_is_what_users_call():
    assert set(actstore.__all__) == TOP and len(actstore.__all__) == len(TOP)
    assert set(actstore.store.__all__) == STORE
    assert all(hasattr(actstore.store, name) for name in STORE)
    assert "MissingDependencyError" in errors.__all__ and issubclass(
        errors.MissingDependencyError, ImportError
    )


@pytest.mark.parametrize("package,old,new", MOVED, ids=[f"{p}.{o}" for p, o, _ in MOVED])
def test_a_moved_name_warns_and_is_the_same_object(package, old, new):
    module = importlib.import_module(package)
    assert old not in getattr(module, "__all__", ())
    with pytest.warns(
        DeprecationWarning, match=rf"{package}\.{old} is deprecated .* use {new} instead"
    ):
        got = getattr(module, old)
    assert got is home(new)
    with warnings.catch_warnings(record=True) as seen:  # the from-import warns once, at this line
        warnings.simplefilter("always")
        got = module.__getattr__(old)
        exec(f"from {package} import {old} as again", namespace := {})
    assert namespace["again"] is got
    assert [(w.category, w.filename) for w in seen] == [
        (DeprecationWarning, __file__),
        (DeprecationWarning, "<string>"),
    ]


def test_an_unknown_name_is_still_an_attribute_error():
    for package in (actstore, actstore.store, importlib.import_module("actstore.integrations")):
        with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
            package.no_such_name  # noqa: B018
    # a submodule is found past the module __getattr__
    from actstore.integrations import saelens

    assert callable(saelens.sae_trainer)
