"""patch_pairs takes the model as an object in memory (a TransformerBridge) as well as
by name, with the same numbers and the same clean-activation store."""

from __future__ import annotations

import numpy as np
import zarr

import actstore
from actstore.models import load_model
from actstore.patching.job import PatchJobConfig, patch_pairs

from ..conftest import needs_tl4


@needs_tl4
def test_patch_pairs_takes_a_bridge(tmp_path):
    demo = load_model("actstore-demo", "float32", "cpu").bridge
    opts = dict(task="ioi", n_pairs=4, sweep="resid_pre", batch_pairs=2, progress=False)
    by_name = patch_pairs(
        PatchJobConfig(model="actstore-demo", store=str(tmp_path / "a.zarr"), device="cpu", **opts)
    )
    got = patch_pairs(PatchJobConfig(model=demo, store=str(tmp_path / "b.zarr"), **opts))
    for field in ("logit_diff", "normalised", "clean_logit_diff", "corrupted_logit_diff"):
        np.testing.assert_array_equal(getattr(got, field), getattr(by_name, field), err_msg=field)
    # the clean prompts, cached from the object
    a, b = (
        actstore.open(by_name.out),
        actstore.open(got.out),
    )
    assert b.metadata["model"]["source"] == "in-memory"
    assert b.metadata["model"]["fingerprint"] == a.metadata["model"]["fingerprint"]
    for hook in a.sites:
        np.testing.assert_array_equal(b.acts(hook), a.acts(hook), err_msg=hook)
    assert (
        zarr.open_group(got.out)[f"{got.prefix}/normalised"].attrs["model"]["source"] == "in-memory"
    )
