"""Metrics for circuit discovery: callables ``logits (batch, pos, vocab) -> (batch,)``,
one value per prompt pair, differentiable in the logits (edge attribution takes their
gradient; exact edge patching and faithfulness evaluate them).

:func:`circuit_metric` builds the standard ones:

- ``"logit-diff"``: ``logit[answer] - logit[wrong]`` at ``position`` (higher = more like
  the clean run); :class:`actstore.patching.LogitDiff` per pair.
- ``"norm-logit-diff"``: the same, normalised by the mean clean and corrupted logit
  differences, ``(ld - mean corrupted) / (mean clean - mean corrupted)``: the clean
  run scores 1 on average, the corrupted run 0, and the mean over pairs is exactly the
  normalised mean logit difference (per-pair baselines would divide by pairs whose two
  prompts barely differ).
- ``"kl"``: ``KL(p_clean || p_patched)`` of the next-token distributions at ``position``
  (0 for the clean run). Lower is better: ``higher_is_better`` is False, so an edge
  that restores the clean behaviour has a *negative* score (its patch lowers the KL);
  rank edges by ``-score`` (or ``abs``) and read faithfulness as a fraction of the
  corrupted run's KL that the circuit removes.

A user function ``logits -> (batch,)`` passes through, checked (shape, finite values)
on every call. Every metric exposes ``positions`` (the positions it reads, so a forward
may skip computing the others' logits) and ``higher_is_better``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from jaxtyping import Float

from ..errors import ConfigError
from ..patching.metrics import LogitDiff

__all__ = ["CircuitMetric", "circuit_metric", "check_kind", "KINDS"]

KINDS = ("logit-diff", "norm-logit-diff", "kl")
Tokens = int | Sequence[int] | torch.Tensor


class CircuitMetric:
    """A per-pair metric on one run's logits: ``metric(logits) -> (batch,)``.

    ``fn`` maps (batch, pos, vocab) logits to (batch,); every call checks the shape and
    that the values are finite. ``positions`` are the positions ``fn`` reads (None: any),
    ``higher_is_better`` says which way a helpful patch moves it. ``part(start, stop)``,
    where given, makes ``fn`` for pairs ``start`` to ``stop - 1`` only (a metric with one
    answer per pair, scored a chunk of pairs at a time): see :meth:`for_pairs`."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        name: str,
        *,
        positions: Sequence[int] | None = None,
        higher_is_better: bool = True,
        part: Callable[[int, int], Callable[[torch.Tensor], torch.Tensor]] | None = None,
    ):
        self.fn = fn
        self.name = name
        self.positions = None if positions is None else tuple(int(p) for p in positions)
        self.higher_is_better = higher_is_better
        self._part = part

    @property
    def splits(self) -> bool:
        """Whether the metric can score a chunk of the pairs (:meth:`for_pairs`)."""
        return self._part is not None

    def for_pairs(self, start: int, stop: int) -> CircuitMetric:
        """The metric of pairs ``start`` to ``stop - 1``, for logits of those pairs only.
        A user function splits if it takes a ``pairs`` keyword (it is given
        ``pairs=slice(start, stop)``); one that does not must see every pair at once."""
        if self._part is None:
            raise ConfigError(
                f"metric {self.name!r} must see every pair at once, but the pairs are scored in chunks "
                "to fit memory; give the function a `pairs` keyword (a slice of pair indices: the "
                "chunk it is called on), or pass a larger memory_budget."
            )
        return CircuitMetric(
            self._part(start, stop),
            self.name,
            positions=self.positions,
            higher_is_better=self.higher_is_better,
            part=None,
        )

    def __call__(
        self, logits: Float[torch.Tensor, "batch pos d_vocab"]
    ) -> Float[torch.Tensor, " batch"]:
        if logits.ndim != 3:
            raise ConfigError(
                f"metric {self.name!r} takes logits of shape (batch, pos, vocab), got {tuple(logits.shape)}."
            )
        n_pos = logits.shape[1]
        bad = [p for p in (self.positions or ()) if not -n_pos <= p < n_pos]
        if bad:
            raise ConfigError(
                f"metric {self.name!r} reads positions {bad}, outside prompts of {n_pos} tokens; "
                "pass position= inside the prompt (negative counts from the end)."
            )
        out = torch.as_tensor(self.fn(logits))
        if tuple(out.shape) != (logits.shape[0],):
            raise ConfigError(
                f"metric {self.name!r} must return one value per prompt pair, shape "
                f"({logits.shape[0]},), got {tuple(out.shape)}; reduce over everything but the batch."
            )
        if not bool(torch.isfinite(out).all()):
            raise ConfigError(
                f"metric {self.name!r} returned non-finite values {out.detach().cpu().tolist()[:4]}; "
                "check the logits (a float16 overflow?) and the metric's divisions."
            )
        return out

    def __repr__(self) -> str:
        return f"CircuitMetric({self.name!r}, positions={self.positions}, higher_is_better={self.higher_is_better})"


def check_kind(kind: str, functions: bool = True) -> None:
    """ConfigError for a kind that is none of KINDS; ``functions``: the caller also takes a
    function (circuit_metric does, `actstore circuit`'s --metric does not), and the message
    says so."""
    if kind not in KINDS:
        raise ConfigError(
            f"unknown circuit metric {kind!r}; use one of {', '.join(KINDS)}"
            + (", or pass a function logits (batch, pos, vocab) -> (batch,)." if functions else ".")
        )


