"""``--engine hf``: forward hooks on the plain transformers model's modules. Its values
equal ``run_with_cache``'s within float rounding, bounded per site kind relative to the
values' spread, in float32 and float16; the store records the engine, resume and repair
keep it; what the plain model does not compute is refused before any work."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import actstore
from actstore.cli import main
from actstore.errors import ConfigError

KINDS = [
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "q",
    "k",
    "v",
    "z",
    "mlp_pre",
    "mlp_post",
]
SITES = ",".join(f"{k}:all" for k in KINDS) + ",embed,logits,loss"
# |hf - run_with_cache| / spread of run_with_cache's values, at most (measured: float32 <= 2.6e-6, float16 <=
# 6.2e-3, on the demo model; the embedding is a lookup, identical)
BOUND = {"float32": 1e-5, "float16": 2e-2}


def _kind(hook: str) -> str:
    return hook.rsplit(".", 1)[-1]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_values_equal_run_with_cache_within_rounding(tmp_path, dtype):
    from actstore.models import load_model

    store = actstore.cache(
        out=str(tmp_path / "hf.zarr"),
        model="actstore-demo",
        dataset="actstore-demo",
        sites=SITES,
        n_rows=8,
        seq_len=32,
        batch_size=4,
        engine="hf",
        dtype=dtype,
        storage_dtype="float32",
        device="cpu",
        progress=False,
    )
    assert store.metadata["engine"] == "hf"
    bridge = load_model("actstore-demo", dtype, "cpu").bridge
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(torch.from_numpy(store.tokens()).long())
    seen = set()
    for hook in store.sites:
        got = store.acts(hook)
        want = (
            (
                cache[hook]
                if hook != "loss"
                else bridge.loss_fn(logits, torch.from_numpy(store.tokens()).long(), per_token=True)
            )
            .float()
            .numpy()
        )
        spread = np.ptp(want)
        assert spread > 1, (hook, spread)
        err = np.abs(got - want).max() / spread
        assert err <= (0 if hook == "hook_embed" else BOUND[dtype]), (hook, err)
        seen.add(_kind(hook))
    assert len(seen) == len(KINDS) + 3


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt_neox", "gemma2"])
def test_other_families_equal_run_with_cache_within_rounding(family_model, family, tmp_path):
    """Grouped-query keys and values, the gated MLP's pre- and post-activation, q and k
    before the rotary embedding (Llama's families); GPT-NeoX's parallel block: as the
    bridge's hooks, within float32 rounding."""
    from transformer_lens.model_bridge import TransformerBridge

    neox = family == "gpt_neox"  # no resid_mid; q, k, v fused and interleaved: not mapped
    sites = (
        ",".join(f"{k}:all" for k in KINDS if not (neox and k in ("resid_mid", "q", "k", "v")))
        + ",embed,logits"
    )
    store = actstore.cache(
        out=str(tmp_path / "s.zarr"),
        model=family_model(family),
        dataset="actstore-demo",
        sites=sites,
        n_rows=4,
        seq_len=16,
        batch_size=4,
        engine="hf",
        device="cpu",
        progress=False,
    )
    bridge = TransformerBridge.boot_transformers(
        family_model(family), device="cpu", dtype=torch.float32
    )
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(torch.from_numpy(store.tokens()).long())
    if not neox:
        assert store.acts("blocks.0.attn.hook_k").shape[2] == 2  # the key/value heads
    else:
        with pytest.raises(ConfigError, match=r"none of them computes blocks.0.attn.hook_q \(q\)"):
            actstore.cache(
                out=str(tmp_path / "q.zarr"),
                model=family_model(family),
                dataset="actstore-demo",
                sites="q:0",
                n_rows=2,
                seq_len=8,
                engine="hf",
                progress=False,
            )
    for hook in store.sites:
        want = cache[hook].numpy()
        spread = np.ptp(want)
        assert spread > 0.1, (hook, spread)
        assert np.abs(store.acts(hook) - want).max() <= BOUND["float32"] * spread, hook


def test_the_store_records_the_engine_and_resume_and_repair_keep_it(tmp_path, capsys):
    out = tmp_path / "s.zarr"
    args = [
        "cache",
        str(out),
        "--model",
        "actstore-demo",
        "--dataset",
        "actstore-demo",
        "--sites",
        "resid_post:all,z:1",
        "--n-rows",
        "16",
        "--seq-len",
        "16",
        "--rows-per-shard",
        "4",
        "--quiet",
        "--engine",
        "hf",
    ]
    assert main(args) == 0
    before = actstore.open(str(out)).acts("blocks.1.hook_resid_post")
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "; engine hf (the plain model's modules, not the bridge's)" in capsys.readouterr().out
    # the bridge would differ
    assert main([a for a in args if a not in ("--engine", "hf")] + ["--resume"]) != 0
    assert "engine: store has 'hf', this run has 'bridge'" in capsys.readouterr().err
    shutil.rmtree(out / "acts" / "blocks.1.hook_resid_post" / "c" / "1")  # shard 1: rows 4..7
    assert main(["verify", str(out), "--repair"]) == 0
    again = actstore.open(str(out))
    assert again.metadata["engine"] == "hf"
    # recomputed by the same engine
    np.testing.assert_array_equal(again.acts("blocks.1.hook_resid_post"), before)


def test_what_the_plain_model_does_not_compute_is_refused(tmp_path, family_model):
    out = tmp_path / "p.zarr"
    with pytest.raises(
        ConfigError,
        match=r"none of them computes blocks.0.attn.hook_pattern.*\(pattern\).*"
        r"--engine bridge",
    ):
        actstore.cache(
            out=str(out),
            model="actstore-demo",
            dataset="actstore-demo",
            sites="resid_post:0,pattern:0",
            n_rows=2,
            seq_len=8,
            engine="hf",
            progress=False,
        )
    from actstore.families.gemma2 import Gemma2

    with pytest.MonkeyPatch.context() as mp:  # a family without a module map
        mp.setattr(Gemma2, "hf_sites", {})
        with pytest.raises(
            ConfigError,
            match=r"for gpt2, gpt_neox, llama, mistral, qwen2 so far; this is a gemma2 "
            r"model.*--engine bridge",
        ):
            actstore.cache(
                out=str(out),
                model=family_model("gemma2"),
                dataset="actstore-demo",
                sites="resid_post:0",
                n_rows=2,
                seq_len=8,
                engine="hf",
                progress=False,
            )
    with pytest.raises(ConfigError, match="Unknown engine 'plain'; pass one of bridge, hf"):
        actstore.cache(
            out=str(out), model="actstore-demo", dataset="actstore-demo", n_rows=2, engine="plain"
        )
    assert not out.exists()  # refused before the store was made


def test_a_bridge_in_memory_is_refused(tmp_path, bridge):
    with pytest.raises(ConfigError, match="passed in memory as a TransformerBridge.*save_model"):
        actstore.cache(
            out=str(tmp_path / "m.zarr"),
            model=bridge,
            dataset="actstore-demo",
            sites="resid_post:0",
            n_rows=2,
            seq_len=8,
            engine="hf",
            progress=False,
        )
