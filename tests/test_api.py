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
