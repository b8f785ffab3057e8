"""The shipped demo model: it loads offline by name, is labelled as a demo model, its
training record matches its weights, its tokenizer and data generator behave, and it
has the structure the README promises (induction heads, in-context copying of
repeated tokens, IOI on held-out prompts, position in the residual stream)."""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest
import torch

import actstore
from actstore import demo
from actstore.analysis import induction_scores
from actstore.demo import data as demo_data
from actstore.demo import tour

from ..conftest import needs_tl4

H = 20  # half length of the repeated random rows (the README's example)


@pytest.fixture(scope="module")
def model():
    return actstore.load_model("actstore-demo", device="cpu")


@pytest.fixture(scope="module")
def record():
    return json.loads((demo.demo_model_dir() / "training.json").read_text())


@pytest.fixture(scope="module")
def rep_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "rep.zarr"
    return actstore.cache(
        out=str(out),
        model="actstore-demo",
        dataset=f"repeated-random:{H}:5",
        seq_len=2 * H + 1,
        n_rows=32,
        sites="pattern:all,loss",
        progress=False,
    )


# --- the model, its label and its record ---------------------------------------------


def test_loads_offline_by_name_from_package_data(model, tmp_path, monkeypatch):
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: no hub, so this load is offline
    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))
    again = actstore.load_model("actstore-demo", device="cpu")
    assert not (tmp_path / "cache").exists()  # nothing built or downloaded at first use
    info = again.info
    assert (info.n_layers, info.d_model, info.n_heads, info.n_ctx) == (4, 128, 4, 128)
    assert info.d_vocab == len(again.tokenizer) == len(demo.demo_tokenizer())
    assert info.fingerprint == model.info.fingerprint


def test_labelled_as_a_demo_model_not_gpt2(model, rep_store):
    for label in (model.info.label, rep_store.metadata["model"]["label"]):
        assert "DEMO model" in label and "NOT GPT-2" in label
    assert "NOT GPT-2" in demo.__doc__ and "not GPT-2" in tour.__doc__


def test_training_record_matches_the_shipped_weights(model, record):
    folder = demo.demo_model_dir()
    assert (
        hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        == record["weights_sha256"]
    )
    assert record["fingerprint"] == model.info.fingerprint
    # the generator has not drifted
    assert record["seed"] == 0 and record["data"]["sentence_mix"] == demo_data.RECIPE
    assert record["config"]["vocab_size"] == model.info.d_vocab
    assert record["final"]["text_loss"] < 2.0 and record["final"]["h20"]["induction_max"] >= 0.5
    assert record["wall_time_s"]["total"] < 30 * 60
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 5e6, f"the demo model folder is {size / 1e6:.1f} MB"


# --- tokenizer and generator ---------------------------------------------------------


def test_tokenizer_is_the_demo_tokenizer_and_round_trips(model):
    tok = demo.tokenizer_for("actstore-demo")
    assert len(tok) == model.info.d_vocab and tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert tok.get_vocab() == model.tokenizer.get_vocab()
    for w in demo_data.single_token_words():
        assert len(tok.encode(w, add_special_tokens=False)) == 1, w
    texts = demo_data.documents(20, seed=3) + [
        "Unicode: naïve café, 東京 🙂\ttabs\nand  two spaces, Zebra!"
    ]
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False)
        assert tok.decode(ids) == t
    assert (
        len(
            tok.encode(
                "When Mary and John went to the store, John gave a drink to",
                add_special_tokens=False,
            )
        )
        == 14
    )


def test_generator_is_deterministic():
    assert demo_data.documents(50, seed=3) == demo_data.documents(50, seed=3)
    assert demo_data.documents(50, seed=3) != demo_data.documents(50, seed=4)
    assert demo_data.documents(20, seed=3)[:10] == demo_data.documents(10, seed=3)
    assert demo_data.ioi_pairs(16) == demo_data.ioi_pairs(16)
    tok = demo.demo_tokenizer()
    a = demo_data.text_rows(tok, 40, 64, seed=2)
    assert np.array_equal(a, demo_data.text_rows(tok, 40, 64, seed=2))
    assert a.shape == (40, 64) and (a[:, 0] == tok.bos_token_id).all()
    assert not np.array_equal(a, demo_data.text_rows(tok, 40, 64, seed=3))
    assert tok.decode(a[0, 1:]).startswith(demo_data.documents(1, seed=2)[0][:100])
    r = demo_data.repeated_batch(tok, np.random.default_rng(0), 8, 10)
    assert np.array_equal(r, demo_data.repeated_batch(tok, np.random.default_rng(0), 8, 10))
    assert (
        r.shape == (8, 21)
        and (r[:, 0] == tok.bos_token_id).all()
        and np.array_equal(r[:, 1:11], r[:, 11:])
    )
    assert not (r[:, 1:] == tok.bos_token_id).any() and len(np.unique(r[:, 1:])) > 40


def test_bundled_corpus_is_the_generator_output():
    from importlib import resources

    lines = (resources.files("actstore") / "data" / "demo_corpus.jsonl").read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == demo_data.documents(600, seed=1)


