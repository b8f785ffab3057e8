"""Load a model by hub name or local folder through TransformerBridge; resolve
dtype and device; fingerprint the weights; run the capture forward."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import torch

from .collector import CaptureDone, Collector
from .devices import DTYPES, check_device, check_dtype, resolve_device, resolve_dtype
from .errors import ConfigError, ModelNotFoundError
from .model_info import ModelInfo
from .model_protocol import HookedModel
from .parallel import launched
from .sites import DERIVED_SITES, Site, stop_layer

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "ModelInfo",
    "LoadedModel",
    "ModelLike",
    "load_model",
    "as_loaded",
    "save_model",
    "check_processes",
    "resolve_device",
    "check_device",
    "check_dtype",
    "resolve_dtype",
    "fingerprint",
    "bridge_dtype",
    "DTYPES",
    "Collector",
    "CaptureDone",
    "model_source",
]


@dataclass
class LoadedModel:
    bridge: HookedModel  # transformer_lens.model_bridge.TransformerBridge
    info: ModelInfo
    device: str

    @property
    def tokenizer(self) -> Any:
        return self.bridge.tokenizer

    def capture(
        self,
        tokens: torch.Tensor,
        sites: Sequence[Site],
        keep: bool = True,
        sink: Callable[[str, torch.Tensor], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the forward on ``tokens`` (row, pos) and return each site's activation
        (heads narrowed) by hook name. The forward is abandoned as soon as the last
        site's hook has fired: later blocks, ln_final and the unembedding never run
        unless a site needs them. ``sink(hook, activation)``, when given, receives each
        activation as its hook fires (so copies can start while the forward goes on)
        and nothing is returned. ``keep=False`` runs the same truncated forward without
        keeping anything (the bare-forward reference of the benchmarks)."""
        tokens = tokens.to(self.device)
        collect = Collector(sites, tokens, keep, sink)

        def hook_for(site: Site) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
                collect(site, act)
                return act

            return fn

        hooks = [(DERIVED_SITES.get(site.hook, site.hook), hook_for(site)) for site in sites]
        try:
            with torch.inference_mode():
                self.bridge.run_with_hooks(
                    tokens, fwd_hooks=hooks, stop_at_layer=stop_layer(sites), return_type=None
                )
        except CaptureDone:
            pass
        return collect.result()


def bridge_dtype(bridge: HookedModel) -> torch.dtype:
    """The dtype a TransformerBridge computes in (its weights')."""
    return next(bridge.original_model.parameters()).dtype


def _looks_like_path(name: str) -> bool:
    # hub names may hold one '/', as in 'openai-community/gpt2'; folders are absolute,
    # relative with ./ ../ ~, or exist
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)


def fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    seen: set[int] = set()
    for name, t in sorted(module.state_dict().items()):
        key = t.untyped_storage().data_ptr() if t.numel() else -1
        if key in seen and key != -1:  # tied weights (wte / lm_head) hash once
            h.update(f"{name}=tied".encode())
            continue
        seen.add(key)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def model_source(name: str) -> tuple[str, str]:
    """What transformers loads for ``name`` (the demo model's folder, a local folder, or
    the hub name), and how the store labels it."""
    from . import resources

    if name == resources.DEMO_MODEL:
        return str(resources.demo_model_dir()), resources.DEMO_MODEL_LABEL
    if _looks_like_path(name):
        path = os.path.expanduser(name)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelNotFoundError(
                f"Model folder '{name}' not found or has no config.json. Pass a folder written by "
                "save_pretrained (config.json, weights, tokenizer) or a hub name such as 'gpt2'."
            )
        return path, "local model folder"
    return name, "Hugging Face model"


def load_model(
    name: str, dtype: str | None = None, device: str | None = "auto", revision: str | None = None
) -> LoadedModel:
    """Boot ``name`` (hub name, local folder, or 'actstore-demo') with TransformerBridge."""
    from transformer_lens.model_bridge import TransformerBridge

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    source, label = model_source(name)
    kwargs: dict[str, Any] = {"device": dev, "dtype": DTYPES[dt]}
    if revision is not None:
        kwargs["revision"] = revision
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is the one that matters
    try:
        bridge = TransformerBridge.boot_transformers(source, **kwargs)
    except Exception as e:  # the loaders raise OSError, ValueError, HTTP errors...
        raise ModelNotFoundError(
            f"Could not load model '{name}' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Check the hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) and your network, or pass a local "
            "folder written by save_pretrained; offline, set HF_HUB_OFFLINE=1 with the model in the HF cache."
        ) from e
    _check_tokenizer(bridge, name)
    bridge.eval()
    return LoadedModel(bridge=bridge, info=_describe(bridge, name, revision, dt, label), device=dev)


