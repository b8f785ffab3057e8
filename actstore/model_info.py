"""What a store records of its model (:class:`ModelInfo`: name, dtype, shapes, the weights'
fingerprint, how it was given) and when two such records are other models
(:func:`check_identity`: resume, patching from a store, circuits' outputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ModelInfo", "check_identity"]


@dataclass(frozen=True)
class ModelInfo:
    """What the store's metadata records of the model."""

    name: str  # as given: hub name, folder, or 'actstore-demo'
    revision: str | None
    dtype: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    fingerprint: str  # sha256 of every weight tensor (name, dtype, shape, bytes)
    label: str  # e.g. "Hugging Face model", or the demo model's "DEMO model ..., NOT GPT-2"
    in_memory: bool = False  # passed as a TransformerBridge object, not loaded by name
    hooks: tuple[str, ...] = ()  # hook points the caller left hooks on (they run during caching)
    n_kv_heads: int | None = None  # grouped-query attention's key/value heads; None: one per head

    def to_dict(self) -> dict[str, Any]:
        """The metadata's model dict; an in-memory model adds ``"source": "in-memory"``
        and, if hooks are attached, ``"hooks"`` (a model loaded by name writes exactly
        the keys it always did)."""
        d = asdict(self)
        if d.pop("in_memory"):
            d["source"] = "in-memory"
        hooks = d.pop("hooks")
        if hooks:
            d["hooks"] = list(hooks)
        if d["n_kv_heads"] is None:  # a model with one K/V per head records what it always did
            del d["n_kv_heads"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelInfo:
        """The inverse of :meth:`to_dict` (a store's metadata["model"])."""
        d = dict(d)
        in_memory = d.pop("source", None) == "in-memory"
        return cls(**{**d, "hooks": tuple(d.get("hooks", ()))}, in_memory=in_memory)

    def as_argument(self) -> str:
        """How the model was given, for a command-line record."""
        return f"<in-memory model {self.name}>" if self.in_memory else self.name

    @property
    def dim_sizes(self) -> dict[str, int]:
        """Dimension name -> size, for naming a site's axes."""
        sizes = {
            "head": self.n_heads,
            "d_head": self.d_head,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "d_vocab": self.d_vocab,
        }
        return sizes if self.n_kv_heads is None else {**sizes, "kv_head": self.n_kv_heads}


def check_identity(
    stored: Mapping[str, Any], current: Mapping[str, Any], also: Sequence[str] = ()
) -> list[str]:
    """Differences between two model descriptions (a store's metadata["model"] and
    ModelInfo.to_dict()) that make them other models; names may differ. ``also``:
    more keys to compare (resume adds "hooks": the hooks a model in memory runs with)."""
    keys = ("fingerprint", "dtype", "n_layers", "d_model", "n_heads", "d_head", "n_ctx", *also)
    return [
        f"model.{k}: store has {stored.get(k)!r}, this run has {current.get(k)!r}"
        for k in keys
        if stored.get(k) != current.get(k)
    ]
