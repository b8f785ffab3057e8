"""Where and in what precision a model computes: device names (auto, cpu, cuda, cuda:N,
mps) and compute dtypes (float32, float16, bfloat16), checked against what torch sees
here, with defaults (a GPU if there is one; float32 on CPU, float16 on GPU)."""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["DTYPES", "check_device", "resolve_device", "check_dtype", "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def check_device(device: str | None) -> None:
    """A ConfigError for a device name that is not auto, cpu, cuda, cuda:N or mps, or
    that names hardware torch does not see here."""
    if device in (None, "auto"):
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"Unknown device '{device}'; pass auto (a GPU if there is one), cpu, cuda, cuda:N or mps."
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"Device '{device}' was asked for, but torch sees no CUDA device; pass --device cpu."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"Device '{device}' was asked for, but torch sees {torch.cuda.device_count()} CUDA devices "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pass one of those."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"Device '{device}' was asked for, but torch sees no Apple GPU here; pass --device cpu."
        )


def resolve_device(device: str | None) -> str:
    """The device to run on: ``auto`` is cuda when torch sees a GPU, else cpu."""
    check_device(device)
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_dtype(dtype: object) -> None:
    """A ConfigError for a compute dtype actstore does not run (None: unset, is fine)."""
    if dtype is None or (isinstance(dtype, str) and dtype in DTYPES):
        return
    names = ", ".join(f"'{d}'" for d in DTYPES)
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
        fix = f"pass dtype='{name}'" if name in DTYPES else f"pass one of {names}"
        raise ConfigError(f"dtype must be a name ({names}); got the torch dtype {dtype}: {fix}.")
    raise ConfigError(
        f"Unknown dtype {dtype!r}; actstore computes in {names}. Pass one of those, or leave dtype unset "
        "(float32 on CPU, float16 on GPU; a model passed in memory computes in its own dtype)."
    )


def resolve_dtype(dtype: str | None, device: str) -> str:
    """float32 on CPU and float16 on GPU unless given."""
    check_dtype(dtype)
    if dtype is None:
        return "float32" if device == "cpu" else "float16"
    return dtype
