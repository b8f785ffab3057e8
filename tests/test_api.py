"""The public API after `import actstore`: the entry points and the jobs over a store."""

from __future__ import annotations

import actstore


def test_open_and_the_jobs_are_there_after_import(tmp_path, tiny_model):
    made = actstore.cache(out=str(tmp_path / "s.zarr"), model=tiny_model, dataset=["a b c d e f"], seq_len=4,
                          n_rows=1, sites="resid_post:0", progress=False)
    store = actstore.open(tmp_path / "s.zarr")
    assert isinstance(store, actstore.ActivationStore) and store.sites == made.sites
    assert (store.tokens() == made.tokens()).all()
    for name, fn in [("patching", "get_act_patch_resid_pre"), ("attribution", "attribution_patch"),
                     ("tasks", "make_pairs"), ("probes", "fit_probes"), ("analysis", "induction_scores")]:
        assert callable(getattr(getattr(actstore, name), fn)), name
    assert actstore.probes.Probe.load.__qualname__ == "Probe.load"


def test_the_entry_points_their_configs_and_results_are_at_the_top():
    from actstore.models import save_model
    from actstore.patching.job import PatchJobConfig, PatchJobResult, patch_pairs
    from actstore.probes import Probe, ProbeConfig, ProbeReport, fit_probes

    for name, obj in [("patch_pairs", patch_pairs), ("PatchJobConfig", PatchJobConfig),
                      ("PatchJobResult", PatchJobResult), ("fit_probes", fit_probes), ("ProbeConfig", ProbeConfig),
                      ("ProbeReport", ProbeReport), ("Probe", Probe), ("save_model", save_model)]:
        assert getattr(actstore, name) is obj and name in actstore.__all__, name
    assert all(hasattr(actstore, name) for name in actstore.__all__)
