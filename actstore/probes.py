"""Linear probes over a store: one probe per site, every site fitted from the same
reads of the store, which need not fit in memory.

ridge (and ordinary least squares, alpha=0) is exact: one streaming pass accumulates,
per site and per split, float64 means and centred X^T X, X^T y, y^T y of each block,
merged with Chan et al.'s formula; the weights solve (X_c^T X_c + alpha I) w = X_c^T y_c
(scikit-learn's Ridge with an unpenalised intercept), and R^2 on both splits comes from
the same sums.

logistic is multinomial logistic regression with scikit-learn's objective, mean
(class-weighted) cross-entropy + ||W||^2 / (2 C n), minimised by L-BFGS batched over
sites: the parameters of every site sit in one (site, ...) tensor and each function
evaluation is one batched matmul (on GPU when there is one). One pass over the store
gathers the kept positions of every site into memory when they fit in max_memory_gb;
otherwise every evaluation streams the store again (memory stays bounded).

Splits are by row (see labels.split_rows). Features are standardised with the store's
stats unless standardize=False: mean and population variance over every masked position
of the store, BOS and test rows included (an affine map fixed before fitting, so it leaks
no labels); saved weights are folded back into raw activation space. Ridge runs on the
CPU (float64 BLAS) whatever the device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, StoreNotFoundError
from .labels import Target, class_plan, parse_target, split_rows
from .store.loader import ChunkReader, TokenSite, keep_positions, resolve_sites, row_units, token_sites

if TYPE_CHECKING:
    from .store import ActivationStore

__all__ = ["ProbeConfig", "ProbeResult", "ProbeReport", "Probe", "fit_probes", "load_probe", "probe_names"]

KINDS = ("logistic", "ridge")
_UNIT_BYTES = 64 * 2**20  # rows read per unit: about this many bytes of all sites together
_BLOCK_ELEMS = 2**26  # float32 elements of one compute block's logits + features, all sites


@dataclass
class ProbeConfig:
    """Options of one probe run; the CLI flags map onto these fields."""

    sites: str | Sequence[str] = "resid_post:all"  # specs resolved against the store's hooks
    target: Any = "position"  # built-in name, .npy path, or (row, pos) array; see labels.py
    kind: str | None = None  # 'logistic' | 'ridge'; None: logistic for classes, ridge for real values
    test_frac: float = 0.2  # fraction of rows held out
    seed: int = 0  # the split's seed
    standardize: bool = True  # (x - mean) / std from the store's stats before fitting
    class_weight: str | None = None  # None | 'balanced' (scikit-learn's n / (n_classes * count))
    max_classes: int | None = None  # keep the most frequent training classes; others are not labels
    C: float = 1.0  # logistic: inverse L2 strength, as scikit-learn's C
    alpha: float = 1.0  # ridge: L2 strength, as scikit-learn's alpha; 0 = least squares
    max_iter: int = 100  # L-BFGS iterations (scikit-learn's default)
    tol: float = 1e-4  # stop when max |gradient| <= tol (scikit-learn's default)
    skip_bos: bool = True  # pos 0 of every row is BOS
    device: str = "auto"
    max_memory_gb: float = 8.0  # gather data in memory up to this; stream the store beyond it
    num_workers: int = 4  # reader threads
    name: str | None = None  # results/probes/<name>/...; default: '<target>-<kind>'
    save: bool = True
    progress: bool = True
    command_line: str | None = None  # provenance; the CLI fills it in

    def validate(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"Unknown probe kind '{self.kind}'; expected 'logistic' or 'ridge'.")
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(f"class_weight must be None or 'balanced'; got {self.class_weight!r}.")
        if not self.C > 0 or not self.alpha >= 0:
            raise ConfigError(f"C must be > 0 and alpha >= 0; got C={self.C}, alpha={self.alpha}.")
        for k in ("max_iter", "num_workers") + (("max_classes",) if self.max_classes is not None else ()):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ConfigError(f"{k} must be a positive integer; got {getattr(self, k)!r}.")
        if self.name is not None and ("/" in self.name or not self.name):
            raise ConfigError(f"Probe name '{self.name}' must be non-empty and hold no '/'.")


@dataclass(frozen=True)
class ProbeResult:
    """Scores of one site's probe: accuracy (logistic) or R^2 (ridge)."""

    hook: str
    layer: int | None
    train: float
    test: float  # NaN without test rows
    n_train: int  # labelled positions used
    n_test: int
    baseline: float  # logistic: test accuracy of the most frequent training class; ridge: 0
    n_classes: int  # 0 for ridge
    n_iter: int  # L-BFGS iterations (0 for ridge)
    converged: bool


