"""Edge attribution: a score for every edge of the graph from a few batched backward
passes, EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024).

Convention (denoising, the same as exact edge patching): the score of edge u -> d
estimates ``metric(d reads u's clean output in the corrupted run) - metric(corrupted)``,
mean over pairs. A positive score: patching the edge toward clean raises the metric.

- ``"eap"``: ``(clean_u - corrupted_u) . d metric / d input_d`` on the corrupted run,
  summed over positions. With :class:`~actstore.circuits.forward.GraphForward` that is
  exactly ``-d metric / d mask[e]`` at mask = 1 with patch = the clean node outputs: every
  edge from one backward pass per chunk of pairs.
- ``"eap-ig-inputs"`` (k = ``steps``): the same fixed difference ``clean_u - corrupted_u``
  times the gradient averaged over the runs whose input embeddings are ``corrupted + t
  (clean - corrupted)``, t = 0, 1/k, ..., (k-1)/k (each run's mask gradient with patch =
  its own node outputs + the difference).
- ``"eap-ig-activations"``: integrated gradients over the edge mask: ``-d metric / d
  mask[e]`` averaged over mask = 1 - t (every downstream input reads ``(1 - t)`` of its
  live inputs plus ``t`` of the clean ones), same t. At mask 0 every input reads the clean
  outputs, so the scores of all edges sum to ``metric(clean) - metric(corrupted)`` as k
  grows (the completeness of integrated gradients).

With k = 1 both EAP-IG methods are EAP exactly. hannamw/EAP-IG (``attribute(...,
method='EAP-IG-inputs', ig_steps=k)``) takes the mirror image: its base run is the clean
one and its difference ``corrupted - clean``, at the same points t = 0 .. (k-1)/k from
the corrupted inputs towards the clean ones, so its scores are ours negated. Its EAP
takes the gradient on the clean run (a noising score); its EAP-IG-activations
interpolates one layer's outputs at a time over t = 1/k .. 1, not the edge mask.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from jaxtyping import Float, Int

from ..errors import ConfigError
from ..patching.engine import default_memory_budget
from .clean import CleanNodes, run_node_outputs
from .forward import GraphForward
from .graph import Graph
from .metrics import CircuitMetric, circuit_metric

__all__ = ["edge_attribution", "METHODS"]

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations")


def edge_attribution(model: Any, clean_tokens: Optional[Int[torch.Tensor, "batch pos"]],
                     corrupted_tokens: Int[torch.Tensor, "batch pos"],
                     metric: Callable[[torch.Tensor], torch.Tensor], *, method: str = "eap", steps: int = 5,
                     graph: Optional[Graph] = None, clean_cache: Any = None, clean_rows: Optional[Sequence[int]] = None,
                     per_pair: bool = False, memory_budget: Optional[int] = None, progress: bool = True
                     ) -> Float[torch.Tensor, "edge *batch"]:
    """Every edge's attribution score (module docstring): (n_edges,), mean over pairs, or
    (n_edges, batch) with ``per_pair``; in the graph's edge order, float32 (float64 for a
    float64 model).

    Args:
        model: a TransformerBridge (or HookedTransformer) of the GPT-2 family, in eval mode.
        clean_tokens, corrupted_tokens: (batch, pos) token ids of the pairs; clean_tokens
            may be None when ``clean_cache`` holds the clean run.
        metric: logits (batch, pos, vocab) -> (batch,), differentiable; see
            :func:`~actstore.circuits.metrics.circuit_metric`. A metric with one answer per
            pair is given the logits of a chunk of pairs (``metric.for_pairs``).
        method: "eap", "eap-ig-inputs" or "eap-ig-activations".
        steps: EAP-IG's number of points (ignored by "eap").
        graph: the edge graph (default ``Graph.from_model(model)``).
        clean_cache: the clean run's activations instead of running ``clean_tokens``: an
            ActivationCache / mapping, or an ActivationStore with ``clean_rows``.
        per_pair: one score per pair (each pair then runs its own backward passes).
        memory_budget: bytes one forward and backward may use (default: the engine's);
            pairs (and EAP-IG's steps) run in chunks that fit it.
        progress: a tqdm bar over pairs x steps.
    """
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer (EAP-IG's number of points), got {steps!r}.")
    corrupted = _tokens(corrupted_tokens, "corrupted_tokens")
    if clean_tokens is not None and tuple(_tokens(clean_tokens, "clean_tokens").shape) != tuple(corrupted.shape):
        raise ConfigError(f"clean_tokens {tuple(clean_tokens.shape)} and corrupted_tokens {tuple(corrupted.shape)} "
                          "must have the same shape: pairs of prompts of the same token length.")
    if clean_tokens is None and clean_cache is None:
        raise ConfigError("pass clean_tokens, or the clean run's activations as clean_cache.")
    if graph is not None and (graph.n_layers, graph.n_heads) != (int(model.cfg.n_layers), int(model.cfg.n_heads)):
        raise ConfigError(f"the graph has {graph.n_layers} layers x {graph.n_heads} heads but the model "
                          f"{model.cfg.n_layers} x {model.cfg.n_heads}; pass Graph.from_model(model).")
    fwd = GraphForward(model, graph)
    metric = circuit_metric(metric)
    batch, n_pos = corrupted.shape
    n_steps = 1 if method == "eap" else steps
    pairs, variants = _plan(fwd, n_pos, batch, n_steps if method == "eap-ig-activations" else 1, per_pair,
                            memory_budget)
    if pairs < batch:
        metric.for_pairs(0, pairs)  # a metric that must see every pair fails here, before any work
    clean = CleanNodes(model, clean_cache if clean_cache is not None else clean_tokens, fwd.graph, n_pos, batch,
                       clean_rows)
    out_dtype = torch.promote_types(fwd.dtype, torch.float32)
    total = torch.zeros((fwd.graph.n_edges,) + ((batch,) if per_pair else ()), dtype=torch.float64,
                        device=fwd.device)
    bar = tqdm(total=batch * n_steps, desc=f"edge attribution ({method})", unit="pair-step", disable=not progress)
    for a in range(0, batch, pairs):
        b = min(batch, a + pairs)
        m = metric if (a, b) == (0, batch) else metric.for_pairs(a, b)
        s = _chunk(fwd, corrupted[a:b], clean(a, b), m, method, n_steps, variants, bar)
        if per_pair:
            total[:, a] = s  # one pair a chunk
        else:
            total += s
    bar.close()
    return (total / (n_steps * (1 if per_pair else batch))).to(out_dtype)


def _chunk(fwd: GraphForward, tokens: torch.Tensor, clean: torch.Tensor, metric: CircuitMetric, method: str,
           n_steps: int, variants: int, bar: Any) -> torch.Tensor:
    """(n_edges,) float64: the chunk's scores summed over its pairs and the steps."""
    n_pairs = tokens.shape[0]
    total = torch.zeros(fwd.graph.n_edges, dtype=torch.float64, device=fwd.device)
    if method == "eap-ig-inputs":
        corr = run_node_outputs(fwd.model, tokens)
        delta = clean - corr
    for k0 in range(0, n_steps, variants):
        ts = [k / n_steps for k in range(k0, min(n_steps, k0 + variants))]
        patch, embed = clean, None
        if method == "eap-ig-inputs" and ts[0] > 0:  # patch = live + delta: the mask gradient is delta . grad
            embed = corr[0] + ts[0] * delta[0]
            patch = run_node_outputs(fwd.model, tokens, embed) + delta
        level = [1.0 - t if method == "eap-ig-activations" else 1.0 for t in ts]
        mask = torch.tensor(level, dtype=fwd.dtype, device=fwd.device)[:, None].repeat(1, fwd.graph.n_edges)
        mask.requires_grad_(True)
        with torch.enable_grad():
            logits = fwd.run(tokens, mask, patch, embed=embed)  # (variant, pair, pos, d_vocab)
            value = torch.stack([metric(logits[v]) for v in range(len(ts))]).sum()
            (grad,) = torch.autograd.grad(value, mask)
        total -= grad.sum(0).double()
        bar.update(n_pairs * len(ts))
    return total


def _plan(fwd: GraphForward, n_pos: int, batch: int, n_var: int, per_pair: bool, budget: Optional[int]
          ) -> tuple[int, int]:
    """(pairs a chunk, variants a forward) so that rows = pairs x variants fit the budget:
    each row's forward and backward (GraphForward.row_bytes) plus the chunk's node outputs
    (clean, corrupted, live: three (upstream, pos, d_model) a pair)."""
    budget = int(budget) if budget is not None else default_memory_budget(fwd.device)
    item = torch.finfo(fwd.dtype).bits // 8
    nodes = 3 * len(fwd.graph.upstream) * n_pos * fwd.d_model * item
    rows = max(1, budget // max(1, fwd.row_bytes(n_pos, grad=True) + nodes))
    pairs = 1 if per_pair else min(batch, rows)
    return pairs, max(1, min(n_var, rows // pairs))


def _tokens(tokens: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(tokens)
    if t.ndim != 2 or t.dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"{name} must be integer token ids of shape (batch, pos), got {tuple(t.shape)} {t.dtype}.")
    return t