def _check_tokenizer(bridge: HookedModel, name: str) -> None:
    """A model whose folder lacks tokenizer files boots with an empty tokenizer, which
    would turn every document into nothing; refuse it."""
    tok = getattr(bridge, "tokenizer", None)
    if tok is None or len(tok) < 2:
        raise ModelNotFoundError(
            f"Model '{name}' has no tokenizer (its folder lacks tokenizer.json, or vocab.json and merges.txt). "
            "Save the tokenizer beside the model (tokenizer.save_pretrained(folder)), e.g. GPT-2's for a GPT-2 model."
        )


def _describe(
    bridge: HookedModel,
    name: str,
    revision: str | None,
    dtype: str,
    label: str,
    in_memory: bool = False,
) -> ModelInfo:
    """The ModelInfo of a booted bridge; the fingerprint is computed from its tensors."""
    cfg = bridge.cfg
    return ModelInfo(
        name=name,
        revision=revision,
        dtype=dtype,
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        n_heads=int(cfg.n_heads),
        n_kv_heads=_kv_heads(cfg),
        d_head=int(cfg.d_head),
        d_mlp=int(getattr(cfg, "d_mlp", 4 * cfg.d_model) or 4 * cfg.d_model),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        fingerprint=fingerprint(bridge.original_model),
        label=label,
        in_memory=in_memory,
        hooks=_attached_hooks(bridge) if in_memory else (),  # a bridge loaded here has none
    )


def _kv_heads(cfg: Any) -> int | None:
    """Grouped-query attention's key/value heads, None where every head has its own."""
    n = getattr(cfg, "n_key_value_heads", None)
    return int(n) if n and int(n) != int(cfg.n_heads) else None


def _attached_hooks(bridge: HookedModel) -> tuple[str, ...]:
    """Hook points with forward hooks on them (by every alias in hook_dict)."""
    return tuple(
        sorted(n for n, h in bridge.hook_dict.items() if h._forward_hooks or h._forward_pre_hooks)
    )


# A model as every entry point takes it: a name (hub name, local folder, 'actstore-demo'),
# a TransformerBridge already in memory (fine-tuned, hooked...), or a LoadedModel.
ModelLike = Union[str, "os.PathLike[str]", "TransformerBridge", LoadedModel]

IN_MEMORY_LABEL = "in-memory TransformerBridge"


def as_loaded(
    model: ModelLike,
    dtype: str | None = None,
    device: str | None = "auto",
    revision: str | None = None,
) -> LoadedModel:
    """The model of a cache, patching or analysis run: a name is loaded with
    :func:`load_model`; a TransformerBridge (or a LoadedModel) is used as it is, on its
    own device and dtype. A ``dtype`` or ``device`` that differs from the object's is an
    error, not a silent conversion (convert the model yourself, or leave them unset:
    None / 'auto'); so is a ``revision``, which only names what to load. An in-memory
    model is recorded under ``bridge.cfg.model_name`` with revision None and
    ``source: "in-memory"``; its fingerprint is computed from its tensors, so a store
    made from it resumes with the same weights, by object or by a saved folder."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(os.fspath(model), dtype, device, revision)
    if isinstance(model, LoadedModel):
        _check_matches(model.info, model.device, dtype, device, revision)
        return model
    bridge = _as_bridge(model)
    active = [
        n
        for n, m in bridge.named_modules()
        if isinstance(m, torch.nn.Dropout) and m.training and m.p > 0
    ]
    if active:
        raise ConfigError(
            f"The model is in training mode with dropout active ({active[0]} and {len(active) - 1} more), "
            "so its activations are random; call model.eval() first (and model.train() after, to go on "
            "training)."
        )
    dt = {v: k for k, v in DTYPES.items()}.get(bridge_dtype(bridge))
    if dt is None:
        raise ConfigError(
            f"The model computes in {bridge_dtype(bridge)}; actstore runs {', '.join(DTYPES)} models. "
            "Convert it first, e.g. model.to(torch.float32)."
        )
    dev = str(next(bridge.original_model.parameters()).device)
    info = _describe(bridge, _name_of(bridge), None, dt, IN_MEMORY_LABEL, in_memory=True)
    _check_matches(info, dev, dtype, device, revision)
    return LoadedModel(bridge=bridge, info=info, device=dev)


def _name_of(bridge: HookedModel) -> str:
    """What the bridge was booted from (``cfg.model_name``): a hub name or a folder;
    the demo model's folder is named 'actstore-demo', as when loaded by name."""
    from . import resources

    name = str(getattr(bridge.cfg, "model_name", None) or type(bridge.original_model).__name__)
    try:
        demo = resources.demo_model_dir()
    except ModelNotFoundError:  # not shipped: then no bridge comes from it
        return name
    return resources.DEMO_MODEL if os.path.realpath(name) == os.path.realpath(demo) else name


