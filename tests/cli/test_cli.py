import json
import subprocess
import sys

import numpy as np

import actstore
from actstore.cli import main

from ..conftest import DOCS


def test_cache_then_info(tmp_path, tiny_model, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"content": d}) + "\n" for d in DOCS))
    out = tmp_path / "s.zarr"
    code = main(
        [
            "cache",
            str(out),
            "--model",
            tiny_model,
            "--dataset",
            str(corpus),
            "--text-field",
            "content",
            "--sites",
            "resid_post:0,2,pattern:1.2",
            "--seq-len",
            "16",
            "--n-tokens",
            "100",
            "--batch-size",
            "3",
            "--codec",
            "zstd:1",
            "--quiet",
        ]
    )
    assert code == 0
    store = actstore.ActivationStore.open(out)
    assert store.n_rows == 7 and store.is_complete  # ceil(100 / 16)
    assert store.sites == [
        "blocks.0.hook_resid_post",
        "blocks.1.attn.hook_pattern",
        "blocks.2.hook_resid_post",
    ]
    assert store.metadata["command_line"].startswith("actstore cache ")
    assert store.metadata["codec"] == "zstd:1"
    capsys.readouterr()

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rows       7 / 7 done" in text
    assert (
        "blocks.1.attn.hook_pattern         (row=7, head=1, query_pos=16, key_pos=16) heads [2]"
        in text
    )
    assert main(["info", str(out), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["rows_done"] == 7 and meta["corpus"]["text_field"] == "content"


def test_codec_round_trips(tmp_path, tiny_model):
    stores = [
        actstore.cache(
            out=str(tmp_path / f"{c.replace(':', '')}.zarr"),
            model=tiny_model,
            dataset=DOCS,
            sites="resid_post:1",
            seq_len=16,
            n_rows=5,
            codec=c,
            progress=False,
        )
        for c in ("none", "zstd:1", "blosc-lz4", "blosc-zstd-bitshuffle:1")
    ]
    ref = stores[0].acts("blocks.1.hook_resid_post")
    assert all(np.array_equal(s.acts("blocks.1.hook_resid_post"), ref) for s in stores[1:])


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "actstore", "cache", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--sites" in out.stdout and "examples:" in out.stdout and "--resume" in out.stdout


def test_the_embedded_default_runs_by_name(tmp_path, capsys):
    out = tmp_path / "demo.zarr"
    assert (
        main(
            [
                "cache",
                str(out),
                "--model",
                "actstore-demo",
                "--dataset",
                "actstore-demo",
                "--sites",
                "resid_post:all",
                "--seq-len",
                "32",
                "--n-rows",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    label = actstore.ActivationStore.open(out).metadata["model"]["label"]
    assert "NOT GPT-2" in label and "demo" in label.lower()