def _check_logits(name: str, logits: torch.Tensor | None, kind: str) -> torch.Tensor:
    if logits is None:
        raise ConfigError(
            f"circuit_metric({kind!r}) needs {name}=: the {name.split('_')[0]} run's logits "
            "(batch, pos, vocab), e.g. model(clean_tokens)."
        )
    logits = torch.as_tensor(logits).detach()
    if logits.ndim != 3:
        raise ConfigError(f"{name} must have shape (batch, pos, vocab), got {tuple(logits.shape)}.")
    if not bool(torch.isfinite(logits).all()):
        raise ConfigError(f"{name} holds non-finite values; rerun the model in float32.")
    return logits


def _log_probs_at(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(batch, vocab) log-probabilities at each prompt's position."""
    b = torch.arange(logits.shape[0], device=logits.device)
    return torch.log_softmax(logits[b, pos.to(logits.device).expand(logits.shape[0])], dim=-1)


def circuit_metric(
    kind: str | Callable[[torch.Tensor], torch.Tensor],
    *,
    answer: Tokens | None = None,
    wrong: Tokens | None = None,
    position: int | Sequence[int] = -1,
    clean_logits: torch.Tensor | None = None,
    corrupted_logits: torch.Tensor | None = None,
) -> CircuitMetric:
    """A per-pair circuit metric (see the module docstring for the kinds).

    Args:
        kind: "logit-diff", "norm-logit-diff", "kl", or a function logits -> (batch,).
        answer: the answer's token id, one or one per pair (logit-diff kinds).
        wrong: the wrong answer's token id, one or one per pair (logit-diff kinds).
        position: the position the metric reads, one or one per pair (default the last).
        clean_logits: (batch, pos, vocab) logits of the clean run ("norm-logit-diff", "kl").
        corrupted_logits: (batch, pos, vocab) logits of the corrupted run ("norm-logit-diff").
    """
    if callable(kind) and not isinstance(kind, str):
        if isinstance(kind, CircuitMetric):
            return kind
        fn: Callable[..., torch.Tensor] = kind
        part = (lambda a, b: partial(fn, pairs=slice(a, b))) if _takes_pairs(fn) else None
        return CircuitMetric(fn, getattr(fn, "__name__", "metric"), part=part)
    check_kind(kind)
    pos = torch.as_tensor(position, dtype=torch.long).reshape(-1)
    if kind == "kl":
        clean = _check_logits("clean_logits", clean_logits, kind)
        if len(pos) not in (1, clean.shape[0]):
            raise ConfigError(
                f"position holds {len(pos)} values for {clean.shape[0]} pairs; give one, or one per pair."
            )
        ref = _log_probs_at(clean.float(), pos)  # (batch, vocab)

        def kl(a: int, b: int) -> Callable[[torch.Tensor], torch.Tensor]:
            r_ab, p_ab = ref[a:b], _pairs(pos, a, b)

            def fn(logits: torch.Tensor) -> torch.Tensor:
                if logits.shape[0] != r_ab.shape[0]:
                    raise ConfigError(
                        f"the kl metric was built for {r_ab.shape[0]} pairs, got logits of "
                        f"{logits.shape[0]}; use metric.for_pairs(start, stop) for a chunk of pairs."
                    )
                r = r_ab.to(
                    device=logits.device, dtype=torch.promote_types(logits.dtype, torch.float32)
                )
                return (r.exp() * (r - _log_probs_at(logits, p_ab).to(r.dtype))).sum(-1)

            return fn

        return CircuitMetric(
            kl(0, len(ref)), "kl", positions=pos.tolist(), higher_is_better=False, part=kl
        )

    if answer is None or wrong is None:
        raise ConfigError(
            f"circuit_metric({kind!r}) needs answer= and wrong= token ids (one, or one per pair)."
        )
    a = torch.as_tensor(answer, dtype=torch.long).reshape(-1)
    w = torch.as_tensor(wrong, dtype=torch.long).reshape(-1)
    n = max(len(a), len(w))
    if len(a) not in (1, n) or len(w) not in (1, n):
        raise ConfigError(
            f"answer ({len(a)} ids) and wrong ({len(w)}) must each hold one token id, or one per pair."
        )
    same = torch.nonzero(a.expand(n) == w.expand(n)).flatten().tolist()
    if same:
        raise ConfigError(
            f"answer and wrong are the same token ({int(a.expand(n)[same[0]])}) for pair {same[0]}: its "
            "logit difference is always 0. Give each pair two different tokens."
        )
    raw = LogitDiff(a, w, pos, per_example=True)
    if kind == "logit-diff":
        return CircuitMetric(
            raw,
            "logit-diff",
            positions=pos.tolist(),
            part=lambda i, j: LogitDiff(
                _pairs(a, i, j), _pairs(w, i, j), _pairs(pos, i, j), per_example=True
            ),
        )
    clean = _check_logits("clean_logits", clean_logits, kind)
    corr = _check_logits("corrupted_logits", corrupted_logits, kind)
    c_mean, x_mean = float(raw(clean.float()).mean()), float(raw(corr.float()).mean())
    if not abs(c_mean - x_mean) > 1e-6 * max(1.0, abs(c_mean), abs(x_mean)):
        raise ConfigError(
            f"the clean and corrupted runs have the same mean logit difference ({c_mean:.6g}), so "
            "norm-logit-diff is undefined; use kind 'logit-diff', or pairs whose corruption changes "
            "the answer."
        )

    def norm(i: int, j: int) -> LogitDiff:
        return LogitDiff(
            _pairs(a, i, j),
            _pairs(w, i, j),
            _pairs(pos, i, j),
            per_example=True,
            clean=c_mean,
            corrupted=x_mean,
        )

    return CircuitMetric(norm(0, n), "norm-logit-diff", positions=pos.tolist(), part=norm)


def _pairs(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Pairs a to b - 1 of a per-pair tensor (one value for every pair: itself)."""
    return t if len(t) == 1 else t[a:b]


def _takes_pairs(fn: Callable[..., Any]) -> bool:
    try:
        return "pairs" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
