"""A saved probe (:class:`Probe`): written under results/probes/<name>/<hook>/ of the
store, read back with :meth:`Probe.load`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, StoreNotFoundError, UnknownSiteError
from ..run_options import init_fields
from ..sites import GLOBAL_SITES, SHORT_SITES, Site, parse_sites
from ..store.results import ResultWriter

if TYPE_CHECKING:
    from ..store import ActivationStore
    from .config import ProbeConfig, ProbeReport
    from .plan import Plan

__all__ = ["Probe", "load_probe", "probe_names", "saved_probes", "probe_writers", "save_probes"]


@dataclass(frozen=True)
class Probe:
    """A saved probe in raw activation space: logits (or the prediction) = acts @ weight + bias."""

    hook: str
    name: str
    kind: str
    weight: np.ndarray  # (*feature, class) for logistic, (*feature,) for ridge
    bias: np.ndarray  # (class,) or ()
    classes: np.ndarray | None  # (class,) label of each output; None for ridge
    attrs: dict[str, Any]

    def predict(self, acts: np.ndarray) -> np.ndarray:
        """acts (..., *feature) -> predicted labels (...)."""
        nf = self.weight.ndim - (1 if self.kind == "logistic" else 0)
        lead = acts.shape[: acts.ndim - nf]
        x = np.asarray(acts, np.float64).reshape(-1, int(np.prod(self.weight.shape[:nf])))
        z = x @ self.weight.reshape(x.shape[1], -1).astype(np.float64) + self.bias.astype(
            np.float64
        )
        if self.kind == "ridge":
            return z[:, 0].reshape(lead)
        assert self.classes is not None  # a logistic probe has them
        return self.classes[z.argmax(1)].reshape(lead)

    @classmethod
    def load(
        cls,
        store: ActivationStore | str | os.PathLike[str],
        hook: str | Site,
        name: str | None = None,
    ) -> Probe:
        """The probe saved under results/probes/<name>/<hook> of ``store`` (an open store or
        its path) by `actstore probe` or fit_probes. ``hook``: a hook name or a site spec of
        one site ('resid_post:1'); ``name`` may be left out when there is only one."""
        return load_probe(store, hook, name)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return f"<{type(v).__name__}>" if isinstance(v, np.ndarray) else str(v)


def probe_writers(
    store: ActivationStore, name: str, hooks: Sequence[str]
) -> dict[str, ResultWriter]:
    """The writers of results/probes/<name>/<hook>, made before any work (so a store that
    cannot be written is refused first). A run of the same name replaces the earlier one,
    whole, hook by hook (a ridge run leaves no classes)."""
    return {
        h: ResultWriter.for_store(
            store,
            f"probes/{name}/{h}",
            replace=True,
            unwritable_fix="pass --no-save (save=False) to fit and score without saving, "
            "or copy the store to a folder you can write",
        )
        for h in hooks
    }


def save_probes(
    store: ActivationStore,
    plan: Plan,
    cfg: ProbeConfig,
    report: ProbeReport,
    fitted: Mapping[str, tuple[np.ndarray, np.ndarray]],
    writers: Mapping[str, ResultWriter] | None = None,
) -> None:
    """results/probes/<name>/<hook>/{weight, bias[, classes]}, in raw activation space,
    through ``writers`` (default: made here, see :func:`probe_writers`)."""
    writers = (
        writers
        if writers is not None
        else probe_writers(store, report.name, [s.hook for s in plan.sites])
    )
    scores = report.to_json()
    values = asdict(cfg)
    config = {
        f.name: _jsonable(values[f.name])
        for f in init_fields(type(cfg))  # the run options last
        if f.name not in ("progress", "command_line")
    }
    for s in plan.sites:
        W, b = fitted[s.hook]  # (F, C), (C,) on standardised features
        mean, scale = plan.mean[s.hook], plan.scale[s.hook]
        Wr = W / scale[:, None]
        br = b - (mean / scale) @ W
        attrs = {
            "kind": report.kind,
            "target": report.target,
            "metric": report.metric,
            "scores": scores[s.hook],
            "standardized": cfg.standardize,
            "config": config,
            "notes": report.notes,
            "command_line": cfg.command_line or "actstore.probes.fit_probes(...)",
        }
        with writers[s.hook] as out:
            if report.kind == "logistic":
                out.write(
                    "weight", Wr.reshape(*s.feature_shape, -1), (*s.feature_dims, "class"), attrs
                )
                out.write("bias", br, ("class",))
                out.write("classes", plan.classes, ("class",))
            else:
                out.write("weight", Wr[:, 0].reshape(s.feature_shape), s.feature_dims, attrs)
                out.write("bias", np.asarray(br[0]), ())


def probe_names(store: ActivationStore, hook: str) -> list[str]:
    """Names of the probe runs saved for ``hook``."""
    return saved_probes(store).get(hook, [])


def saved_probes(store: ActivationStore) -> dict[str, list[str]]:
    """hook -> names of the probe runs saved for it (results/probes/<name>/<hook>/weight)."""
    saved: dict[str, list[str]] = {}
    for r in store.results():
        parts = r.split("/")
        if len(parts) == 4 and parts[0] == "probes" and parts[3] == "weight":
            saved.setdefault(parts[2], []).append(parts[1])
    return {h: sorted(n) for h, n in saved.items()}


def _saved_text(store: ActivationStore) -> str:
    saved = saved_probes(store)
    if not saved:
        return "The store holds no probes yet."
    return (
        "Probes saved in it: "
        + "; ".join(f"{', '.join(n)} for {h}" for h, n in saved.items())
        + "."
    )


def _open(store: ActivationStore | str | os.PathLike[str]) -> ActivationStore:
    from ..store import ActivationStore

    if isinstance(store, ActivationStore):
        return store
    if isinstance(store, (str, os.PathLike)):
        return ActivationStore.open(store)
    raise ConfigError(
        f"store must be a store's path or an ActivationStore (actstore.open(path)); got "
        f"{type(store).__name__}."
    )


def _probe_hook(store: ActivationStore, site: str | Site) -> str:
    """The hook named by ``site``: a hook name or a site spec of one hook ('resid_post:1'),
    resolved as the model's sites are (so a site the store lacks is still recognised)."""
    if isinstance(site, str) and site in store.sites:
        return site
    if (
        isinstance(site, tuple)
        and len(site) == 2
        and isinstance(site[0], str)
        and isinstance(site[1], int)
    ):
        site = f"{site[0]}:{site[1]}"  # TransformerLens style: ("resid_post", 1)
    if not isinstance(site, (str, Site)) or (isinstance(site, str) and not site.strip()):
        raise ConfigError(
            f"The probe's site must be a hook name or a site spec of one site such as 'resid_post:1'; "
            f"got {site!r}. {_saved_text(store)}"
        )
    model = store.meta.model
    hooks = (
        set(store.sites)
        | set(GLOBAL_SITES.values())
        | {t.format(L=layer) for t in SHORT_SITES.values() for layer in range(model.n_layers)}
    )
    try:
        parsed = parse_sites(
            [site] if isinstance(site, Site) else site,
            hooks,
            model.n_layers,
            model.n_heads,
            model.n_kv_heads,
        )
    except UnknownSiteError as e:
        raise UnknownSiteError(f"{e} {_saved_text(store)}") from None
    if len(parsed) != 1:
        raise ConfigError(
            f"Site '{site}' names {len(parsed)} sites ({', '.join(p.hook for p in parsed)}); a probe is "
            f"saved per site, so pass one. {_saved_text(store)}"
        )
    if parsed[0].heads is not None:
        raise ConfigError(
            f"Site '{site}' selects heads; a probe is saved per site, over every head it was fitted "
            f"on: pass {parsed[0].hook}."
        )
    return parsed[0].hook


