"""Metrics of patched runs: the user's (a TransformerLens metric, a batched metric,
:class:`LogitDiff`) and :class:`Metrics`, how a sweep evaluates them on many variants at
once, computing only the logits they read."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float

from ..errors import ConfigError

__all__ = ["BatchedMetric", "batched_metric", "LogitDiff", "Metrics", "MetricFn"]

MetricFn = Callable[[Float[torch.Tensor, "batch pos d_vocab"]], torch.Tensor]


@runtime_checkable
class BatchedMetric(Protocol):
    """A metric evaluated on many patched variants at once.

    ``batched(logits)`` takes (variant, batch, pos, vocab) logits and returns (variant,)
    under ``reduce='scalar'``, (variant, batch) otherwise. If ``positions`` and
    ``token_ids`` are both set (not None), the logits it gets hold only those positions
    and vocabulary columns, in that order (``logits[..., i, j]`` is the logit of token
    ``token_ids[j]`` at position ``positions[i]``; negative positions count from the
    end), and only those are computed."""

    positions: Sequence[int] | None
    token_ids: Sequence[int] | None

    def batched(self, logits: Float[torch.Tensor, "variant batch pos vocab"]) -> torch.Tensor: ...


class _BatchedFn:
    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        positions: Sequence[int] | None,
        token_ids: Sequence[int] | None,
    ):
        self.batched = fn
        self.positions: Sequence[int] | None = (
            None if positions is None else tuple(int(p) for p in positions)
        )
        self.token_ids: Sequence[int] | None = (
            None if token_ids is None else tuple(int(t) for t in token_ids)
        )

    def __call__(self, logits: Float[torch.Tensor, "batch pos d_vocab"]) -> torch.Tensor:
        if self.positions is not None:
            logits = logits[:, list(self.positions)]
        if self.token_ids is not None:
            logits = logits[..., list(self.token_ids)]
        return self.batched(logits[None])[0]


def batched_metric(
    fn: Callable[[torch.Tensor], torch.Tensor],
    positions: Sequence[int] | None = None,
    token_ids: Sequence[int] | None = None,
) -> BatchedMetric:
    """Make ``fn`` ((variant, batch, pos, vocab) logits -> (variant,) or (variant, batch))
    a batched metric. With ``positions`` and ``token_ids``, ``fn`` sees only those
    logits. The result also works as a plain TransformerLens metric on one run's logits."""
    return _BatchedFn(fn, positions, token_ids)


