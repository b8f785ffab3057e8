"""Batch size and inner-chunk size when the user gives none.

* Batch size (rows per forward), CUDA: the forward's memory per row is measured
  (peak allocated at 2 and at 4 rows, the difference over 2 rows, so fixed costs
  cancel), and the batch takes ``GPU_FRACTION`` of the free memory, as a power of
  two between 1 and ``MAX_BATCH``.
* CPU: ``CPU_TOKENS`` tokens per forward (a larger batch is no faster per token
  on a CPU), within a quarter of the available RAM.
* Inner chunk (the unit of reading): rows of about ``CHUNK_BYTES`` of the largest
  site, a power of two, so that the layout depends on the sites and not on the
  machine (a store made on one GPU resumes byte-identically on another).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np
import torch

from ..sites import SiteShape

__all__ = ["auto_batch_size", "batch_for_memory", "default_chunk_rows", "chunk_dividing"]

GPU_FRACTION = 0.6
MAX_BATCH = 1024
CPU_TOKENS = 2048
CHUNK_BYTES = 8 * 2**20
MAX_CHUNK_ROWS = 64


def _pow2_floor(n: float) -> int:
    return 1 << max(0, int(np.floor(np.log2(max(n, 1)))))


def batch_for_memory(
    free_bytes: int, bytes_per_row: float, n_rows: int, fraction: float = GPU_FRACTION
) -> int:
    """The largest power of two of rows whose forward fits in ``fraction`` of ``free_bytes``."""
    fit = fraction * free_bytes / max(bytes_per_row, 1.0)
    return max(1, min(_pow2_floor(fit), MAX_BATCH, _pow2_floor(n_rows) if n_rows >= 1 else 1))


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def auto_batch_size(
    forward: Callable[[torch.Tensor], object],
    device: str,
    seq_len: int,
    n_rows: int,
    row_bytes: int,
) -> int:
    """Rows per forward for ``forward(tokens)`` (the capture forward) on ``device``;
    ``row_bytes`` is one row's captured activations in the storage dtype."""
    if torch.device(device).type == "cuda":
        peaks = []
        for rows in (2, 4):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            forward(torch.zeros(rows, seq_len, dtype=torch.long, device=device))
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
        per_row = max((peaks[1] - peaks[0]) / 2, peaks[0] / 2, 1.0)
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return batch_for_memory(free, per_row, n_rows)
    by_tokens = max(1, CPU_TOKENS // seq_len)
    by_ram = batch_for_memory(_available_ram(), 8 * row_bytes, n_rows, fraction=0.25)
    return max(1, min(by_tokens, by_ram, n_rows))


def default_chunk_rows(shapes: Mapping[str, SiteShape], storage_dtype: str, n_rows: int) -> int:
    """Rows per inner chunk: about CHUNK_BYTES of the largest site, a power of two."""
    item = np.dtype(storage_dtype).itemsize
    largest = max((int(np.prod(s.shape)) * item for s in shapes.values()), default=1)
    return max(1, min(_pow2_floor(CHUNK_BYTES / largest), MAX_CHUNK_ROWS, n_rows))


def chunk_dividing(rows_per_shard: int | None, preferred: int) -> int:
    """Rows per inner chunk when the user set none: ``preferred`` (the batch size, or
    :func:`default_chunk_rows`), or, for a shard size it does not divide, the largest
    divisor of the shard size below it (a shard holds whole chunks)."""
    if rows_per_shard is None or rows_per_shard % preferred == 0:
        return preferred
    return max(d for d in range(1, min(preferred, rows_per_shard) + 1) if rows_per_shard % d == 0)
