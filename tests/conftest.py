"""Shared fixtures: randomly initialised GPT-2-shaped models saved with the bundled
GPT-2 tokenizer (no hub, no ../shared), and a small varied corpus."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# scripts/test.sh runs one worker per core: one thread each
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

from actstore.demo import build_random_gpt2  # noqa: E402

from . import helpers  # noqa: E402


def _tl4() -> bool:
    from transformer_lens import patching

    return getattr(patching, "PatchingResult", None) is not None


# TransformerLens 4: PatchingResult, metric mappings, direct path and node attribution references
TL4 = _tl4()
needs_tl4 = pytest.mark.skipif(
    not TL4, reason="needs transformer_lens>=4 (PatchingResult and its references)"
)

# Modules of long tests (tens of seconds each, in subprocesses) run first. pytest-xdist hands
# out the collection in order, keeping two tests queued per worker; with these last (where
# their names sort), one worker was left with the last of them while the other idled
# (simulated from a run's --durations: 1100 s on one worker and 911 s on the other;
# first, 1007 s and 1004 s). Whole modules move, so their fixtures are built once as before.
FIRST = ("test_benchmarks.py", "capture/test_parallel.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent

    def first(item: pytest.Item) -> int:
        path = item.path.relative_to(here).as_posix() if item.path.is_relative_to(here) else ""
        return FIRST.index(path) if path in FIRST else len(FIRST)

    items.sort(key=first)  # stable: the order within and among the other modules is kept


TINY = dict(n_layer=3, n_embd=64, n_head=4, n_positions=64, vocab_size=50257)
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20.",
    "Unicode survives: naïve café, 東京, emoji 🙂 and tabs\tand\nnewlines.",
    "A short one.",
    "Interpretability researchers cache activations at scale to find circuits in language models. "
    * 3,
    "x",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
    "The end of the corpus is near; the last document is a little longer than the others, on purpose. "
    * 2,
] * 3


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_random_gpt2(tmp_path_factory.mktemp("models") / "tiny", seed=1, **TINY))


@pytest.fixture(scope="session")
def sharp_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny shape with weights drawn 10x wider than GPT-2's init (std 0.2): patches
    move metrics by O(0.1-1) (at the default init most move them by < 1e-3)."""
    return str(
        build_random_gpt2(
            tmp_path_factory.mktemp("models") / "sharp", seed=3, initializer_range=0.2, **TINY
        )
    )


@pytest.fixture(scope="session")
def gpt2_small_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_random_gpt2(tmp_path_factory.mktemp("models") / "gpt2", seed=2, **GPT2_SMALL))


@pytest.fixture(scope="session")
def family_model(tmp_path_factory: pytest.TempPathFactory):
    """``family_model(family)``: the folder of a random tiny model of ``family``
    (:data:`actstore.random_models.FAMILIES`), weights drawn at std 0.2 so that patches
    move metrics; each built once per session."""
    from actstore.random_models import build_random_model

    built: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in built:
            folder = tmp_path_factory.mktemp("families") / family
            built[family] = str(build_random_model(family, folder, seed=1, initializer_range=0.2))
        return built[family]

    return get


@pytest.fixture(scope="session")
def bridge(tiny_model: str):
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(tiny_model, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tokenizer():
    from actstore.demo import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(autouse=True)
def _demo_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # the demo model is built once per session under a temp folder, never in ~/.cache
    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "actstore-cache"))


def store_files(path: str | Path) -> dict[str, bytes]:
    """Every file of a store by relative path, except the root zarr.json, whose
    attrs hold the creation time and command line (compared separately)."""
    path = Path(path)
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and str(p.relative_to(path)) != "zarr.json"
    }


# the run that the crash, resume and repair tests interrupt, damage and compare
RESUME_OPTS = dict(
    sites="resid_post:all,z:1,pattern:2.0",
    seq_len=16,
    n_rows=30,
    batch_size=4,
    rows_per_chunk=4,
    rows_per_shard=8,
)


def resume_cli_args(out: str | Path, model: str, corpus: str, *extra: str) -> list[str]:
    """RESUME_OPTS as the arguments of `actstore cache` (quiet), then ``extra``."""
    flags = [x for k, v in RESUME_OPTS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return ["cache", str(out), "--model", model, "--dataset", corpus, *flags, "--quiet", *extra]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    import json

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS * 2))
    return str(path)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, corpus_file: str) -> Path:
    """An uninterrupted run of RESUME_OPTS."""
    import actstore

    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    actstore.cache(
        out=str(out), model=tiny_model, dataset=corpus_file, progress=False, **RESUME_OPTS
    )
    return out


@pytest.fixture(scope="session")
def train_sae():
    """scripts/train_sae.py as a module, so its ``main(argv)`` runs in-process (tests of its checks)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_sae_under_test", Path(__file__).resolve().parents[1] / "scripts" / "train_sae.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def copy(reference: Path, tmp_path: Path) -> Path:
    """A copy of the session's reference store, to damage."""
    out = tmp_path / "copy.zarr"
    shutil.copytree(reference, out)
    return out


@pytest.fixture
def one_thread():
    """torch on one thread for the test (see helpers.one_thread)."""
    with helpers.one_thread():
        yield
