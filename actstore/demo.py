"""The embedded default: a small GPT-2-architecture model and a bundled corpus that
work offline. Until a trained demo model ships, 'actstore-demo' is a *randomly
initialised* GPT-2-shaped model built locally from a fixed seed: it exercises
the whole pipeline, but its activations carry no learned structure."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["DEMO_MODEL", "DEMO_MODEL_LABEL", "ensure_demo_model", "gpt2_tokenizer", "tokenizer_for"]

DEMO_MODEL = "actstore-demo"
DEMO_MODEL_LABEL = "random-init demo model (GPT-2 architecture, untrained, NOT GPT-2)"
# 4 layers, d_model 256, 8 heads: small enough to build in a second on a laptop
DEMO_CONFIG = {"n_layer": 4, "n_embd": 256, "n_head": 8, "n_positions": 256, "vocab_size": 50257}
DEMO_SEED = 0


def _cache_dir() -> Path:
    return Path(os.environ.get("ACTSTORE_CACHE", Path.home() / ".cache" / "actstore"))


def gpt2_tokenizer() -> Any:
    """OpenAI's GPT-2 BPE tokenizer, bundled with the package (50257 tokens)."""
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(resources.files("actstore") / "data" / "gpt2-tokenizer"))


def build_random_gpt2(folder: str | os.PathLike[str], seed: int = DEMO_SEED, **config: int) -> Path:
    """Save a randomly initialised GPT2LMHeadModel (``config`` as GPT2Config keyword
    arguments) with the GPT-2 tokenizer to ``folder``, loadable by boot_transformers."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = Path(folder)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config))
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    gpt2_tokenizer().save_pretrained(tmp)
    os.replace(tmp, folder)  # a half-built folder is never taken for a model
    return folder


def ensure_demo_model() -> Path:
    folder = _cache_dir() / "demo-random-gpt2-v1"
    if not (folder / "config.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        build_random_gpt2(folder, **DEMO_CONFIG)
    return folder


def tokenizer_for(model_name: str) -> Any:
    """The tokenizer of a store's model: from its folder or the HF cache, else the
    bundled GPT-2 tokenizer (every GPT-2-family model uses it)."""
    if model_name != DEMO_MODEL:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(os.path.expanduser(model_name))
        except Exception:
            pass
    return gpt2_tokenizer()
