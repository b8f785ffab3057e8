"""A store described in words: `actstore info` and the app's store page print this text."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .reader import ActivationStore

__all__ = ["info_text"]


def info_text(store: ActivationStore) -> str:
    """What `actstore info` prints, and the app's store page shows: the store's model, corpus,
    rows done, storage and sites, with each site's uncompressed size."""
    m = store.meta
    mod, corpus, lay = m.model, m.corpus, m.layout
    item = np.dtype(m.storage_dtype).itemsize
    lines = [
        f"store      {store.path}  (format {m.format_version})",
        f"model      {mod.name}  [{mod.label}]",
        f"           {mod.n_layers} layers, d_model {mod.d_model}, {mod.n_heads} heads x d_head {mod.d_head}, "
        f"n_ctx {mod.n_ctx}, dtype {mod.dtype}",
        f"           weights {mod.fingerprint}",
        f"corpus     {corpus.dataset}  (split {corpus.split}, field '{corpus.text_field}', {corpus.kind})",
        f"           seq_len {corpus.seq_len}, packing {corpus.packing}: {corpus.bos_policy}",
        f"rows       {store.rows_done} / {lay.n_rows} done"
        f"  ({lay.n_shards} shard{'s' if lay.n_shards != 1 else ''} of {lay.rows_per_shard} rows,"
        f" chunks of {lay.rows_per_chunk})",
        *([] if store.is_complete else [f"           incomplete: {m.finish_hint(store.path)}"]),
        f"storage    {m.storage_dtype}, codec {m.codec}"
        + (
            ""
            if m.engine == "bridge"
            else f"; engine {m.engine} (the plain model's modules, not the bridge's)"
        ),
        "sites",
    ]
    total = 0
    for s in m.sites:
        nbytes = int(np.prod(s.shape)) * item
        total += nbytes
        heads = f" heads {list(s.heads)}" if s.heads is not None else ""
        shape = ", ".join(f"{d}={n}" for d, n in zip(s.dims, s.shape))
        lines.append(f"  {s.hook:<34} ({shape}){heads}  {nbytes / 1e6:,.1f} MB")
    lines.append(f"  total activations {total / 1e6:,.1f} MB uncompressed")
    sw = ", ".join(f"{k} {v}" for k, v in m.software.items())
    lines += [f"created    {m.created}", f"command    {m.command_line}", f"software   {sw}"]
    return "\n".join(lines)