class LogitDiff:
    """Logit difference ``logit[answer] - logit[wrong]`` at position ``pos`` (default the
    last), mean over the batch (``per_example=True``: one value per prompt, for
    ``reduce='mean'`` or ``'none'``).

    With ``clean`` and ``corrupted`` baselines (the logit differences of the unpatched
    runs, one per prompt or one number), it is normalised: ``(ld - corrupted) / (clean -
    corrupted)``, 0 = the corrupted run, 1 = the clean run (batch means first when not
    per example). :meth:`normalised` computes the baselines from the two runs' logits.

    A batched metric that reads only ``pos`` and the answer tokens; also a plain metric
    (``metric(logits)``) for ``transformer_lens.patching``."""

    def __init__(
        self,
        answer: int | Sequence[int] | torch.Tensor,
        wrong: int | Sequence[int] | torch.Tensor,
        pos: int | Sequence[int] | torch.Tensor = -1,
        *,
        per_example: bool = False,
        clean: float | Sequence[float] | torch.Tensor | None = None,
        corrupted: float | Sequence[float] | torch.Tensor | None = None,
    ):
        self.answer = torch.as_tensor(answer, dtype=torch.long).reshape(-1)
        self.wrong = torch.as_tensor(wrong, dtype=torch.long).reshape(-1)
        self.pos = torch.as_tensor(pos, dtype=torch.long).reshape(-1)
        n = max(len(self.answer), len(self.wrong), len(self.pos))
        if any(len(t) not in (1, n) for t in (self.answer, self.wrong, self.pos)):
            raise ConfigError(
                f"LogitDiff: answer ({len(self.answer)}), wrong ({len(self.wrong)}) and pos "
                f"({len(self.pos)}) must each hold one value, or one per prompt."
            )
        if (clean is None) != (corrupted is None):
            raise ConfigError(
                "LogitDiff: pass both clean and corrupted baselines to normalise, or neither."
            )
        self.per_example = per_example
        self.clean = (
            None if clean is None else torch.as_tensor(clean, dtype=torch.float32).reshape(-1)
        )
        self.corrupted = (
            None
            if corrupted is None
            else torch.as_tensor(corrupted, dtype=torch.float32).reshape(-1)
        )
        self.positions = tuple(sorted(set(self.pos.tolist())))
        self.token_ids = tuple(sorted(set(self.answer.tolist()) | set(self.wrong.tolist())))
        self._pidx = torch.tensor([self.positions.index(p) for p in self.pos.tolist()])
        self._aidx = torch.tensor([self.token_ids.index(t) for t in self.answer.tolist()])
        self._widx = torch.tensor([self.token_ids.index(t) for t in self.wrong.tolist()])

    def normalised(
        self,
        clean_logits: Float[torch.Tensor, "batch pos d_vocab"],
        corrupted_logits: Float[torch.Tensor, "batch pos d_vocab"],
    ) -> LogitDiff:
        """The same metric, normalised by the logit differences of these two runs."""
        raw = LogitDiff(self.answer, self.wrong, self.pos, per_example=True)
        return LogitDiff(
            self.answer,
            self.wrong,
            self.pos,
            per_example=self.per_example,
            clean=raw(clean_logits).detach().cpu(),
            corrupted=raw(corrupted_logits).detach().cpu(),
        )

    @property
    def is_normalised(self) -> bool:
        return self.clean is not None

    def raw(
        self, logits: Float[torch.Tensor, "... batch pos vocab"]
    ) -> Float[torch.Tensor, "... batch"]:
        """Per-prompt logit differences from logits restricted to ``positions`` x ``token_ids``."""
        batch = logits.shape[-3]
        b = torch.arange(batch, device=logits.device)
        p, a, w = (t.to(logits.device).expand(batch) for t in (self._pidx, self._aidx, self._widx))
        return logits[..., b, p, a] - logits[..., b, p, w]

    def batched(self, logits: Float[torch.Tensor, "variant batch pos vocab"]) -> torch.Tensor:
        ld = self.raw(logits)  # (variant, batch)
        if self.clean is None or self.corrupted is None:
            return ld if self.per_example else ld.mean(-1)
        clean, corr = self.clean.to(ld.device), self.corrupted.to(ld.device)
        if self.per_example:
            return (ld - corr) / (clean - corr)
        return (ld.mean(-1) - corr.mean()) / (clean.mean() - corr.mean())

    def __call__(self, logits: Float[torch.Tensor, "batch pos d_vocab"]) -> torch.Tensor:
        sel = logits[:, list(self.positions)][:, :, list(self.token_ids)]
        return self.batched(sel[None])[0]

    def __repr__(self) -> str:
        kind = "normalised " if self.is_normalised else ""
        return f"LogitDiff({kind}answer={self.answer.tolist()}, wrong={self.wrong.tolist()}, pos={self.pos.tolist()})"


