"""Multinomial logistic regression with scikit-learn's objective, by L-BFGS batched over
sites: every site's parameters in one (site, ...) tensor, each evaluation one batched
matmul, the kept positions gathered in memory when they fit, else streamed. Under
torchrun / accelerate each process holds (or streams) its share of the store and the
loss, gradient and accuracy sums are all-reduced, so every process solves the same
problem and takes the same steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..parallel import Group
from ..store.loader import TokenSite
from .config import ProbeConfig, ProbeResult
from .labels import class_plan
from .plan import Plan
from .plan import groups as site_groups

__all__ = ["fit_logistic"]

_BLOCK_ELEMS = 2**26  # float32 elements of one compute block's logits + features, all sites


Blocks = Callable[[torch.Tensor], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


def _block_len(n_sites: int, width: int) -> int:
    return max(256, _BLOCK_ELEMS // max(1, n_sites * width))


def _memory_blocks(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, width: int) -> Blocks:
    """Blocks of data gathered in memory: X (site, n, F), y (n,) class index, w (n,) sample weight."""

    def blocks(idx: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        every = len(idx) == X.shape[0]
        step = _block_len(len(idx), width)
        for a in range(0, X.shape[1], step):
            xb = X[:, a : a + step] if every else X[idx, a : a + step]
            yield xb, y[a : a + step], w[a : a + step]

    return blocks


def _stream_blocks(
    plan: Plan,
    group: list[TokenSite],
    split: bool,
    device: str,
    class_w: torch.Tensor,
    width: int,
    num_workers: int,
) -> Blocks:
    """Blocks read from the store at each call, only the sites asked for."""

    def blocks(idx: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        sites = [group[i] for i in idx.tolist()]
        step = _block_len(len(sites), width)
        for xs, y, test in plan.reader(sites, np.float32, num_workers)():
            sel = test == split
            X = torch.from_numpy(np.stack([x[sel] for x in xs])).to(device)
            yt = torch.from_numpy(y[sel]).to(device)
            for a in range(0, len(yt), step):
                yield X[:, a : a + step], yt[a : a + step], class_w[yt[a : a + step]]

    return blocks


def _loss_grad(
    blocks: Blocks,
    idx: torch.Tensor,
    theta: torch.Tensor,
    F: int,
    C: int,
    lam: float,
    sw_sum: float,
    weighted: bool,
    procs: Group,
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's multinomial objective and its gradient, per site: f (S,) float64, g (S, P);
    the data terms summed over every process's share."""
    S = theta.shape[0]
    W, b = theta[:, : F * C].view(S, F, C), theta[:, F * C :]
    f = torch.zeros(S, dtype=torch.float64, device=theta.device)
    # gWt: (S, C, F), as P^T X
    gWt, gb = (
        torch.zeros(S, C, F, device=theta.device),
        torch.zeros_like(b),
    )
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
    procs.all_sum(f, "a loss evaluation")
    sums = procs.all_sum(torch.cat([gWt.flatten(1), gb], 1), "a gradient evaluation")
    gWt, gb = sums[:, : F * C].view(S, C, F), sums[:, F * C :]
    f = f / sw_sum + 0.5 * lam * W.double().pow(2).sum((1, 2))
    g = torch.cat([(gWt.transpose(1, 2) / sw_sum + lam * W).reshape(S, -1), gb / sw_sum], 1)
    return f, g


