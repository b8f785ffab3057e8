"""SAELens (6.x) SAEs trained from a store, with SAELens's own trainer and no model.

SAELens's ``SAETrainer`` consumes a *data provider*: an endless iterator of activation
batches, float tensors (batch, d_in) (``sae_lens.training.types.DataProvider``); its
``MultiSAETrainer`` consumes dicts {hook: (batch, d_in)}. Both are built here on
``store.loader`` (chunk-aware shuffle, threaded reads), looping over epochs, each epoch
in a new order:

    from sae_lens import SAETrainerConfig, StandardTrainingSAE, StandardTrainingSAEConfig
    from actstore.integrations import saelens

    store = actstore.open("acts.zarr")
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=768, d_sae=8 * 768, l1_coefficient=5.0))
    trainer = saelens.sae_trainer(store, "resid_post:6", sae, training_tokens=10_000_000, batch_size=4096)
    sae = trainer.fit()

Only :func:`sae_trainer` imports sae_lens; the data providers are plain torch iterators.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import ConfigError, MissingDependencyError
from ..store import ActivationStore
from ..store.base import StoreLike
from ..store.loader import resolve_sites, token_sites

__all__ = ["data_provider", "multi_hook_data_provider", "Provider", "site_d_in", "sae_trainer"]

StoreArg = StoreLike | str | os.PathLike  # an open store, or its path


def _open(store: StoreArg) -> StoreLike:
    return ActivationStore.open(store) if isinstance(store, (str, os.PathLike)) else store


def site_d_in(store: StoreArg, site: str) -> tuple[str, int]:
    """(hook, d_in) of one token-level site: the flattened size of its per-token value
    (d_model for resid_post, n_heads * d_head for hook_z, as SAELens's hook_z SAEs)."""
    store = _open(store)
    hooks = resolve_sites(store, site)
    if len(hooks) != 1:
        raise ConfigError(
            f"Site '{site}' names {len(hooks)} hooks ({', '.join(hooks)}); an SAE trains on one. "
            "Name one layer, e.g. 'resid_post:6', or use multi_hook_data_provider for several SAEs."
        )
    # refuses sites that are not one vector per token (attention patterns)
    (ts,) = token_sites(store, hooks)
    return ts.hook, ts.n_features


def _check_d_in(hook: str, have: int, want: int | None) -> None:
    if want is not None and want != have:
        raise ConfigError(
            f"The SAE's d_in is {want} but {hook} holds {have} values per token; build the SAE with "
            f"d_in={have} or pick the site it was made for."
        )


def multi_hook_data_provider(
    store: StoreArg,
    sites: str | Sequence[str],
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    epochs: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    d_in: dict[str, int] | None = None,
    **loader_options: Any,
) -> Provider:
    """{hook: (batch_size, d_in)} batches of the same tokens at several sites, for
    SAELens's ``MultiSAETrainer``: one read of the store feeds every SAE.

    ``dtype`` defaults to the store's own (float16 stays float16: pass the SAE's dtype to
    convert); ``epochs=None`` loops for ever, each epoch in a new order (seed, epoch);
    ``d_in`` ({hook: int}) is checked against the store before anything is read. Every
    batch holds exactly ``batch_size`` tokens (each epoch's remainder is dropped).
    Other options go to ``store.loader`` (``skip_bos``, ``rows``, ``num_workers``, ...)."""
    store = _open(store)
    hooks = resolve_sites(store, sites)
    widths = {ts.hook: ts.n_features for ts in token_sites(store, hooks)}
    for hook, want in (d_in or {}).items():
        if hook not in widths:
            raise ConfigError(
                f"d_in names {hook}, which the sites {sites!r} do not select ({', '.join(hooks)})."
            )
        _check_d_in(hook, widths[hook], want)
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be at least 1 (or None for endless); got {epochs}.")
    loader = store.loader(
        hooks,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=True,
        dtype=dtype,
        device=device,
        **loader_options,
    )
    n_tokens = loader.n_tokens
    if n_tokens < batch_size:
        raise ConfigError(
            f"The store holds {n_tokens} training tokens of {', '.join(hooks)}, fewer than one batch "
            f"of {batch_size}; pass a smaller batch_size."
        )
    return Provider(loader, hooks, epochs)


class Provider(Iterator[Any]):
    """The batches of a data provider, resumable: ``state_dict()`` says where it stands
    (the loader's epoch and batch), and ``load_state_dict(state)`` on a new provider made
    with the same arguments continues at the exact next batch (save it beside the
    SAELens checkpoint)."""

    def __init__(self, loader: Any, hooks: list[str], epochs: int | None, pick: str | None = None):
        self.loader, self.hooks, self.pick = loader, hooks, pick
        # the first epoch not to yield
        self.stop = None if epochs is None else loader.epoch + epochs
        self._it: Iterator[dict[str, torch.Tensor]] | None = None

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.stop is None or self.loader.epoch < self.stop:
            epoch = self.loader.epoch
            for (
                batch
            ) in self.loader:  # from the loader's position: a resumed epoch continues mid-way
                # (batch, *feature) -> (batch, d_in)
                yield {h: batch[h].reshape(len(batch[h]), -1) for h in self.hooks}
            self.loader.set_epoch(epoch + 1)

    def __next__(self) -> Any:
        if self._it is None:
            self._it = self._batches()
        batch = next(self._it)
        return batch if self.pick is None else batch[self.pick]

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._it is not None:
            raise ConfigError(
                "Load a data provider's state before taking its first batch (make a new provider)."
            )
        self.loader.load_state_dict(state)


def data_provider(
    store: StoreArg,
    site: str,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    epochs: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    d_in: int | None = None,
    **loader_options: Any,
) -> Provider:
    """(batch_size, d_in) batches of one site, SAELens's ``DataProvider``: pass it to
    ``SAETrainer(cfg, sae, data_provider)``. Options as :func:`multi_hook_data_provider`;
    ``d_in`` (the SAE's) must equal the site's per-token size."""
    hook, width = site_d_in(store, site)
    _check_d_in(hook, width, d_in)
    multi = multi_hook_data_provider(
        store,
        hook,
        batch_size,
        seed=seed,
        shuffle=shuffle,
        epochs=epochs,
        dtype=dtype,
        device=device,
        **loader_options,
    )
    return Provider(multi.loader, multi.hooks, epochs, pick=hook)


def _sae_lens() -> Any:
    try:
        import sae_lens.config
        import sae_lens.training.sae_trainer
    except ImportError as e:
        raise MissingDependencyError(
            f"actstore.integrations.saelens.sae_trainer needs SAELens ({e}); pip install sae-lens (6.x; it needs "
            "transformer-lens 3.x: bash scripts/fidelity_matrix.sh tl3 builds such an environment)."
        ) from None
    return sae_lens


def sae_trainer(
    store: StoreArg,
    site: str,
    sae: Any,
    *,
    training_tokens: int,
    batch_size: int = 4096,
    seed: int = 0,
    device: str | None = None,
    loader_options: dict[str, Any] | None = None,
    **trainer_options: Any,
) -> Any:
    """SAELens's ``SAETrainer`` for ``sae`` (a ``TrainingSAE``) fed from ``site`` of the
    store, for ``training_tokens`` tokens in batches of ``batch_size``; call ``.fit()``.

    The SAE's d_in is checked against the site; batches arrive in the SAE's dtype (a
    float16 store is converted exactly, never the other way silently); the SAE's
    metadata records the hook and the store's model. ``trainer_options`` are
    ``sae_lens.config.SAETrainerConfig`` fields (lr, lr_warm_up_steps, ...)."""
    sl = _sae_lens()
    store = _open(store)
    hook, width = site_d_in(store, site)
    cfg = sae.cfg
    _check_d_in(hook, width, cfg.d_in)
    if cfg.metadata.hook_name not in (None, hook):
        raise ConfigError(
            f"The SAE's metadata names hook {cfg.metadata.hook_name} but the site is {hook}; "
            "pass the site it was made for or build the SAE afresh."
        )
    cfg.metadata.hook_name = hook
    cfg.metadata.model_name = cfg.metadata.model_name or store.meta.model.name
    cfg.metadata.context_size = cfg.metadata.context_size or store.layout.seq_len
    device = device or str(cfg.device)
    sae_dtype = getattr(torch, cfg.dtype) if isinstance(cfg.dtype, str) else cfg.dtype
    provider = data_provider(
        store, hook, batch_size, seed=seed, dtype=sae_dtype, device=device, **(loader_options or {})
    )
    options = {"lr": 3e-4, **trainer_options}
    # LanguageModelSAERunnerConfig's default; SAETrainer needs one
    options.setdefault("lr_end", options["lr"] / 10)
    trainer_cfg = sl.config.SAETrainerConfig(
        total_training_samples=training_tokens,
        train_batch_size_samples=batch_size,
        device=device,
        **options,
    )
    return sl.training.sae_trainer.SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider)