class Metrics:
    """The metrics of one sweep, evaluated on many variants at once.

    A *plain* metric maps the logits of one run, (batch, pos, d_vocab), to a scalar or
    a (batch,) tensor, as in transformer_lens.patching; it is called once per variant.
    A *batched* metric has ``batched(logits)`` taking (variant, batch, pos, vocab) and
    returning (variant,) or (variant, batch); when it declares ``positions`` and
    ``token_ids``, its logits are only those positions and vocabulary columns, in that
    order, and only those are computed."""

    #: how the caller asks for one scalar, or for per-example values (named in errors)
    MODES = ("reduce='scalar'", "reduce='mean' or reduce='none'")

    def __init__(
        self,
        metrics: Mapping[str, MetricFn],
        per_example: bool,
        batch: int,
        n_pos: int,
        modes: tuple[str, str] = MODES,
    ):
        self.fns = dict(metrics)
        self.modes = modes
        self.per_example = per_example
        self.batch = batch
        self.n_pos = n_pos
        sparse = [
            getattr(m, "positions", None) is not None
            and getattr(m, "token_ids", None) is not None
            and callable(getattr(m, "batched", None))
            for m in self.fns.values()
        ]
        self.restricted = all(sparse)
        for name, m in self.fns.items():
            bad = [p for p in (getattr(m, "positions", None) or ()) if not -n_pos <= p < n_pos]
            if bad:
                raise ConfigError(
                    f"Metric {name!r} reads positions {bad}, outside prompts of {n_pos} tokens."
                )
        if self.restricted:
            pos = [tuple(p % n_pos for p in m.positions) for m in self.fns.values()]  # type: ignore[attr-defined]
            tok = [tuple(int(t) for t in m.token_ids) for m in self.fns.values()]  # type: ignore[attr-defined]
            self.positions = sorted(set().union(*pos))
            self.token_ids = sorted(set().union(*tok))
            self._pidx = [[self.positions.index(p) for p in ps] for ps in pos]
            self._tidx = [[self.token_ids.index(t) for t in ts] for ts in tok]
        else:
            self.positions = list(range(n_pos))
            self.token_ids = []  # every token

    @property
    def end(self) -> int:
        """One past the last position any metric reads."""
        return max(self.positions) + 1 if self.restricted else self.n_pos

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, pos, d_vocab) full logits -> what ``evaluate`` takes for one variant."""
        if not self.restricted:
            return logits
        return logits[:, self.positions][:, :, self.token_ids]

    def evaluate(self, logits: torch.Tensor) -> torch.Tensor:
        """(variant * batch, pos', vocab') logits -> (variant, metric[, batch]) float32."""
        n_var = logits.shape[0] // self.batch
        per_var = logits.view(n_var, self.batch, *logits.shape[1:])
        outs = []
        for i, (name, fn) in enumerate(self.fns.items()):
            if callable(getattr(fn, "batched", None)):
                sel = per_var
                if self.restricted:
                    sel = per_var[:, :, self._pidx[i]][..., self._tidx[i]]
                elif (
                    getattr(fn, "positions", None) is not None
                    or getattr(fn, "token_ids", None) is not None
                ):
                    sel = select_declared(per_var, fn, self.n_pos)
                out = torch.as_tensor(fn.batched(sel))  # type: ignore[attr-defined]
                self.check_shape(name, out, lead=(n_var,))
            else:
                vals = [torch.as_tensor(fn(per_var[v])) for v in range(n_var)]
                for val in vals:
                    self.check_shape(name, val, lead=())
                out = torch.stack(vals)
            outs.append(out.detach().float())
        return torch.stack(outs, dim=1)

    def check_shape(self, name: str, out: torch.Tensor, lead: tuple[int, ...]) -> None:
        want = lead + ((self.batch,) if self.per_example else ())
        if tuple(out.shape) == want:
            return
        if self.per_example:
            raise ConfigError(
                f"patching_metric {name!r} must return a [batch] tensor of length {self.batch} "
                f"under {self.modes[1]} (one value per variant for a batched metric: "
                f"shape {want}), got shape {tuple(out.shape)}."
            )
        raise ConfigError(
            f"patching_metric {name!r} must return a scalar under {self.modes[0]} (shape {want} "
            f"for a batched metric), got shape {tuple(out.shape)}; return a [batch] tensor and "
            f"pass {self.modes[1]} to keep per-example values."
        )


def select_declared(per_var: torch.Tensor, fn: Any, n_pos: int) -> torch.Tensor:
    if fn.positions is not None:
        per_var = per_var[:, :, [p % n_pos for p in fn.positions]]
    if fn.token_ids is not None:
        per_var = per_var[..., [int(t) for t in fn.token_ids]]
    return per_var
