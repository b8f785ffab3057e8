"""The training loader's arguments, checked before anything is read: each bad value is a
ConfigError that names it and the fix (torch's own errors would come at the first batch,
or from deep inside a pin or a cast)."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch

from ..errors import ConfigError
from .base import StoreLike
from .view import resolve_sites

__all__ = ["whole", "flag", "parse_dtype", "parse_device", "loader_hooks"]


def whole(name: str, value: Any, low: int, hint: str = "") -> int:
    """``value`` as an int >= ``low`` (bools refused), else a ConfigError."""
    if isinstance(value, Integral) and not isinstance(value, bool) and int(value) >= low:
        return int(value)
    what = {0: "a non-negative integer", 1: "a positive integer"}.get(
        low, f"an integer of at least {low}"
    )
    raise ConfigError(f"{name} must be {what}; got {value!r}{'. ' + hint if hint else ''}.")


def flag(name: str, value: Any) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ConfigError(f"{name} must be True or False; got {value!r}.")


_FLOATS = {
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
}


def parse_dtype(dtype: Any) -> torch.dtype | None:
    """None (keep the store's dtype), a floating torch dtype, or its name ('float16',
    'torch.bfloat16', 'fp32', ...)."""
    if dtype is None:
        return None
    got = _FLOATS.get(dtype.removeprefix("torch.")) if isinstance(dtype, str) else dtype
    if isinstance(got, torch.dtype) and got.is_floating_point:
        return got
    raise ConfigError(
        f"dtype={dtype!r} is not a floating-point dtype the batches can take; pass a torch dtype or its "
        "name: torch.float16, 'float16', 'bfloat16', 'float32' or 'float64' (or None: the store's own)."
    )


def parse_device(device: Any) -> torch.device | None:
    """None (batches stay on the CPU) or a device this machine has."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"device={device!r} is not a device; pass 'cpu', 'cuda', 'cuda:N' or 'mps' "
            "(or None: batches stay on the CPU)."
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(
                f"device={device!r}, but torch finds no CUDA GPU on this machine "
                f"(torch.cuda.is_available() is False, torch {torch.__version__}); pass device='cpu' "
                "(or leave it out), or run where a GPU and a CUDA build of torch are."
            )
        if dev.index is not None and dev.index >= n:
            raise ConfigError(
                f"device={device!r}, but this machine has {n} CUDA GPU(s): cuda:0..cuda:{n - 1}; "
                "pass one of those."
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(
                f"device={device!r}, but torch finds no Apple GPU (torch.backends.mps.is_available() "
                "is False); pass device='cpu' (or leave it out)."
            )
    elif dev.type != "cpu":
        raise ConfigError(
            f"device={device!r}: the loader copies batches to 'cpu', 'cuda', 'cuda:N' or 'mps'; "
            "pass one of those."
        )
    return dev


def loader_hooks(store: StoreLike, sites: Any) -> list[str]:
    """The store's hooks that ``sites`` names (site specs or hook names); none is an error."""
    ok = isinstance(sites, str) or (
        isinstance(sites, (list, tuple)) and all(isinstance(x, str) for x in sites)
    )
    hooks = resolve_sites(store, sites) if ok else []
    if not hooks:
        raise ConfigError(
            f"sites={sites!r} names no site; pass one or more of the store's sites as a spec or a list "
            f"(e.g. 'resid_post:1' or ['{store.sites[0]}']). Store '{store.path}' holds: "
            f"{', '.join(store.sites)}."
        )
    return hooks
