"""Path patching (Wang et al. 2022, the IOI paper), direct and multi-hop, as edge masks of
the graph's forward (:class:`~actstore.circuits.forward.GraphForward`).

The classic recipe: (1) run the *base* input and the *other* input; (2) run the base
input with the senders' outputs taken from the other run and every other head and MLP
frozen at its base output, except the intermediate nodes (``through``), which are
recomputed; record the receivers' inputs; (3) run the base input with the receivers'
inputs patched to those recorded values, everything downstream of them computed
normally, and read the metric. Only the effect that reaches a receiver along the chosen
paths (sender -> receiver, or sender -> intermediates -> receiver) gets through.

On the graph that is one forward with an edge mask, the senders' outputs replaced by the
other run's (``outputs=``) and every masked edge reading the base run's node outputs:

- into a receiver's input, or an intermediate's: live from senders and intermediates
  (minus the direct sender -> receiver edges when ``direct=False``), frozen otherwise;
- into any other input: live from the receiver nodes and everything downstream of them
  (which step 3 recomputes), frozen otherwise (so a sender's or an intermediate's new
  output reaches nothing but the chosen paths).

Direct path patching (:func:`actstore.patching.path.direct_path_sweep`,
``get_act_patch_direct_path``) is the special case of one sender head and one receiver
head's q, k or v input, with base = the corrupted run and other = the clean one.

Many variants (sender, receiver and intermediate sets) run at once as rows of the mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from ..errors import ConfigError
from ..model_protocol import HookedModel
from .graph import Graph
from .path_variants import Names, Paths, group_variants, path_mask, plan_variants

__all__ = ["Paths", "path_mask", "path_patch", "path_patch_sweep"]


def path_patch_sweep(
    model: HookedModel,
    base_tokens: Int[torch.Tensor, "batch pos"],
    other_tokens: Int[torch.Tensor, "batch pos"],
    metric: Callable[[torch.Tensor], torch.Tensor],
    variants: Sequence[Paths],
    *,
    per_example: bool = False,
    memory_budget: int | None = None,
    forward: Any = None,
) -> Float[torch.Tensor, "variant *batch"]:  # noqa: F821, UP037  (a jaxtyping shape)
    """The metric of each path-patching variant: (variant,), or (variant, batch) with
    ``per_example`` (the metric then returns one value per prompt).

    ``metric``: a TransformerLens metric of one run's logits (batch, pos, d_vocab), or a
    batched one (:class:`~actstore.patching.LogitDiff`, ``batched_metric``), which is
    evaluated on many variants at once. The variants run as rows of one edge mask, in
    forwards of about ``memory_budget`` bytes each (default: half the free GPU memory, or
    up to 512 MiB of RAM). ``forward``: a GraphForward of ``model`` to reuse."""
    from ..patching.engine import default_memory_budget
    from ..patching.metrics import Metrics
    from .forward import GraphForward

    _check_call(model, metric, per_example, memory_budget, forward)
    if forward is not None and forward.model is not model:
        raise ConfigError(
            "forward= is a GraphForward of another model; pass GraphForward(model) of this one, or "
            "leave forward= out."
        )
    graph = forward.graph if forward is not None else Graph.from_model(model)
    plan = plan_variants(graph, variants)
    base, other = _pair(base_tokens, other_tokens, model)
    fwd = forward if forward is not None else GraphForward(model, graph)
    batch, n_pos = (int(n) for n in base.shape)
    metrics = Metrics(
        {"metric": metric},
        bool(per_example),
        batch,
        n_pos,
        modes=("per_example=False (the default)", "per_example=True"),
    )
    # only the logits the metric reads
    positions = metrics.positions if metrics.restricted else None
    names = [u.name for u in graph.upstream]
    out = torch.empty(len(plan), *((batch,) if per_example else ()))
    budget = memory_budget or default_memory_budget(base.device)
    with torch.no_grad():
        # (n_upstream, batch, pos, d_model)
        base_out, other_out = (
            fwd.node_outputs(base),
            fwd.node_outputs(other),
        )
        for group in group_variants(plan):
            n_send = len(set().union(*(plan[v].senders.tolist() for v in group)))
            # bytes per (variant x prompt) row: the forward's, and the senders' outputs given per variant
            row = fwd.row_bytes(n_pos) + n_send * n_pos * int(fwd.d_model) * base_out.element_size()
            per_call = max(1, budget // (batch * row))
            for start in range(0, len(group), per_call):
                rows = group[start : start + per_call]
                outputs = {}
                for u in sorted(set().union(*(plan[v].senders.tolist() for v in rows))):
                    # the other run's output where u sends, its base output (unchanged there) elsewhere
                    sends = torch.tensor([u in plan[v].senders for v in rows], device=base.device)[
                        :, None, None, None
                    ]
                    outputs[names[u]] = torch.where(sends, other_out[u], base_out[u])
                mask = torch.as_tensor(
                    np.stack([plan[v].row(graph) for v in rows]), device=base.device
                )
                logits = fwd.run(
                    base, mask, base_out, outputs=outputs, positions=positions
                ).flatten(0, 1)
                if positions is not None:
                    logits = logits[..., metrics.token_ids]
                out[rows] = metrics.evaluate(logits)[:, 0].cpu()
    return out


def path_patch(
    model: HookedModel,
    base_tokens: Int[torch.Tensor, "batch pos"],
    other_tokens: Int[torch.Tensor, "batch pos"],
    metric: Callable[[torch.Tensor], torch.Tensor],
    senders: Names,
    receivers: Names,
    *,
    through: Names = (),
    direct: bool | None = None,
    per_example: bool = False,
    memory_budget: int | None = None,
    forward: Any = None,
) -> torch.Tensor:
    """The metric with the paths from ``senders`` to ``receivers`` (optionally through
    intermediates) patched: the base run, with only the senders' effect along those paths
    taken from the other run (see :class:`Paths` and the module docstring). A scalar, or
    (batch,) with ``per_example``. For many variants at once: :func:`path_patch_sweep`."""
    return path_patch_sweep(
        model,
        base_tokens,
        other_tokens,
        metric,
        [Paths(senders, receivers, through, direct)],
        per_example=per_example,
        memory_budget=memory_budget,
        forward=forward,
    )[0]


def _check_call(
    model: HookedModel, metric: Any, per_example: Any, memory_budget: Any, forward: Any
) -> None:
    """The arguments of a path-patching call other than the tokens and the variants."""
    from .forward import GraphForward

    if not hasattr(model, "cfg") or not callable(model):
        raise ConfigError(
            f"model must be a TransformerBridge of a GPT-2-family model (e.g. "
            f"TransformerBridge.boot_transformers('gpt2')), got {type(model).__name__}."
        )
    if not callable(metric):
        raise ConfigError(
            f"metric must be a function of the logits (batch, pos, d_vocab), e.g. "
            f"actstore.patching.LogitDiff(answer, wrong), got {type(metric).__name__}."
        )
    if not isinstance(per_example, (bool, np.bool_)):
        raise ConfigError(
            f"per_example must be True (one value per prompt) or False (one value), got {per_example!r}."
        )
    whole = isinstance(memory_budget, (int, np.integer)) and not isinstance(memory_budget, bool)
    if memory_budget is not None and (not whole or memory_budget < 1):
        raise ConfigError(
            f"memory_budget must be a positive number of bytes (e.g. 2**30), or None for the default; "
            f"got {memory_budget!r}."
        )
    if forward is not None and not isinstance(forward, GraphForward):
        raise ConfigError(
            f"forward must be a GraphForward of the model (GraphForward(model)), or None; got "
            f"{type(forward).__name__}."
        )


def _pair(base: Any, other: Any, model: HookedModel) -> tuple[torch.Tensor, torch.Tensor]:
    from .forward import token_ids

    base, other = token_ids(model, base, "base_tokens"), token_ids(model, other, "other_tokens")
    if base.shape != other.shape:
        raise ConfigError(
            f"base_tokens {tuple(base.shape)} and other_tokens {tuple(other.shape)} must be token ids of "
            "the same shape (batch, pos): prompt i of one is paired with prompt i of the other; choose "
            "prompts of equal token length."
        )
    device = torch.device(model.cfg.device)
    return base.to(device), other.to(device)