@dataclass
class ProbeReport:
    kind: str
    target: str
    name: str
    metric: str  # 'accuracy' | 'r2'
    results: dict[str, ProbeResult]
    notes: dict[str, Any] = field(default_factory=dict)  # ignored positions and the like

    def to_json(self) -> dict[str, dict[str, Any]]:
        """{hook: scores}, NaN as None."""
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and math.isnan(v) else v
        return {h: {k: clean(v) for k, v in asdict(r).items() if k != "hook"} for h, r in self.results.items()}

    def table(self) -> str:
        m = "acc" if self.metric == "accuracy" else "R^2"
        lines = [f"{self.kind} probes of '{self.target}' -> results/probes/{self.name}/",
                 f"{'site':<34}{'train ' + m:>11}{'test ' + m:>11}{'baseline':>10}{'n_train':>10}{'n_test':>9}{'iters':>7}"]
        for h, r in self.results.items():
            flag = "" if r.converged else "  (not converged)"
            lines.append(f"{h:<34}{r.train:>11.4f}{r.test:>11.4f}{r.baseline:>10.4f}{r.n_train:>10}{r.n_test:>9}"
                         f"{r.n_iter:>7}{flag}")
        return "\n".join(lines)


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
        z = x @ self.weight.reshape(x.shape[1], -1).astype(np.float64) + self.bias.astype(np.float64)
        if self.kind == "ridge":
            return z[:, 0].reshape(lead)
        return self.classes[z.argmax(1)].reshape(lead)

    @classmethod
    def load(cls, store: "ActivationStore", hook: str, name: str | None = None) -> "Probe":
        """The probe saved under results/probes/<name>/<hook> of ``store`` by `actstore probe`
        or fit_probes (``name`` may be left out when there is only one)."""
        return load_probe(store, hook, name)


# --- the plan shared by both kinds ------------------------------------------------------