def _as_bridge(model: Any) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    if not isinstance(model, TransformerBridge):
        raise ConfigError(
            f"model must be a name (hub name such as 'gpt2', a local folder, or 'actstore-demo') or a "
            f"transformer_lens TransformerBridge; got {type(model).__module__}.{type(model).__name__}. Boot one with "
            "TransformerBridge.boot_transformers(name_or_folder) (a Hugging Face model in memory: "
            "boot_transformers(name, hf_model=your_model)), or pass a folder written by save_pretrained."
        )
    return model


def _check_matches(
    info: ModelInfo, dev: str, dtype: str | None, device: str | None, revision: str | None
) -> None:
    """Refuse options that would need the model in memory converted or reloaded."""
    check_dtype(dtype)  # first: the advice below names torch.<dtype>, which must exist
    if dtype is not None and dtype != info.dtype:
        raise ConfigError(
            f"The model passed computes in {info.dtype}, but dtype '{dtype}' was asked for; convert it "
            f"first (model.to(torch.{dtype})) or leave dtype unset to use the model as it is."
        )
    if device not in (None, "auto"):
        want, have = torch.device(device), torch.device(dev)
        if want.type != have.type or (
            want.index is not None and have.index is not None and want.index != have.index
        ):
            raise ConfigError(
                f"The model passed is on {dev}, but device '{device}' was asked for; move it first "
                f"(model.to('{device}')) or leave device unset ('auto') to use it where it is."
            )
    if revision is not None and revision != info.revision:
        raise ConfigError(
            f"A model revision ('{revision}') only applies to a model loaded by name; the model passed "
            "is already loaded, so leave the revision unset."
        )


def save_model(model: TransformerBridge | LoadedModel, folder: str | os.PathLike[str]) -> str:
    """Save a model held in memory as a Hugging Face folder (config, weights, tokenizer)
    that every entry point, the CLI and multi-process runs load by name, with the same
    fingerprint. (A booted bridge's ``original_model.save_pretrained`` fails: the bridge
    wraps its modules and adds views; this saves the Hugging Face keys only.)"""
    bridge = model.bridge if isinstance(model, LoadedModel) else _as_bridge(model)
    hf = bridge.original_model
    weights: dict[str, torch.Tensor] = {}
    for key, t in hf.state_dict().items():
        weights.setdefault(key.replace("._original_component", ""), t)
    with torch.device("meta"):  # the plain model's keys, without allocating it
        keys = type(hf)(hf.config).state_dict().keys()
    hf.save_pretrained(folder, state_dict={k: weights[k].contiguous() for k in keys})
    bridge.tokenizer.save_pretrained(folder)
    return os.fspath(folder)


def check_processes(model: ModelLike) -> None:
    """Refuse an in-memory model when this run is launched as several processes
    (torchrun / accelerate): the other processes cannot receive the object. Call it
    before the process group is set up."""
    in_memory = (
        model.info.in_memory
        if isinstance(model, LoadedModel)
        else not isinstance(model, (str, os.PathLike))
    )
    if in_memory and launched():
        raise ConfigError(
            "A model held in memory cannot be shared with the other processes of a multi-process run; "
            "save it with actstore.models.save_model(model, FOLDER) (save_pretrained of the weights and "
            "tokenizer) and pass the folder, or run a single process."
        )