def test_ioi_pairs_are_held_out_equal_length_with_one_token_answers():
    tok = demo.demo_tokenizer()
    pairs = demo_data.ioi_pairs(200)
    assert len({p["clean"] for p in pairs}) > 190
    for p in pairs:
        c = tok.encode(p["clean"], add_special_tokens=False)
        x = tok.encode(p["corrupted"], add_special_tokens=False)
        a, w = (
            tok.encode(p["answer"], add_special_tokens=False),
            tok.encode(p["wrong"], add_special_tokens=False),
        )
        assert len(c) == len(x) and len(a) == len(w) == 1 and a != w
        diff = [i for i, (u, v) in enumerate(zip(c, x)) if u != v]
        assert len(diff) == 1 and c[diff[0]] == w[0] and x[diff[0]] == a[0]  # S2 -> IO
        assert (
            p["clean"].count(p["wrong"].strip()) == 2 and p["clean"].count(p["answer"].strip()) == 1
        )
    assert len({len(tok.encode(p["clean"])) for p in demo_data.ioi_pairs(20, template=0)}) == 1
    # held out: no training document holds a held-out opener x action combination, with any link
    docs = " ".join(demo_data.documents(3000, seed=0))

    def pattern(
        i: int, j: int
    ) -> str:  # the combination's sentences, any names, place, object and link
        def words(t: str) -> str:
            return re.sub(r"\\\{(a|b|place|obj)\\\}", r"\\w+", re.escape(t))

        links = "|".join(map(re.escape, demo_data.IOI_LINKS))
        return f"{words(demo_data.IOI_OPENERS[i])}({links}){words(demo_data.IOI_ACTIONS[j])}"

    assert not set(demo_data.IOI_HELDOUT) & set(demo_data.IOI_TRAIN)
    for i, j in demo_data.IOI_HELDOUT:
        assert re.search(pattern(i, j), docs) is None, (i, j)
    # the check can fire
    assert all(re.search(pattern(i, j), docs) for i, j in demo_data.IOI_TRAIN[:10])


# --- structure ---------------------------------------------------------------------------


def test_induction_heads(model, rep_store):
    got = induction_scores(rep_store, progress=False)
    _, cache = model.bridge.run_with_cache(torch.from_numpy(rep_store.tokens()).long())
    for layer in range(4):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"].double()  # (row, head, q, k)
        # q = H+1 .. 2H
        ind = pat.diagonal(offset=1 - H, dim1=-2, dim2=-1)[..., 2:].mean(dim=(0, 2))
        # store holds float32
        np.testing.assert_allclose(got.induction[layer], ind.numpy(), rtol=0, atol=1e-6)
    assert np.nanmax(got.induction) >= 0.5, got.induction
    first, second = got.loss_halves
    assert second < first / 4, (first, second)


def test_ioi_logit_difference_on_held_out_prompts(model):
    from transformers import AutoModelForCausalLM

    pairs = demo_data.ioi_pairs(128)
    tok = model.tokenizer
    ld = demo.ioi_logit_diffs(model.bridge, tok, pairs)
    # the model, as shipped: mean 9.0 nats, median 9.2, right on 90% of these 128 pairs
    assert ld.mean() > 2.0 and np.median(ld) > 2.0 and (ld > 0).mean() >= 0.8, (
        ld.mean(),
        (ld > 0).mean(),
    )
    # the same numbers from the Hugging Face model, loaded on its own from the folder
    hf = AutoModelForCausalLM.from_pretrained(str(demo.demo_model_dir())).eval()
    np.testing.assert_allclose(demo.ioi_logit_diffs(hf, tok, pairs), ld, rtol=1e-4, atol=1e-4)
    # corrupting S2 into the IO flips the answer
    flipped = [{**p, "clean": p["corrupted"]} for p in pairs]
    assert demo.ioi_logit_diffs(model.bridge, tok, flipped).mean() < -1.0


def test_position_probe(tmp_path):
    from actstore.probes import fit_probes

    store = actstore.cache(
        out=str(tmp_path / "text.zarr"),
        model="actstore-demo",
        dataset="actstore-demo",
        sites="resid_post:all",
        seq_len=64,
        n_rows=400,
        progress=False,
    )
    assert "".join(store.str_tokens(0)).startswith(
        "<|endoftext|>" + demo_data.documents(1, seed=1)[0][:40]
    )
    report = fit_probes(
        store, sites="resid_post:all", target="position", save=False, progress=False, device="cpu"
    )
    acc = {r.layer: r.test for r in report.results.values()}
    assert max(acc.values()) >= 0.95, acc


@needs_tl4  # actstore patch
def test_tour_writes_figures(tmp_path, capsys):
    from actstore.cli.main import run_tour

    res = run_tour(str(tmp_path / "tour"), n_rows=24, n_rep_rows=8, n_pairs=4, quiet=True)
    assert len(res.figures) == 5 and res.figures[-1].endswith("ioi_circuit.eap.circuit.png")
    for f in res.figures:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", f
    assert set(res.probe_accuracy) == {0, 1, 2, 3} and res.induction_heads[0][1] >= 0.5
    assert res.ioi_logit_diff > 0 and res.loss_halves[1] < res.loss_halves[0]
    # the IOI circuit found on 4 pairs holds head 2.3, the demo model's IOI head (docs/getting-started.md)
    assert "2.3" in res.circuit_heads and res.circuit_edges > 0, res.circuit_heads
    with open(os.path.join(res.out, "ioi_circuit.eap.circuit.json")) as f:
        assert "a2.h3" in json.load(f)["nodes"]
    text = tour.summary(res)
    assert (
        "IOI circuit (eap" in text
        and "2.3" in text
        and "actstore app --model actstore-demo" in text
    )
    # it wrote only the files it declares, and its marker, so a second tour here replaces them
    assert sorted(os.listdir(res.out)) == sorted([tour.MARKER, *tour.OUTPUTS])
    tour.check_tour_folder(res.out)