@dataclass
class _Plan:
    store: "ActivationStore"
    sites: list[TokenSite]
    target: Target
    test_rows: np.ndarray  # bool (row,)
    mean: dict[str, np.ndarray]  # float64 (feature,) flattened; zeros when not standardising
    scale: dict[str, np.ndarray]  # float64 (feature,); ones when not standardising
    skip_bos: bool
    classes: np.ndarray | None = None  # int64 (class,) sorted, logistic only
    class_w: np.ndarray | None = None  # float64 (class,) per-class sample weight

    def units(self, sites: Sequence[TokenSite]) -> list[slice]:
        row_bytes = sum(s.n_features for s in sites) * self.store.layout.seq_len * 4
        return row_units(self.store, rows_per_unit=max(1, _UNIT_BYTES // max(row_bytes, 1)))

    def select(self, unit: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Kept, labelled positions of a unit: (row, pos) indices (2, n), labels (n,) (class
        indices for logistic), is_test (n,)."""
        keep = keep_positions(self.store, unit, self.skip_bos, skip_padding=True)
        y = self.target.labels(self.store, unit)
        if self.classes is None:  # regression: negative integer labels mean "none", as for classes
            y = np.where(y >= 0, y, np.nan) if y.dtype.kind != "f" else y
            keep &= ~np.isnan(y)
        else:
            k = np.clip(np.searchsorted(self.classes, y), 0, len(self.classes) - 1)
            ok = self.classes[k] == y
            keep &= ok
            y = np.where(ok, k, -1)
        r, p = np.nonzero(keep)
        return np.stack([r, p]), y[r, p], self.test_rows[unit][r]

    def reader(self, sites: Sequence[TokenSite], dtype: type, num_workers: int) -> Callable[[], Iterator[Any]]:
        """A function that streams the store once: yields (X {hook: (n, F) standardised}, y (n,), is_test (n,))."""
        def transform(unit: slice, acts: dict[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
            (r, p), y, test = self.select(unit)
            xs = []
            for s in sites:
                x = acts[s.hook][r, p].reshape(len(r), -1).astype(dtype)
                xs.append((x - self.mean[s.hook].astype(dtype)) / self.scale[s.hook].astype(dtype))
            return xs, y, test
        reader = ChunkReader(self.store, [s.hook for s in sites], num_workers, transform=transform)
        units = self.units(sites)
        return lambda: (got for _, got in reader(units))


def _groups(sites: Sequence[TokenSite]) -> list[list[TokenSite]]:
    """Sites with the same feature count, batched together."""
    by: dict[int, list[TokenSite]] = {}
    for s in sites:
        by.setdefault(s.n_features, []).append(s)
    return list(by.values())


def fit_probes(store: "ActivationStore", config: ProbeConfig | None = None, /, **options: Any) -> ProbeReport:
    """Fit one linear probe per site of ``store``; save them under results/probes/<name>/
    and return their train and test scores. Takes a ProbeConfig or its fields."""
    cfg = config if config is not None else ProbeConfig(**options)
    cfg.validate()
    sites = token_sites(store, resolve_sites(store, cfg.sites))
    target = parse_target(cfg.target, store)
    kind = cfg.kind or ("logistic" if target.categorical else "ridge")
    if kind == "logistic" and not target.categorical:
        raise ConfigError(f"Target '{target.name}' holds real values; fit it with kind 'ridge'.")
    if kind == "ridge" and not target.numeric:
        raise ConfigError(f"Target '{target.name}' holds category ids, not quantities; fit it with kind 'logistic'.")
    store.check_done(slice(None))
    test_rows = split_rows(store.n_rows, cfg.test_frac, cfg.seed)
    mean, scale = {}, {}
    for s in sites:
        if cfg.standardize:
            m = store.stats(s.hook)
            mean[s.hook] = m.mean.ravel()
            sd = np.sqrt(m.var.ravel())
            scale[s.hook] = np.where(sd > 1e-12, sd, 1.0)
        else:
            mean[s.hook], scale[s.hook] = np.zeros(s.n_features), np.ones(s.n_features)
    plan = _Plan(store, sites, target, test_rows, mean, scale, cfg.skip_bos)
    device = _device(cfg.device)
    name = cfg.name or f"{target.name}-{kind}"
    if kind == "ridge":
        fitted, results, notes = _fit_ridge(plan, cfg)
    else:
        fitted, results, notes = _fit_logistic(plan, cfg, device)
    report = ProbeReport(kind, target.name, name, "accuracy" if kind == "logistic" else "r2", results, notes)
    if cfg.save:
        _save(store, plan, cfg, report, fitted)
    return report


def _device(device: str) -> str:
    from .models import resolve_device
    return resolve_device(device)


# --- ridge ---------------------------------------------------------------------------

@dataclass
class _Comoments:
    """One site's count, means and centred co-moments of (x, y), float64."""

    n: int
    mx: np.ndarray  # (F,)
    my: float
    cxx: np.ndarray  # (F, F)
    cxy: np.ndarray  # (F,)
    syy: float

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> "_Comoments":  # x (n, F), y (n,)
        mx, my = x.mean(0), float(y.mean())
        xc, yc = x - mx, y - my
        return cls(len(y), mx, my, xc.T @ xc, xc.T @ yc, float(yc @ yc))  # xc.T @ xc: BLAS syrk, half a matmul

    def merge(self, o: "_Comoments | None") -> "_Comoments":
        if o is None or o.n == 0:
            return self
        n = self.n + o.n
        dx, dy, f = o.mx - self.mx, o.my - self.my, self.n * o.n / n
        return _Comoments(n, self.mx + dx * (o.n / n), self.my + dy * (o.n / n), self.cxx + o.cxx + f * np.outer(dx, dx),
                          self.cxy + o.cxy + f * dx * dy, self.syy + o.syy + f * dy * dy)

    def r2(self, w: np.ndarray, b: float) -> float:
        """R^2 of x @ w + b on the data summarised here (scikit-learn's r2_score)."""
        if self.n == 0 or self.syy <= 0:
            return float("nan")
        off = self.my - self.mx @ w - b  # mean residual
        sse = self.syy - 2 * w @ self.cxy + w @ self.cxx @ w + self.n * off**2
        return float(1 - sse / self.syy)


def _fit_ridge(plan: _Plan, cfg: ProbeConfig) -> tuple[dict, dict[str, ProbeResult], dict]:
    acc: dict[tuple[str, bool], _Comoments] = {}
    stream = plan.reader(plan.sites, np.float64, cfg.num_workers)
    for xs, y, test in tqdm(stream(), total=len(plan.units(plan.sites)), desc=f"ridge ({len(plan.sites)} sites)",
                            unit="block", disable=not cfg.progress):
        for split in (False, True):
            sel = test == split
            if sel.any():
                for s, x in zip(plan.sites, xs):
                    c = _Comoments.of(x[sel], y[sel])
                    acc[s.hook, split] = acc[s.hook, split].merge(c) if (s.hook, split) in acc else c
    fitted, results = {}, {}
    for s in plan.sites:
        train, test = acc.get((s.hook, False)), acc.get((s.hook, True))
        if train is None or train.n < 2:
            raise ConfigError(f"Target '{plan.target.name}' labels fewer than 2 training positions; nothing to fit.")
        A = train.cxx + cfg.alpha * np.eye(s.n_features)
        if cfg.alpha > 0:
            w = np.linalg.solve(A, train.cxy)
        else:  # least squares; the minimum-norm solution when X^T X is singular
            w = np.linalg.lstsq(A, train.cxy, rcond=None)[0]
        b = train.my - train.mx @ w
        fitted[s.hook] = (w[:, None], np.array([b]))
        results[s.hook] = ProbeResult(s.hook, s.layer, train.r2(w, b), test.r2(w, b) if test else float("nan"),
                                      train.n, test.n if test else 0, 0.0, 0, 0, True)
    return fitted, results, {}


# --- logistic ------------------------------------------------------------------------

Blocks = Callable[[torch.Tensor], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


def _block_len(n_sites: int, width: int) -> int:
    return max(256, _BLOCK_ELEMS // max(1, n_sites * width))


def _memory_blocks(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, width: int) -> Blocks:
    """Blocks of data gathered in memory: X (site, n, F), y (n,) class index, w (n,) sample weight."""
    def blocks(idx: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        every = len(idx) == X.shape[0]
        step = _block_len(len(idx), width)
        for a in range(0, X.shape[1], step):
            xb = X[:, a:a + step] if every else X[idx, a:a + step]
            yield xb, y[a:a + step], w[a:a + step]
    return blocks


def _stream_blocks(plan: _Plan, group: list[TokenSite], split: bool, device: str, class_w: torch.Tensor,
                   width: int, num_workers: int) -> Blocks:
    """Blocks read from the store at each call, only the sites asked for."""
    def blocks(idx: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        sites = [group[i] for i in idx.tolist()]
        step = _block_len(len(sites), width)
        for xs, y, test in plan.reader(sites, np.float32, num_workers)():
            sel = test == split
            X = torch.from_numpy(np.stack([x[sel] for x in xs])).to(device)
            yt = torch.from_numpy(y[sel]).to(device)
            for a in range(0, len(yt), step):
                yield X[:, a:a + step], yt[a:a + step], class_w[yt[a:a + step]]
    return blocks


def _loss_grad(blocks: Blocks, idx: torch.Tensor, theta: torch.Tensor, F: int, C: int, lam: float, sw_sum: float,
               weighted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's multinomial objective and its gradient, per site: f (S,) float64, g (S, P)."""
    S = theta.shape[0]
    W, b = theta[:, : F * C].view(S, F, C), theta[:, F * C:]
    f = torch.zeros(S, dtype=torch.float64, device=theta.device)
    gWt, gb = torch.zeros(S, C, F, device=theta.device), torch.zeros_like(b)  # gWt: (S, C, F), as P^T X
    for X, y, w in blocks(idx):
        Z = torch.log_softmax(torch.baddbmm(b[:, None, :], X, W), -1)  # (S, n, C) log-probabilities
        yi = y[None, :, None].expand(S, -1, 1)
        ll = Z.gather(-1, yi)[..., 0]  # (S, n)
        f -= (ll * w if weighted else ll).double().sum(1)
        P = Z.exp_()  # softmax, in place
        P.scatter_add_(-1, yi, torch.full(yi.shape, -1.0, device=P.device))  # minus one-hot
        if weighted:
            P.mul_(w[None, :, None])
        gWt.baddbmm_(P.transpose(1, 2), X)
        gb += P.sum(1)
    f = f / sw_sum + 0.5 * lam * W.double().pow(2).sum((1, 2))
    g = torch.cat([(gWt.transpose(1, 2) / sw_sum + lam * W).reshape(S, -1), gb / sw_sum], 1)
    return f, g


def _lbfgs(fg: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
           max_iter: int, tol: float, bar: Any, m: int = 10, maxls: int = 20
           ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """L-BFGS over a batch of independent problems x (S, P): per-problem history, step
    and stopping (max |g| <= tol, scikit-learn's gtol; or no decrease of f, its ftol),
    backtracking Armijo line search. fg(x_sub, idx) evaluates only the problems in idx."""
    S, P = x.shape
    dev = x.device
    f, g = fg(x, torch.arange(S, device=dev))
    # ring buffer of the last m (s, y) pairs, shared slot order; rho == 0 marks a slot to skip
    hs, hy = torch.zeros(S, m, P, device=dev), torch.zeros(S, m, P, device=dev)
    rho = torch.zeros(S, m, dtype=torch.float64, device=dev)
    gamma = torch.zeros(S, dtype=torch.float64, device=dev)  # s.y / y.y of the newest pair; 0: none yet
    n_iter = np.zeros(S, np.int64)
    converged = (g.abs().amax(1) <= tol).cpu().numpy()
    active = ~converged
    for it in range(max_iter):
        a_np = np.flatnonzero(active)
        if len(a_np) == 0:
            break
        every = len(a_np) == S  # then index with views, not copies
        a = torch.from_numpy(a_np).to(dev)
        pick = (lambda t: t) if every else (lambda t: t[a])
        xa, fa, ga = pick(x), pick(f), pick(g)
        order = [(it - 1 - i) % m for i in range(m)]  # newest first
        p = -_two_loop(ga, pick(hs), pick(hy), pick(rho), pick(gamma), order)
        gp = torch.linalg.vecdot(ga, p).double()
        fresh = pick(gamma) == 0
        bad = gp >= 0  # not a descent direction: forget the history, steepest descent
        if bad.any():
            p[bad], gp[bad] = -ga[bad], -(ga[bad].double() ** 2).sum(1)
            fresh = fresh | bad
            rho[a[bad]], gamma[a[bad]] = 0, 0
        t = torch.where(fresh, torch.clamp(1 / torch.linalg.vector_norm(ga, dim=1).double(), max=1.0),
                        torch.ones_like(gp))
        xn = torch.addcmul(xa, t[:, None].float(), p)
        fn, gn = fg(xn, a)
        for _ in range(maxls):
            ok = fn <= fa + 1e-4 * t * gp
            if ok.all():
                break
            j = torch.nonzero(~ok)[:, 0]
            t[j] *= 0.5
            xn[j] = xa[j] + t[j, None].float() * p[j]
            fn[j], gn[j] = fg(xn[j], a[j])
        ok = fn <= fa + 1e-4 * t * gp
        sv, yv = xn - xa, gn - ga
        sy, yy = torch.linalg.vecdot(sv, yv).double(), torch.linalg.vecdot(yv, yv).double()
        upd = ok & (sy > 1e-10 * yy)
        k = it % m
        hs[a, k], hy[a, k] = sv, yv
        rho[a, k] = torch.where(upd, 1 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        gamma[a] = torch.where(upd, sy / yy.clamp_min(1e-300), pick(gamma))
        flat = (fa - fn) <= 64 * np.finfo(float).eps * torch.clamp(torch.maximum(fa.abs(), fn.abs()), min=1.0)
        stop = (ok & ((torch.linalg.vector_norm(gn, float("inf"), dim=1) <= tol) | flat)).cpu().numpy()
        okn = ok.cpu().numpy()
        if every and okn.all():
            x, f, g = xn, fn, gn
        else:
            keep = torch.from_numpy(okn).to(dev)
            x[a[keep]], f[a[keep]], g[a[keep]] = xn[keep], fn[keep], gn[keep]
        n_iter[a_np] += 1
        converged[a_np[stop]] = True
        active[a_np[stop | ~okn]] = False  # a failed line search ends that problem
        bar.update(1)
        bar.set_postfix(active=int(active.sum()))
    return x, n_iter, converged


def _two_loop(g: torch.Tensor, hs: torch.Tensor, hy: torch.Tensor, rho: torch.Tensor, gamma: torch.Tensor,
              order: Sequence[int]) -> torch.Tensor:
    """H g by the L-BFGS two-loop recursion over histories hs, hy (S, slot, P), slots in
    ``order`` newest first. The recursion runs on (slot, slot) dot-product matrices, so the
    big (S, slot, P) tensors are read by a handful of bmm's rather than 4m elementwise passes."""
    Sg = torch.bmm(hs, g[:, :, None])[..., 0].double()  # (S, m): s_i . g
    Yg = torch.bmm(hy, g[:, :, None])[..., 0].double()
    SY = torch.bmm(hs, hy.transpose(1, 2)).double()  # (S, m, m): s_i . y_j
    YY = torch.bmm(hy, hy.transpose(1, 2)).double()
    alpha = torch.zeros_like(Sg)
    for i in order:  # q = g - sum_j alpha_j y_j over the newer slots j
        alpha[:, i] = rho[:, i] * (Sg[:, i] - (alpha * SY[:, i]).sum(1))
    gam = torch.where(gamma > 0, gamma, torch.ones_like(gamma))
    cy, cs = -gam[:, None] * alpha, torch.zeros_like(alpha)  # r = gam g + Y cy + S cs
    for i in reversed(order):
        yr = gam * Yg[:, i] + (cy * YY[:, i]).sum(1) + (cs * SY[:, :, i]).sum(1)
        cs[:, i] = alpha[:, i] - rho[:, i] * yr
    r = torch.bmm(cy[:, None].float(), hy)[:, 0] + torch.bmm(cs[:, None].float(), hs)[:, 0]
    return r.add_(g * gam[:, None].float())


def _fit_logistic(plan: _Plan, cfg: ProbeConfig, device: str) -> tuple[dict, dict[str, ProbeResult], dict]:
    cp = class_plan(plan.store, plan.target, plan.test_rows, plan.skip_bos, cfg.max_classes, cfg.class_weight)
    plan.classes, plan.class_w = cp.classes, cp.class_w
    C, n_split = len(plan.classes), {False: cp.n_train, True: cp.n_test}
    class_w = torch.as_tensor(plan.class_w, dtype=torch.float32, device=device)
    sw_sum = cp.sw_sum
    lam = 1.0 / (cfg.C * sw_sum)  # scikit-learn's l2_reg_strength
    weighted = cfg.class_weight is not None
    need = sum(n_split.values()) * sum(s.n_features for s in plan.sites) * 4
    in_memory = need <= cfg.max_memory_gb * 2**30
    notes = {"n_classes": C, "n_train_dropped": cp.n_train_dropped, "n_test_unseen": cp.n_test_unseen,
             "data": "memory" if in_memory else "stream", "device": device, "gathered_bytes": need if in_memory else 0}
    groups = _groups(plan.sites)
    data: dict[int, dict[bool, Blocks]] = {}
    if in_memory:
        data = _gather(plan, groups, n_split, class_w, C, device, cfg)
    else:
        for gi, group in enumerate(groups):
            width = C + group[0].n_features
            data[gi] = {split: _stream_blocks(plan, group, split, device, class_w, width, cfg.num_workers)
                        for split in (False, True)}
    fitted, results = {}, {}
    for gi, group in enumerate(groups):
        F, S = group[0].n_features, len(group)
        train, test = data[gi][False], data[gi][True]
        theta = torch.zeros(S, F * C + C, device=device)
        # softmax of confident probes underflows to subnormal floats, which x86 CPUs handle ~100x slower
        flush = device == "cpu" and torch.set_flush_denormal(True)
        try:
            with tqdm(total=cfg.max_iter, desc=f"logistic L-BFGS ({S} sites, {C} classes)", unit="iter",
                      disable=not cfg.progress) as bar:
                theta, n_iter, conv = _lbfgs(lambda x, idx: _loss_grad(train, idx, x, F, C, lam, sw_sum, weighted),
                                             theta, cfg.max_iter, cfg.tol, bar)
        finally:
            if flush:
                torch.set_flush_denormal(False)
        every = torch.arange(S, device=device)
        acc_train = _correct(train, every, theta, F, C) / max(n_split[False], 1)
        acc_test = (_correct(test, every, theta, F, C) / n_split[True] if n_split[True] else np.full(S, np.nan))
        base = cp.majority_test / n_split[True] if n_split[True] else float("nan")
        for i, s in enumerate(group):
            th = theta[i].double().cpu().numpy()
            fitted[s.hook] = (th[: F * C].reshape(F, C), th[F * C:])
            results[s.hook] = ProbeResult(s.hook, s.layer, float(acc_train[i]), float(acc_test[i]), n_split[False],
                                          n_split[True], base, C, int(n_iter[i]), bool(conv[i]))
    return fitted, {s.hook: results[s.hook] for s in plan.sites}, notes


def _gather(plan: _Plan, groups: list[list[TokenSite]], n_split: dict[bool, int], class_w: torch.Tensor, C: int,
            device: str, cfg: ProbeConfig) -> dict[int, dict[bool, Blocks]]:
    """One pass over the store: every site's kept positions, standardised, into (site, n, F)
    float32 tensors per group and split, on ``device``."""
    where = {s.hook: (gi, i) for gi, g in enumerate(groups) for i, s in enumerate(g)}
    X = {gi: {sp: torch.empty(len(g), n_split[sp], g[0].n_features, device=device) for sp in (False, True)}
         for gi, g in enumerate(groups)}
    y = {sp: torch.empty(n_split[sp], dtype=torch.long, device=device) for sp in (False, True)}
    off = {False: 0, True: 0}
    stream = plan.reader(plan.sites, np.float32, cfg.num_workers)
    for xs, yb, test in tqdm(stream(), total=len(plan.units(plan.sites)), desc=f"reading {len(plan.sites)} sites",
                             unit="block", disable=not cfg.progress):
        for sp in (False, True):
            sel = test == sp
            o, n = off[sp], int(sel.sum())
            y[sp][o:o + n] = torch.from_numpy(yb[sel])
            for s, x in zip(plan.sites, xs):
                gi, i = where[s.hook]
                X[gi][sp][i, o:o + n] = torch.from_numpy(x[sel])
            off[sp] += n
    if off != n_split:  # the label pass and this pass select the same positions
        raise RuntimeError(f"internal: gathered {off} positions, the label pass counted {n_split}")
    return {gi: {sp: _memory_blocks(X[gi][sp], y[sp], class_w[y[sp]], C + g[0].n_features) for sp in (False, True)}
            for gi, g in enumerate(groups)}


@torch.no_grad()
def _correct(blocks: Blocks, idx: torch.Tensor, theta: torch.Tensor, F: int, C: int) -> np.ndarray:
    S = theta.shape[0]
    W, b = theta[:, : F * C].view(S, F, C), theta[:, F * C:]
    right = torch.zeros(S, dtype=torch.long, device=theta.device)
    for X, y, _ in blocks(idx):
        right += (torch.baddbmm(b[:, None, :], X, W).argmax(-1) == y[None]).sum(1)
    return right.cpu().numpy()


# --- results/probes ---------------------------------------------------------------

def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return f"<{type(v).__name__}>" if isinstance(v, np.ndarray) else str(v)


def _save(store: "ActivationStore", plan: _Plan, cfg: ProbeConfig, report: ProbeReport,
          fitted: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """results/probes/<name>/<hook>/{weight, bias[, classes]}, in raw activation space."""
    scores = report.to_json()
    config = {k: _jsonable(v) for k, v in asdict(cfg).items() if k not in ("progress", "command_line")}
    for s in plan.sites:
        W, b = fitted[s.hook]  # (F, C), (C,) on standardised features
        mean, scale = plan.mean[s.hook], plan.scale[s.hook]
        Wr = W / scale[:, None]
        br = b - (mean / scale) @ W
        attrs = {"kind": report.kind, "target": report.target, "metric": report.metric, "scores": scores[s.hook],
                 "standardized": cfg.standardize, "config": config, "notes": report.notes,
                 "command_line": cfg.command_line or "actstore.probes.fit_probes(...)"}
        base = f"probes/{report.name}/{s.hook}"
        if report.kind == "logistic":
            store.save_result(f"{base}/weight", Wr.reshape(*s.feature_shape, -1), (*s.feature_dims, "class"), attrs)
            store.save_result(f"{base}/bias", br, ("class",))
            store.save_result(f"{base}/classes", plan.classes, ("class",))
        else:
            store.save_result(f"{base}/weight", Wr[:, 0].reshape(s.feature_shape), s.feature_dims, attrs)
            store.save_result(f"{base}/bias", np.asarray(br[0]), ())
            _drop_result(store, f"{base}/classes")  # left by a logistic probe of the same name


def _drop_result(store: "ActivationStore", name: str) -> None:
    import zarr
    if f"results/{name}" in store.group:
        del zarr.open_group(store.path, mode="r+")[f"results/{name}"]
        store.group = zarr.open_group(store.path, mode="r")


def probe_names(store: "ActivationStore", hook: str) -> list[str]:
    """Names of the probe runs saved for ``hook``."""
    return sorted({r.split("/")[1] for r in store.results()
                   if r.startswith("probes/") and r.endswith(f"/{hook}/weight") and r.count("/") == 3})


def load_probe(store: "ActivationStore", hook: str, name: str | None = None) -> Probe:
    """The probe saved for ``hook`` by the run ``name`` (optional when there is only one)."""
    store.site(hook)
    names = probe_names(store, hook)
    if not names:
        raise StoreNotFoundError(f"Store '{store.path}' has no probe for {hook}; fit one with "
                                 f"`actstore probe {store.path} --sites {hook} --target ...`.")
    if name is None:
        if len(names) > 1:
            raise ConfigError(f"Store '{store.path}' holds probes {', '.join(names)} for {hook}; pass name=... to pick one.")
        name = names[0]
    elif name not in names:
        raise StoreNotFoundError(f"Store '{store.path}' has no probe '{name}' for {hook}; it has: {', '.join(names)}.")
    base = f"probes/{name}/{hook}"
    w = store.load_result(f"{base}/weight")
    attrs = dict(w.attrs)
    classes = np.asarray(store.load_result(f"{base}/classes")[...]) if attrs["kind"] == "logistic" else None
    return Probe(hook, name, attrs["kind"], np.asarray(w[...]), np.asarray(store.load_result(f"{base}/bias")[...]),
                 classes, attrs)
