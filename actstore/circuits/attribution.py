"""Edge attribution: a score for every edge of the graph from a few batched backward
passes, EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024).

Convention (denoising, the same as exact edge patching): the score of edge u -> d
estimates ``metric(d reads u's clean output in the corrupted run) - metric(corrupted)``,
mean over pairs. A positive score: patching the edge toward clean raises the metric.

- ``"eap"``: ``(clean_u - corrupted_u) . d metric / d input_d`` on the corrupted run,
  summed over positions. With :class:`~actstore.circuits.forward.GraphForward` that is
  exactly ``-d metric / d mask[e]`` at mask = 1 with patch = the clean node outputs.
- ``"eap-ig-inputs"`` (k = ``steps``): the same fixed difference ``clean_u - corrupted_u``
  times the gradient averaged over the runs whose input embeddings are ``corrupted + t
  (clean - corrupted)``, t = 0, 1/k, ..., (k-1)/k.
- ``"eap-ig-activations"``: integrated gradients over the edge mask: ``-d metric / d
  mask[e]`` averaged over mask = 1 - t (every downstream input reads ``(1 - t)`` of its
  live inputs plus ``t`` of the clean ones), same t. At mask 0 every input reads the clean
  outputs, so the scores of all edges sum to ``metric(clean) - metric(corrupted)`` as k
  grows (the completeness of integrated gradients).

Every edge's score comes from one forward and backward per chunk of pairs (and step): at a
uniform mask GraphForward's run is the plain residual stream, so it runs in that form with
a zero probe added to each downstream input (:class:`_Uniform`; tested equal to
GraphForward's mask gradient), and the scores are the products of node differences and
probe gradients, per pair. With k = 1 both EAP-IG methods are EAP exactly. hannamw/EAP-IG (``attribute(...,
method='EAP-IG-inputs', ig_steps=k)``) takes the mirror image: its base run is the clean
one and its difference ``corrupted - clean``, at the same points t = 0 .. (k-1)/k from
the corrupted inputs towards the clean ones, so its scores are ours negated. Its EAP
takes the gradient on the clean run (a noising score); its EAP-IG-activations
interpolates one layer's outputs at a time over t = 1/k .. 1, not the edge mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int

from ..errors import ConfigError
from ..model_protocol import HookedModel
from ..patching import self_check
from ..patching.engine import default_memory_budget
from .clean import CleanNodes
from .forward import GraphForward, check_logits
from .graph import Graph
from .metrics import CircuitMetric, circuit_metric

__all__ = ["edge_attribution", "METHODS"]

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations")


def edge_attribution(
    model: HookedModel,
    clean_tokens: Int[torch.Tensor, "batch pos"] | None,
    corrupted_tokens: Int[torch.Tensor, "batch pos"],
    metric: Callable[[torch.Tensor], torch.Tensor],
    *,
    method: str = "eap",
    steps: int = 5,
    graph: Graph | None = None,
    clean_cache: Any = None,
    clean_rows: Sequence[int] | None = None,
    per_pair: bool = False,
    memory_budget: int | None = None,
    progress: bool = True,
) -> Float[torch.Tensor, "edge *batch"]:  # noqa: F821, UP037  (a jaxtyping shape)
    """Every edge's attribution score (module docstring): (n_edges,), mean over pairs, or
    (n_edges, batch) with ``per_pair``; in the graph's edge order, float32 (float64 for a
    float64 model).

    Args:
        model: a TransformerBridge (or HookedTransformer) of the GPT-2 family, in eval mode.
        clean_tokens: (batch, pos) token ids of the clean prompts; may be None when
            ``clean_cache`` holds the clean run.
        corrupted_tokens: (batch, pos) token ids of the corrupted prompts.
        metric: logits (batch, pos, vocab) -> (batch,), differentiable; see
            :func:`~actstore.circuits.metrics.circuit_metric`. A metric with one answer per
            pair is given the logits of a chunk of pairs (``metric.for_pairs``).
        method: "eap", "eap-ig-inputs" or "eap-ig-activations".
        steps: EAP-IG's number of points (ignored by "eap").
        graph: the edge graph (default ``Graph.from_model(model)``).
        clean_cache: the clean run's activations instead of running ``clean_tokens``: an
            ActivationCache / mapping, or an ActivationStore with ``clean_rows``.
        per_pair: one score per pair (no extra cost: pairs are independent in the backward).
        memory_budget: bytes one forward and backward may use (default: the engine's);
            pairs run in chunks that fit it (EAP-IG's steps one after another).
        progress: a tqdm bar over pairs x steps.
    """
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(
            f"steps must be a positive integer (EAP-IG's number of points), got {steps!r}."
        )
    corrupted = _tokens(corrupted_tokens, "corrupted_tokens")
    if clean_tokens is not None and tuple(_tokens(clean_tokens, "clean_tokens").shape) != tuple(
        corrupted.shape
    ):
        raise ConfigError(
            f"clean_tokens {tuple(clean_tokens.shape)} and corrupted_tokens {tuple(corrupted.shape)} "
            "must have the same shape: pairs of prompts of the same token length."
        )
    if clean_tokens is None and clean_cache is None:
        raise ConfigError("pass clean_tokens, or the clean run's activations as clean_cache.")
    if graph is not None and (graph.n_layers, graph.n_heads) != (
        int(model.cfg.n_layers),
        int(model.cfg.n_heads),
    ):
        raise ConfigError(
            f"the graph has {graph.n_layers} layers x {graph.n_heads} heads but the model "
            f"{model.cfg.n_layers} x {model.cfg.n_heads}; pass Graph.from_model(model)."
        )
    fwd = GraphForward(model, graph)
    metric = circuit_metric(metric)
    batch, n_pos = corrupted.shape
    n_steps = 1 if method == "eap" else steps
    pairs = _plan(fwd, n_pos, batch, memory_budget)
    if pairs < batch:
        metric.for_pairs(0, pairs)  # a metric that must see every pair fails here, before any work
    clean = CleanNodes(
        model,
        clean_cache if clean_cache is not None else clean_tokens,
        fwd.graph,
        n_pos,
        batch,
        clean_rows,
    )
    out_dtype = torch.promote_types(fwd.dtype, torch.float32)
    total = torch.zeros(
        (fwd.graph.n_edges,) + ((batch,) if per_pair else ()),
        dtype=torch.float64,
        device=fwd.device,
    )
    # (HookedGraphForward has its own grads)
    uniform = _Uniform(fwd) if type(fwd) is GraphForward else fwd
    bar = tqdm(
        total=batch * n_steps,
        desc=f"edge attribution ({method})",
        unit="pair-step",
        disable=not progress,
    )
    for a in range(0, batch, pairs):
        b = min(batch, a + pairs)
        m = metric if (a, b) == (0, batch) else metric.for_pairs(a, b)
        scores = _chunk(
            fwd, uniform, corrupted[a:b].to(fwd.device), clean(a, b), m, method, n_steps, bar
        )
        if per_pair:
            total[:, a:b] = scores
        else:
            total += scores.sum(1)
    bar.close()
    return (total / (n_steps * (1 if per_pair else batch))).to(out_dtype)


def _chunk(
    fwd: GraphForward,
    uniform: Any,
    tokens: torch.Tensor,
    clean: torch.Tensor,
    metric: CircuitMetric,
    method: str,
    n_steps: int,
    bar: Any,
) -> torch.Tensor:
    """(n_edges, pair) float64: the chunk's scores per pair, summed over the steps."""
    total = torch.zeros(
        (fwd.graph.n_edges, tokens.shape[0]), dtype=torch.float64, device=fwd.device
    )
    corr = None
    for k in range(n_steps):
        t = k / n_steps
        embed = None
        if method == "eap-ig-inputs" and k > 0:
            assert corr is not None
            embed = corr[0] + t * (clean[0] - corr[0])
        grads, live = uniform.grads(
            tokens, metric, clean, t if method == "eap-ig-activations" else 0.0, embed
        )
        if k == 0:
            corr = live
        # eap-ig-inputs: the fixed difference clean - corrupted; else clean - live, i.e. -d metric / d mask
        assert corr is not None  # set at k = 0
        diff = clean - (corr if method == "eap-ig-inputs" else live)
        total += _edge_products(fwd.graph, diff, grads)
        bar.update(tokens.shape[0])
    return total


def _edge_products(graph: Graph, diff: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """(n_edges, pair) float64: sum over positions and d_model of diff[src] * grads[dst]."""
    per_pair = torch.einsum("ubpd,nbpd->bun", diff, grads)  # (pair, upstream, downstream)
    src = torch.as_tensor(graph.src, device=diff.device)
    dst = torch.as_tensor(graph.dst, device=diff.device)
    return per_pair[:, src, dst].T.double()


class _Uniform:
    """GraphForward's run at a uniform mask, every edge at ``1 - t`` (every downstream input
    reads ``(1 - t)`` x its live inputs' sum + ``t`` x the patch's + the b_O biases), computed
    as one residual stream instead of edge by edge, with a zero probe added to each
    downstream input: the probes' gradients are d metric / d input. At a uniform mask the
    mask gradient of edge u -> d is (live_u - patch_u) . d metric / d input_d, so this gives
    every edge's from one plain-sized forward and backward (GraphForward.run materialises
    every edge's sum; tests/circuits/test_attribution.py checks the two agree). Built from
    GraphForward's own parts (its embedding and attention, the model's modules); checked
    once per model against the model's own logits."""

    def __init__(self, fwd: GraphForward):
        self.fwd = fwd
        self.checked = not self_check.ENABLED

    def grads(
        self,
        tokens: torch.Tensor,
        metric: CircuitMetric,
        patch: torch.Tensor,
        t: float,
        embed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(d metric / d input: (n_downstream, pair, pos, d_model), live node outputs: (n_upstream, ...))."""
        fwd = self.fwd
        if not self.checked:
            self._check(tokens[:1])
        with torch.enable_grad():
            n_pos = tokens.shape[1]
            pos = (
                None
                if metric.positions is None
                else torch.tensor(sorted({p % n_pos for p in metric.positions}), device=fwd.device)
            )
            logits, live, probes = self._forward(tokens, patch, t, embed, probe=True, positions=pos)
            value = metric(logits).sum()
            grads = torch.autograd.grad(value, probes, allow_unused=True)
        out = []
        # a layer's heads' q, k, v (head by head), then its MLP
        for layer in range(fwd.graph.n_layers):
            qkv, mlp = grads[2 * layer], grads[2 * layer + 1]
            out += [qkv.permute(2, 3, 0, 1, 4).flatten(0, 1), mlp[None]]
        out.append(grads[-1][None])
        return torch.cat(out), live

    def _forward(
        self,
        tokens: torch.Tensor,
        patch: torch.Tensor,
        t: float,
        embed: torch.Tensor | None,
        probe: bool,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        fwd, model = self.fwd, self.fwd.model
        n_heads = fwd.n_heads
        x0 = (embed if embed is not None else fwd.input_output(tokens)).to(fwd.dtype)
        live, probes = [x0], []
        resid, patched, bias = (
            x0,
            patch[0],
            torch.zeros(fwd.d_model, device=fwd.device, dtype=fwd.dtype),
        )

        def read(shape: tuple[int, ...]) -> torch.Tensor:
            x = resid + bias if t == 0 else (1 - t) * resid + t * patched + bias
            p = torch.zeros(shape, device=fwd.device, dtype=fwd.dtype, requires_grad=probe)
            probes.append(p)
            # (b, pos[, 1, 1], d)
            return x.view(x.shape[:2] + (1,) * (len(shape) - 3) + x.shape[2:]) + p

        for layer in range(fwd.graph.n_layers):
            block, first = model.blocks[layer], 1 + layer * (n_heads + 1)
            b, n_pos = tokens.shape
            # (head, b, pos, d)
            heads = fwd.attention(block, read((b, n_pos, n_heads, 3, fwd.d_model))[None])[0]
            live += list(heads)
            resid, patched = resid + heads.sum(0), patched + patch[first : first + n_heads].sum(0)
            bias = bias + block.attn.b_O.to(fwd.dtype)
            mlp = block.mlp(block.ln2(read((b, n_pos, fwd.d_model))))
            live.append(mlp)
            resid, patched = resid + mlp, patched + patch[first + n_heads]
        final = read(tuple(tokens.shape) + (fwd.d_model,))
        # only the positions the metric reads are unembedded; the rest stay 0
        if positions is not None:
            final = final[:, positions]
        logits = model.ln_final(final) @ model.W_U.to(fwd.dtype) + model.b_U.to(fwd.dtype)
        if positions is not None:
            full = torch.zeros(
                tokens.shape + (logits.shape[-1],), device=fwd.device, dtype=logits.dtype
            )
            logits = full.index_copy(1, positions, logits)
        return logits, torch.stack(live).detach(), probes

    def _check(self, row: torch.Tensor) -> None:
        with torch.no_grad():
            want = self.fwd.model(row).detach()
            zero = torch.zeros(
                len(self.fwd.graph.upstream),
                1,
                1,
                self.fwd.d_model,
                device=self.fwd.device,
                dtype=self.fwd.dtype,
            )
            got = self._forward(row, zero, 0.0, None, probe=False)[0]
        check_logits(got, want, self.fwd.dtype, "its edge graph's residual form")
        self.checked = True


def _plan(fwd: GraphForward, n_pos: int, batch: int, budget: int | None) -> int:
    """Pairs a chunk, so that each pair's forward and backward (GraphForward.row_bytes, an
    upper bound for the residual form) plus its node outputs and input gradients (clean,
    corrupted, live, difference: four (upstream, pos, d_model); (downstream, pos, d_model))
    fit the budget."""
    budget = int(budget) if budget is not None else default_memory_budget(fwd.device)
    item = torch.finfo(fwd.dtype).bits // 8
    g = fwd.graph
    nodes = (4 * len(g.upstream) + len(g.downstream)) * n_pos * fwd.d_model * item + len(
        g.upstream
    ) * len(g.downstream) * 8
    return max(1, min(batch, budget // max(1, fwd.row_bytes(n_pos, grad=True) + nodes)))


def _tokens(tokens: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(tokens)
    if t.ndim != 2 or t.dtype not in (torch.int64, torch.int32):
        raise ConfigError(
            f"{name} must be integer token ids of shape (batch, pos), got {tuple(t.shape)} {t.dtype}."
        )
    return t
