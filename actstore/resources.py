"""The model files shipped with the package, offline: `actstore-demo`, a small
GPT-2-architecture model (GPT2LMHeadModel: 4 layers, d_model 128, 4 heads, context 128,
0.9M parameters) with its own byte-level BPE tokenizer of ~1k tokens, trained by
scripts/train_demo.py on the synthetic corpus of :mod:`actstore.demo.data` and shipped in
actstore/data/demo-model/ (fp32 safetensors; training.json holds the recipe, the log, the
final numbers and the weights' sha256). It is a demo model, NOT GPT-2: its world is
templated sentences, counting and repeated tokens, where it has induction heads and
solves IOI-style prompts.

Also here: the bundled GPT-2 tokenizer (for GPT-2-family stores offline), the tokenizer
of a store's model, and random-init GPT-2-shaped models for tests."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DEMO_MODEL",
    "DEMO_MODEL_LABEL",
    "demo_model_dir",
    "demo_tokenizer",
    "gpt2_tokenizer",
    "tokenizer_for",
    "build_random_gpt2",
]

DEMO_MODEL = "actstore-demo"
DEMO_MODEL_LABEL = (
    "actstore-demo: a small GPT-2-architecture DEMO model (4 layers, d_model 128) trained on a "
    "synthetic corpus, NOT GPT-2"
)
DEMO_SEED = 0  # of build_random_gpt2


def demo_model_dir() -> Path:
    """The shipped model folder (config.json, model.safetensors, tokenizer, training.json)."""
    from .errors import ModelNotFoundError

    folder = Path(str(resources.files("actstore") / "data" / "demo-model"))
    if not (folder / "model.safetensors").is_file():
        raise ModelNotFoundError(
            f"The demo model is missing from {folder}; reinstall actstore, or train it again "
            "with: python scripts/train_demo.py"
        )
    return folder


def demo_tokenizer() -> Any:
    """The demo model's own byte-level BPE tokenizer (<|endoftext|> is BOS and EOS)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_model_dir()))


def gpt2_tokenizer() -> Any:
    """OpenAI's GPT-2 BPE tokenizer, bundled with the package (50257 tokens)."""
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]  # a lazy module

    return GPT2TokenizerFast.from_pretrained(
        str(resources.files("actstore") / "data" / "gpt2-tokenizer")
    )


def build_random_gpt2(
    folder: str | os.PathLike[str],
    seed: int = DEMO_SEED,
    tokenizer: Any = None,
    save_dtype: str = "float32",
    **config: Any,
) -> Path:
    """Save a randomly initialised GPT2LMHeadModel (``config`` as GPT2Config keyword
    arguments) with the GPT-2 tokenizer (or ``tokenizer``: one whose vocabulary fits
    ``vocab_size``, e.g. the demo tokenizer) to ``folder``, loadable by boot_transformers.
    ``save_dtype="float16"`` halves the files (GPT-2 XL's shape: 3.2 GB instead of 6.5)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = Path(folder)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config)).to(getattr(torch, save_dtype))
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    (tokenizer or gpt2_tokenizer()).save_pretrained(tmp)
    os.replace(tmp, folder)  # a half-built folder is never taken for a model
    return folder


def tokenizer_for(model_name: str) -> Any:
    """The tokenizer of a store's model: the demo tokenizer for 'actstore-demo', else
    from the model's folder or the HF cache, else the bundled GPT-2 tokenizer (every
    GPT-2-family model uses it)."""
    if model_name == DEMO_MODEL:
        return demo_tokenizer()
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(os.path.expanduser(model_name))
    except Exception:
        return gpt2_tokenizer()