def load_probe(
    store: ActivationStore | str | os.PathLike[str], hook: str | Site, name: str | None = None
) -> Probe:
    """The probe saved for ``hook`` (a hook name or a site spec such as 'resid_post:1') by
    the run ``name`` (optional when there is only one) in ``store`` (or the store at that path)."""
    store = _open(store)
    hook = _probe_hook(store, hook)
    names = probe_names(store, hook)
    if not names:
        fix = (
            f"fit one with `actstore probe {store.path} --sites {hook} --target ...`"
            if hook in store.sites
            else f"the store does not hold {hook}, so no probe was fitted on it (it holds {', '.join(store.sites)})"
        )
        raise StoreNotFoundError(
            f"Store '{store.path}' has no probe for {hook}; {fix}. {_saved_text(store)}"
        )
    if name is None:
        if len(names) > 1:
            raise ConfigError(
                f"Store '{store.path}' holds probes {', '.join(names)} for {hook}; pass name=... to pick one."
            )
        name = names[0]
    elif name not in names:
        raise StoreNotFoundError(
            f"Store '{store.path}' has no probe '{name}' for {hook}; it has: {', '.join(names)}."
        )
    base = f"probes/{name}/{hook}"
    w = store.load_result(f"{base}/weight")
    attrs: dict[str, Any] = dict(w.attrs)
    classes = (
        np.asarray(store.load_result(f"{base}/classes")[...])
        if attrs["kind"] == "logistic"
        else None
    )
    return Probe(
        hook,
        name,
        attrs["kind"],
        np.asarray(w[...]),
        np.asarray(store.load_result(f"{base}/bias")[...]),
        classes,
        attrs,
    )
