"""A model already in memory (a TransformerBridge: fine-tuned, hooked...) is cached
like a model loaded by name: the same bytes for the same weights, its own fingerprint
for other weights, and resume, repair and multi-process runs check it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

import actstore
from actstore.capture.repair import repair_store
from actstore.errors import ConfigError, StoreMismatchError
from actstore.models import as_loaded, load_model, save_model

from ..conftest import store_files

OPTS = dict(
    dataset="actstore-demo",
    sites="resid_post:all,z:1,pattern:2.0",
    seq_len=16,
    n_rows=12,
    batch_size=4,
    rows_per_chunk=4,
    rows_per_shard=4,
    progress=False,
)


def boot():
    # a fresh boot, not copy.deepcopy: a deep copy of a bridge unties its split q/k/v views
    # from the weights they view, which changes what the fingerprint hashes
    return load_model("actstore-demo", "float32", "cpu").bridge


@pytest.fixture(scope="module")
def demo():
    return boot()


@pytest.fixture(scope="module")
def modified():
    """The demo model with 0.01 added to one weight: a 'fine-tuned' copy."""
    other = boot()
    with torch.no_grad():
        other.original_model.transformer.h[0].mlp.c_fc.weight.add_(0.01)
    return other


@pytest.fixture(scope="module")
def by_name(tmp_path_factory):
    return actstore.cache(
        out=str(tmp_path_factory.mktemp("name") / "s.zarr"), model="actstore-demo", **OPTS
    )


def test_a_bridge_gives_the_store_of_its_name(tmp_path, demo, by_name):
    store = actstore.cache(out=str(tmp_path / "s.zarr"), model=demo, **OPTS)
    assert store_files(store.path) == store_files(by_name.path)  # every array, chunk for chunk
    got, want = store.metadata["model"], by_name.metadata["model"]
    assert (
        got["fingerprint"] == want["fingerprint"] and got["name"] == want["name"] == "actstore-demo"
    )
    assert got["source"] == "in-memory" and got["revision"] is None
    assert "source" not in want  # a store made by name keeps exactly its keys
    assert {k: v for k, v in got.items() if k not in ("source", "label")} == {
        k: v for k, v in want.items() if k != "label"
    }
    assert "model='<in-memory model actstore-demo>'" in store.metadata["command_line"]
    assert actstore.open(store.path).tokenizer.encode("hello") == by_name.tokenizer.encode("hello")


def test_modified_weights_have_their_own_fingerprint_and_activations(tmp_path, modified, by_name):
    store = actstore.cache(out=str(tmp_path / "s.zarr"), model=modified, **OPTS)
    assert store.metadata["model"]["fingerprint"] != by_name.metadata["model"]["fingerprint"]
    tokens = torch.from_numpy(store.tokens(slice(None))).long()
    _, cache = modified.run_with_cache(tokens)
    for hook in store.sites:
        want = cache[hook].numpy()
        if hook == "blocks.2.attn.hook_pattern":
            want = want[:, [0]]  # pattern:2.0 keeps head 0
        # bit-exact, float32 on CPU
        np.testing.assert_array_equal(store.acts(hook), want, err_msg=hook)
    assert not np.array_equal(
        store.acts("blocks.0.hook_resid_post"), by_name.acts("blocks.0.hook_resid_post")
    )


def test_resume_checks_the_weights_in_memory(tmp_path, demo, modified, by_name):
    out = str(tmp_path / "s.zarr")
    actstore.cache(out=out, model=demo, **OPTS)
    done = zarr.open_group(out, mode="r+")["done"]
    done[1] = False
    with pytest.raises(StoreMismatchError, match="model.fingerprint"):
        actstore.cache(out=out, model=modified, resume=True, **OPTS)
    store = actstore.cache(out=out, model=demo, resume=True, **OPTS)
    assert store.rows_done == store.n_rows and store_files(out) == store_files(by_name.path)


def test_repair_of_an_in_memory_store_needs_the_model(tmp_path, demo, by_name):
    out = str(tmp_path / "s.zarr")
    actstore.cache(out=out, model=demo, **OPTS)
    with pytest.raises(ConfigError, match="held in memory.*pass that model"):
        repair_store(out, [], progress=False)
    assert repair_store(out, [], model=demo, progress=False).rows_done == by_name.n_rows


def test_a_saved_copy_resumes_the_in_memory_store(tmp_path, modified):
    """The fix the errors name: save_model, then pass the folder."""
    out = str(tmp_path / "s.zarr")
    folder = save_model(modified, tmp_path / "saved")
    assert (
        load_model(folder, "float32", "cpu").info.fingerprint
        == as_loaded(modified).info.fingerprint
    )
    actstore.cache(out=out, model=modified, **OPTS)
    zarr.open_group(out, mode="r+")["done"][0] = False
    assert actstore.cache(out=out, model=folder, resume=True, **OPTS).rows_done == 12


def test_multi_process_runs_refuse_an_object(tmp_path, demo, monkeypatch):
    from actstore.patching.job import PatchJobConfig, patch_pairs

    # as under torchrun: refused before any process group is made
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="cannot be shared.*save_model"):
        actstore.cache(out=str(tmp_path / "s.zarr"), model=demo, **OPTS)
    with pytest.raises(ConfigError, match="cannot be shared.*save_model"):
        patch_pairs(
            PatchJobConfig(
                model=demo, task="ioi", n_pairs=2, out=str(tmp_path / "p.zarr"), progress=False
            )
        )
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "p.zarr").exists()


def test_options_the_object_contradicts_are_refused(tmp_path, demo):
    out = str(tmp_path / "s.zarr")
    for opts, match in (
        (dict(dtype="float16"), r"computes in float32, but dtype 'float16'.*model\.to"),
        (dict(device="cuda"), r"is on cpu, but device 'cuda'.*model\.to"),
        (dict(model_revision="main"), "revision .* only applies to a model loaded by name"),
    ):
        with pytest.raises(ConfigError, match=match):
            actstore.cache(out=out, model=demo, **{**OPTS, **opts})
    with pytest.raises(ConfigError, match="TransformerBridge.*got torch.nn.modules.linear.Linear"):
        actstore.cache(out=out, model=torch.nn.Linear(2, 2), **OPTS)
    training = boot()
    next(
        m for m in training.modules() if isinstance(m, torch.nn.Dropout)
    ).p = 0.1  # GPT-2's own is 0.1
    training.train()
    with pytest.raises(ConfigError, match=r"dropout active.*model\.eval\(\)"):
        actstore.cache(out=out, model=training, **OPTS)
    assert not (tmp_path / "s.zarr").exists()
    # agreeing options are fine
    assert as_loaded(demo, "float32", "cpu").info == as_loaded(demo).info


def test_a_hooked_bridge_caches_what_it_computes_and_resume_checks_its_hooks(tmp_path, by_name):
    hooked = boot()
    hooked.add_hook("blocks.0.hook_resid_post", lambda x, hook: x + 1.0, is_permanent=True)
    out = str(tmp_path / "s.zarr")
    store = actstore.cache(out=out, model=hooked, **OPTS)
    model = store.metadata["model"]
    assert "blocks.0.hook_resid_post" in model["hooks"]
    # the weights are the demo's
    assert model["fingerprint"] == by_name.metadata["model"]["fingerprint"]
    _, cache = hooked.run_with_cache(torch.from_numpy(store.tokens(slice(None))).long())
    for hook in ("blocks.0.hook_resid_post", "blocks.3.hook_resid_post"):
        np.testing.assert_array_equal(store.acts(hook), cache[hook].numpy(), err_msg=hook)
    zarr.open_group(out, mode="r+")["done"][0] = False
    with pytest.raises(StoreMismatchError, match="model.hooks"):
        # the same weights without the hook
        actstore.cache(out=out, model=boot(), resume=True, **OPTS)
    assert actstore.cache(out=out, model=hooked, resume=True, **OPTS).rows_done == 12
