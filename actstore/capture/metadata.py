"""The metadata a caching run writes into its store (``attrs["actstore"]``, a
:class:`StoreMeta`): the model, the corpus with its BOS policy and tokenizer ids, the
layout, each site's dims and shape, the codec, the software versions and the command
line (or, from Python, the call) that made it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from ..compat import versions
from ..corpus import CorpusSpec
from ..models import LoadedModel
from ..run_options import init_fields
from ..sites import Site, SiteShape
from ..store import CorpusMeta, SiteMeta, StoreMeta
from ..store.format import FORMAT_VERSION, Layout
from .config import CacheConfig

__all__ = ["store_metadata"]


def store_metadata(
    cfg: CacheConfig,
    model: LoadedModel,
    spec: CorpusSpec,
    layout: Layout,
    sites: Sequence[Site],
    shapes: Mapping[str, SiteShape],
    storage_dtype: str,
) -> StoreMeta:
    """The store's metadata; its layout (``attrs["actstore"]``) is :meth:`StoreMeta.to_dict`'s."""
    tok = model.tokenizer
    corpus = spec.describe()
    corpus["bos_policy"] = (
        "every row starts with BOS; documents separated by end-of-text"
        if spec.packing == "pack"
        else "BOS + document, truncated, padded; see mask"
    )
    corpus["bos_token_id"] = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    corpus["eos_token_id"] = tok.eos_token_id
    corpus["vocab_size"] = len(tok)
    return StoreMeta(
        format_version=FORMAT_VERSION,
        model=model.info,
        corpus=CorpusMeta.from_dict(corpus, "corpus"),
        layout=layout,
        sites=tuple(
            SiteMeta(
                s.hook,
                s.layer,
                None if s.heads is None else tuple(s.heads),
                ("row", *shapes[s.hook].dims),
                (layout.n_rows, *shapes[s.hook].shape),
            )
            for s in sites
        ),
        storage_dtype=storage_dtype,
        codec=cfg.codec,
        engine=cfg.engine,
        software=versions(),
        command_line=cfg.command_line
        or f"actstore.cache({_config_repr(cfg, model.info.as_argument())})",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _config_repr(cfg: CacheConfig, model: str) -> str:
    # a model object is shown by name, not copied
    values = dataclasses.asdict(dataclasses.replace(cfg, model=model))
    # as a call: the run options last
    fields = {f.name: values[f.name] for f in init_fields(CacheConfig)}
    if not isinstance(cfg.dataset, str):
        fields["dataset"] = f"<{len(cfg.dataset)} items>"
    return ", ".join(
        f"{k}={v!r}" for k, v in fields.items() if v != CacheConfig.__dataclass_fields__[k].default
    )
