"""The gradient pass of attribution patching: the corrupted run once, forward and backward.

One ``run_with_hooks`` of the corrupted prompts with a zero leaf added (in place, as
transformer_lens.patching's setters write their patch) at every swept hook, then one
backward per metric: the activations, d metric / d activation at each hook, and the
metrics' values (the baseline). When the metrics are restricted (batched metrics that
declare their positions and token ids) the run stops before the final LayerNorm and
only the logits they read are decoded. :class:`SharedGradPass` lets several sweeps of
:mod:`actstore.patching.attribution` share one such pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from ..errors import ConfigError
from ..families import adapter_for
from ..model_protocol import HookedModel
from ..models import bridge_dtype
from .metrics import BatchedMetric, Metrics, select_declared

__all__ = ["GradPass", "SharedGradPass"]


def _metric_value(fn: Any, logits: torch.Tensor, n_pos: int) -> torch.Tensor:
    """A metric on one run's full logits, differentiably (plain or batched)."""
    if callable(getattr(fn, "batched", None)) and not callable(fn):
        return fn.batched(select_declared(logits[None], fn, n_pos))[0]
    return torch.as_tensor(fn(logits))


def _stop(act: torch.Tensor, hook: Any) -> torch.Tensor:
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(act)  # run_with_hooks returns act: the residual entering ln_final


def _metric_values(
    model: HookedModel, metrics: Metrics, out: torch.Tensor, n_pos: int
) -> list[torch.Tensor]:
    """Every metric's value from the run's output: the full logits, or (restricted
    metrics) the final residual, of which only the positions and vocabulary columns the
    metrics read are decoded."""
    d_model = int(model.cfg.d_model)
    if not metrics.restricted or out.shape[-1] != d_model or d_model == int(model.cfg.d_vocab):
        return [_metric_value(fn, out, n_pos) for fn in metrics.fns.values()]
    sel = adapter_for(model).logit_columns(model, out[:, metrics.positions], metrics.token_ids)[
        None
    ]
    # restricted: every metric is a BatchedMetric (Metrics checks it)
    return [
        cast(BatchedMetric, fn).batched(sel[:, :, metrics._pidx[i]][..., metrics._tidx[i]])[0]
        for i, fn in enumerate(metrics.fns.values())
    ]


class GradPass:
    """The corrupted run once with a zero leaf added at each hook: the activations,
    d metric / d activation for every metric, and the metric values (the baseline)."""

    def __init__(
        self, model: HookedModel, tokens: torch.Tensor, hooks: Sequence[str], metrics: Metrics
    ):
        self.hooks = sorted(set(hooks))
        self.metric_names = tuple(metrics.fns)
        self.per_example = metrics.per_example
        self.acts: dict[str, torch.Tensor] = {}
        self.grads: dict[str, dict[str, torch.Tensor]] = {}  # metric -> hook -> gradient
        leaves: dict[str, torch.Tensor] = {}

        def attach(name: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
                if name in leaves:
                    raise RuntimeError(
                        f"{name} fired twice in one forward; attribution needs it once."
                    )
                self.acts[name] = act.detach().clone()
                leaves[name] = torch.zeros_like(act, requires_grad=True)
                # added in place, as transformer_lens.patching's setters write their patch: a tensor
                # the model aliases to this one sees it too (the bridge's hook_resid_mid is ln2's input,
                # which the block also adds the MLP's output to), so the gradient is the patch's
                return act.add_(leaves[name])

            return fn

        n_pos = int(tokens.shape[1])
        hooks_ = [(h, attach(h)) for h in self.hooks]
        # stop before the final LayerNorm: only the logits the metrics read are computed
        if metrics.restricted:
            hooks_.append(("ln_final.hook_in", _stop))
        # a tensor autograd saved (a softmax's output: hook_pattern) may take the in-place add
        with torch.enable_grad(), torch.autograd.graph.allow_mutation_on_saved_tensors():
            out = model.run_with_hooks(tokens, fwd_hooks=hooks_)
            missing = [h for h in self.hooks if h not in leaves]
            if missing:
                raise ConfigError(
                    f"Hook {missing[0]} did not fire in the corrupted run; attribution patching reads "
                    "hooks of blocks.L (resid_pre/mid, attn_out, mlp_out, z, q, k, v, pattern, ...)."
                )
            values = _metric_values(model, metrics, out, n_pos)
            base = []
            order = [leaves[h] for h in self.hooks]
            for i, (name, value) in enumerate(zip(metrics.fns, values)):
                metrics.check_shape(name, value, lead=())
                if not value.requires_grad:
                    raise ConfigError(
                        f"patching_metric {name!r} is not differentiable in the logits (it returned a "
                        "tensor without a gradient); compute it with torch operations on the logits."
                    )
                grads = torch.autograd.grad(
                    value.sum(), order, retain_graph=i < len(values) - 1, allow_unused=True
                )
                self.grads[name] = {
                    h: torch.zeros_like(leaves[h]) if g is None else g
                    for h, g in zip(self.hooks, grads)
                }
                base.append(value.detach())
        dtype = torch.promote_types(bridge_dtype(model), torch.float32)
        self.baseline = torch.stack(base).to(dtype)  # (metric[, batch])

    def matches(self, metrics: Metrics, hooks: Sequence[str]) -> bool:
        return (
            tuple(metrics.fns) == self.metric_names
            and metrics.per_example == self.per_example
            and set(hooks) <= set(self.hooks)
        )


class SharedGradPass:
    """One gradient pass shared by several sweeps (the union of their hooks), made on
    first use."""

    def __init__(self, hooks: Sequence[str]):
        self.hooks = list(hooks)
        self.grad_pass: GradPass | None = None

    def get(
        self, model: HookedModel, tokens: torch.Tensor, metrics: Metrics, hooks: Sequence[str]
    ) -> GradPass:
        if self.grad_pass is None or not self.grad_pass.matches(metrics, hooks):
            self.grad_pass = GradPass(model, tokens, sorted(set(self.hooks) | set(hooks)), metrics)
        return self.grad_pass