def _lbfgs(
    fg: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    max_iter: int,
    tol: float,
    bar: Any,
    m: int = 10,
    maxls: int = 20,
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
    # s.y / y.y of the newest pair; 0: none yet
    gamma = torch.zeros(S, dtype=torch.float64, device=dev)
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
        t = torch.where(
            fresh,
            torch.clamp(1 / torch.linalg.vector_norm(ga, dim=1).double(), max=1.0),
            torch.ones_like(gp),
        )
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
        flat = (fa - fn) <= 64 * np.finfo(float).eps * torch.clamp(
            torch.maximum(fa.abs(), fn.abs()), min=1.0
        )
        stop = (
            (ok & ((torch.linalg.vector_norm(gn, float("inf"), dim=1) <= tol) | flat)).cpu().numpy()
        )
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


def _two_loop(
    g: torch.Tensor,
    hs: torch.Tensor,
    hy: torch.Tensor,
    rho: torch.Tensor,
    gamma: torch.Tensor,
    order: Sequence[int],
) -> torch.Tensor:
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


def fit_logistic(
    plan: Plan, cfg: ProbeConfig, device: str
) -> tuple[dict, dict[str, ProbeResult], dict]:
    cp = class_plan(
        plan.store, plan.target, plan.test_rows, plan.skip_bos, cfg.max_classes, cfg.class_weight
    )
    plan.classes, plan.class_w = cp.classes, cp.class_w
    C, n_split = len(plan.classes), {False: cp.n_train, True: cp.n_test}
    class_w = torch.as_tensor(plan.class_w, dtype=torch.float32, device=device)
    sw_sum = cp.sw_sum
    lam = 1.0 / (cfg.C * sw_sum)  # scikit-learn's l2_reg_strength
    weighted = cfg.class_weight is not None
    procs = plan.procs
    share = _share_counts(plan) if procs.distributed else n_split  # positions this process holds
    shares = procs.all_gather(share, "the positions were counted")
    if {
        sp: sum(c[sp] for c in shares) for sp in n_split
    } != n_split:  # the shares partition the positions
        raise RuntimeError(
            f"internal: the processes hold {shares} positions, the label pass counted {n_split}"
        )
    width = sum(s.n_features for s in plan.sites) * 4
    # bytes gathered by the process holding the most
    need = max(sum(c.values()) for c in shares) * width
    in_memory = need <= cfg.max_memory_gb * 2**30
    notes = {
        "n_classes": C,
        "n_train_dropped": cp.n_train_dropped,
        "n_test_unseen": cp.n_test_unseen,
        "data": "memory" if in_memory else "stream",
        "device": device,
        "gathered_bytes": sum(n_split.values()) * width if in_memory else 0,
        "processes": procs.world,
    }
    groups = site_groups(plan.sites)
    data: dict[int, dict[bool, Blocks]] = {}
    if in_memory:  # an error reading any process's share is raised on every process
        procs.each(
            lambda: data.update(_gather(plan, groups, share, class_w, C, device, cfg)),
            "reading the store",
        )
    else:
        for gi, group in enumerate(groups):
            width = C + group[0].n_features
            data[gi] = {
                split: _stream_blocks(plan, group, split, device, class_w, width, cfg.num_workers)
                for split in (False, True)
            }
    fitted, results = {}, {}
    for gi, group in enumerate(groups):
        F, S = group[0].n_features, len(group)
        train, test = data[gi][False], data[gi][True]
        theta = torch.zeros(S, F * C + C, device=device)
        # softmax of confident probes underflows to subnormal floats, which x86 CPUs handle ~100x slower
        flush = device == "cpu" and torch.set_flush_denormal(True)
        try:
            with tqdm(
                total=cfg.max_iter,
                desc=f"logistic L-BFGS ({S} sites, {C} classes)",
                unit="iter",
                disable=not (cfg.progress and procs.main),
            ) as bar:
                theta, n_iter, conv = _lbfgs(
                    lambda x, idx: _loss_grad(train, idx, x, F, C, lam, sw_sum, weighted, procs),
                    theta,
                    cfg.max_iter,
                    cfg.tol,
                    bar,
                )
        finally:
            if flush:
                torch.set_flush_denormal(False)
        every = torch.arange(S, device=device)
        acc_train = _correct(train, every, theta, F, C, procs) / max(n_split[False], 1)
        acc_test = (
            _correct(test, every, theta, F, C, procs) / n_split[True]
            if n_split[True]
            else np.full(S, np.nan)
        )
        base = cp.majority_test / n_split[True] if n_split[True] else float("nan")
        for i, s in enumerate(group):
            th = theta[i].double().cpu().numpy()
            fitted[s.hook] = (th[: F * C].reshape(F, C), th[F * C :])
            results[s.hook] = ProbeResult(
                s.hook,
                s.layer,
                float(acc_train[i]),
                float(acc_test[i]),
                n_split[False],
                n_split[True],
                base,
                C,
                int(n_iter[i]),
                bool(conv[i]),
            )
    return fitted, {s.hook: results[s.hook] for s in plan.sites}, notes


def _share_counts(plan: Plan) -> dict[bool, int]:
    """Positions (train, test) of this process's share of the store: a pass over the labels only."""
    n = {False: 0, True: 0}
    for unit in plan.units(plan.sites):
        test = plan.select(unit)[2]
        n[True] += int(test.sum())
        n[False] += len(test) - int(test.sum())
    return n


def _gather(
    plan: Plan,
    groups: list[list[TokenSite]],
    n_split: dict[bool, int],
    class_w: torch.Tensor,
    C: int,
    device: str,
    cfg: ProbeConfig,
) -> dict[int, dict[bool, Blocks]]:
    """One pass over (this process's share of) the store: every site's kept positions,
    standardised, into (site, n, F) float32 tensors per group and split, on ``device``;
    ``n_split``: the positions of the share."""
    where = {s.hook: (gi, i) for gi, g in enumerate(groups) for i, s in enumerate(g)}
    X = {
        gi: {
            sp: torch.empty(len(g), n_split[sp], g[0].n_features, device=device)
            for sp in (False, True)
        }
        for gi, g in enumerate(groups)
    }
    y = {sp: torch.empty(n_split[sp], dtype=torch.long, device=device) for sp in (False, True)}
    off = {False: 0, True: 0}
    for xs, yb, test in plan.read_all(
        np.float32, cfg.num_workers, cfg.progress, f"reading {len(plan.sites)} sites"
    ):
        for sp in (False, True):
            sel = test == sp
            o, n = off[sp], int(sel.sum())
            y[sp][o : o + n] = torch.from_numpy(yb[sel])
            for s, x in zip(plan.sites, xs):
                gi, i = where[s.hook]
                X[gi][sp][i, o : o + n] = torch.from_numpy(x[sel])
            off[sp] += n
    if off != n_split:  # the label pass and this pass select the same positions
        raise RuntimeError(f"internal: gathered {off} positions, the label pass counted {n_split}")
    return {
        gi: {
            sp: _memory_blocks(X[gi][sp], y[sp], class_w[y[sp]], C + g[0].n_features)
            for sp in (False, True)
        }
        for gi, g in enumerate(groups)
    }


@torch.no_grad()
def _correct(
    blocks: Blocks, idx: torch.Tensor, theta: torch.Tensor, F: int, C: int, procs: Group
) -> np.ndarray:
    """Correct predictions per site, over every process's share."""
    S = theta.shape[0]
    W, b = theta[:, : F * C].view(S, F, C), theta[:, F * C :]
    right = torch.zeros(S, dtype=torch.long, device=theta.device)
    for X, y, _ in blocks(idx):
        right += (torch.baddbmm(b[:, None, :], X, W).argmax(-1) == y[None]).sum(1)
    return procs.all_sum(right, "scoring the probes").cpu().numpy()
