"""The plain-transformers capture engine (``actstore cache --engine hf``): forward hooks
on the Hugging Face model's own modules instead of the bridge's hook points, so the
forward is the plain model's, with nothing computed twice.

Each family's adapter maps the hook names it can serve this way to a module of the plain
model and what to take from it (:class:`HFSite`, in ``Adapter.hf_sites``). A site it does
not map (an attention pattern, which needs eager attention; a hook the bridge computes
itself) is refused before any work, naming the bridge engine. Values differ from the
bridge's ``run_with_cache`` only by float rounding (the bridge recomputes layer norms and
splits q/k/v itself); the bounds per site kind are in tests/families/test_hf_engine.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..collector import CaptureDone, Collector
from ..devices import DTYPES
from ..errors import ConfigError
from ..models import LoadedModel, model_source
from ..sites import DERIVED_SITES, Site, layer_of
from .base import ADAPTERS, adapter_for

__all__ = ["HFSite", "HFCapture", "ENGINES"]

ENGINES = ("bridge", "hf")


@dataclass(frozen=True)
class HFSite:
    """Where the plain model computes a hook's value: the ``take`` (input or output) of
    ``module`` (a path, ``{L}`` the layer); of a fused q/k/v projection, third ``part``;
    ``heads``: split the last axis into (head, d_head)."""

    module: str
    take: Literal["input", "output"] = "output"
    part: int | None = None
    heads: bool = False


def _load_plain(model: LoadedModel) -> Any:
    """The plain transformers model of ``model`` (a second copy of its weights: the bridge
    has replaced the modules of the one it wraps), in its dtype, on its device, in eval mode."""
    import transformers

    source, _ = model_source(model.info.name)
    kwargs: dict[str, Any] = {"dtype": DTYPES[model.info.dtype]}
    if model.info.revision is not None:
        kwargs["revision"] = model.info.revision
    plain = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    return plain.to(model.device).eval()  # type: ignore[arg-type]  # transformers types .to narrowly


class HFCapture:
    """``capture(tokens, sites, keep, sink)`` with the contract of
    :meth:`actstore.models.LoadedModel.capture`, run by the plain model's modules."""

    def __init__(self, model: LoadedModel, sites: Sequence[Site]):
        adapter = adapter_for(model, "The plain-transformers engine (--engine hf)")
        self.model = model
        self.d_head = model.info.d_head
        if model.info.in_memory:
            raise ConfigError(
                "--engine hf loads the plain transformers model by name, and this model was passed in "
                "memory as a TransformerBridge (whose modules the bridge has replaced). Pass its hub name "
                "or a folder (actstore.models.save_model writes one), or cache with --engine bridge "
                "(the default)."
            )
        if not adapter.hf_sites:
            served = sorted({a.name for a in ADAPTERS.values() if a.hf_sites})
            raise ConfigError(
                f"--engine hf maps hook names to the plain model's modules for {', '.join(served)} so "
                f"far; this is a {adapter.name} model. Cache it with --engine bridge (the default)."
            )
        where: dict[str, HFSite] = {}  # hook -> where the plain model computes it
        refused = []
        for site in sites:
            hook = DERIVED_SITES.get(site.hook, site.hook)
            layer = layer_of(hook)
            template = hook if layer is None else hook.replace(f"blocks.{layer}.", "blocks.{L}.", 1)
            spec = adapter.hf_sites.get(template)
            if spec is None:
                refused.append(site.hook)
            else:
                where[site.hook] = spec
        if refused:
            kinds = sorted({Site.from_hook(h).short or h for h in refused})
            raise ConfigError(
                f"--engine hf records the outputs of the plain {adapter.name} model's own modules, and none of them "
                f"computes {', '.join(refused[:4])}{' ...' if len(refused) > 4 else ''} ({', '.join(kinds)}): an "
                "attention pattern or score needs eager attention, other hooks the bridge computes itself. "
                "Cache these sites with --engine bridge (the default), or leave them out."
            )
        self.where = where
        self.plain = _load_plain(model)

    def _module(self, spec: HFSite, layer: int | None) -> torch.nn.Module:
        path = spec.module if layer is None else spec.module.format(L=layer)
        return self.plain.get_submodule(path)

    def _value(self, spec: HFSite, args: tuple[Any, ...], out: Any) -> torch.Tensor:
        x = args[0] if spec.take == "input" else (out[0] if isinstance(out, tuple) else out)
        if spec.part is not None:
            x = x.chunk(3, dim=-1)[spec.part]
        if spec.heads:
            x = x.unflatten(-1, (-1, self.d_head))  # query heads, or key/value heads (GQA)
        return x

    def capture(
        self,
        tokens: torch.Tensor,
        sites: Sequence[Site],
        keep: bool = True,
        sink: Callable[[str, torch.Tensor], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        tokens = tokens.to(self.model.device)
        collect = Collector(sites, tokens, keep, sink)
        handles = []
        for site in sites:
            spec = self.where[site.hook]

            def fn(
                module: Any, args: tuple[Any, ...], out: Any, site: Site = site, spec: HFSite = spec
            ) -> None:
                collect(site, self._value(spec, args, out))

            layer = layer_of(DERIVED_SITES.get(site.hook, site.hook))
            handles.append(self._module(spec, layer).register_forward_hook(fn))
        try:
            with torch.inference_mode():
                self.plain(input_ids=tokens, use_cache=False)
        except CaptureDone:
            pass
        finally:
            for h in handles:
                h.remove()
        return collect.result()
