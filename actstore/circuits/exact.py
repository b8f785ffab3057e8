"""Exact edge patching: the ground truth every attribution method is checked against.

Patching one edge u -> d of the graph (:mod:`actstore.circuits.graph`): the downstream
input d reads the corrupted residual plus u's clean-minus-corrupted output,

    delta(input)   = (embed + pos_embed)_clean - (embed + pos_embed)_corrupted   (blocks.0.hook_resid_pre)
    delta(a{L}.h{H}) = z_clean[H] @ W_O[H] - z_corrupted[H] @ W_O[H]
    delta(m{L})    = mlp_out_clean - mlp_out_corrupted

while every other reader keeps the corrupted residual, and the change propagates from
there. The score is the metric of that run minus the corrupted run's, per prompt pair
(then their mean).

Every edge runs on the patching engine: the edges into each kind of reader (a head's q,
k or v; an MLP; the logits) are one sweep of the hook that reader alone writes
(:mod:`actstore.patching.path`), every source into a layer computed in one batched
reader call, every edge run batched from its reader's block on, over the positions
its delta changes. Sources are split into groups whose values fit the memory budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from ..errors import ConfigError, StoreMismatchError
from ..model_protocol import HookedModel
from ..models import bridge_dtype
from ..patching.clean import CleanSource
from ..patching.engine import check_hand_run, check_model, default_memory_budget, variant_row_bytes
from ..patching.metrics import Metrics
from ..patching.path import READERS, EdgeValues, capture, edge_sweep
from ..sites import hook_name
from ..store import ActivationStore
from .clean import STORE_SITES
from .graph import Graph, Node

__all__ = ["exact_edge_scores"]

_INPUT = hook_name("resid_pre", 0)  # what block 0 reads: token plus position embeddings


def exact_edge_scores(
    model: HookedModel,
    clean_tokens: Int[torch.Tensor, "batch pos"] | None,
    corrupted_tokens: Int[torch.Tensor, "batch pos"],
    metric: Callable[[torch.Tensor], torch.Tensor],
    *,
    graph: Graph | None = None,
    edges: Sequence[int] | np.ndarray | None = None,
    clean_cache: Any = None,
    clean_rows: Any = None,
    per_pair: bool = False,
    memory_budget: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """The effect of patching each edge alone, clean into corrupted: ``metric(edge
    patched) - metric(corrupted run)``, the mean over prompt pairs, (edge,) float32 on
    the model's device, in the order of ``edges`` (``per_pair=True``: (edge, batch)).

    ``metric`` maps logits (batch, pos, d_vocab) to one value per pair, (batch,) (e.g.
    ``patching.LogitDiff(answer, wrong, per_example=True)``; a batched metric that
    declares its positions and tokens is faster). ``edges``: edge numbers of ``graph``
    (default: every edge of ``Graph.from_model(model)``). The clean run's activations
    come from ``clean_cache`` (an ActivationCache or a mapping of hook name -> tensor, or
    an ActivationStore with ``clean_rows``, cached with the sites of :data:`.clean.STORE_SITES`),
    or, when None, from running ``clean_tokens``. ``memory_budget``: bytes of activations
    (default: the engine's), half for the edge values of a group of sources, half for each
    batched forward of the engine."""
    from tqdm.auto import tqdm

    adapter = check_model(model, "Circuit discovery")
    graph = Graph.for_model(model, graph)
    ids = _parse_edges(graph, edges)
    corrupted_tokens, clean_tokens = _parse_tokens(
        model, corrupted_tokens, clean_tokens, clean_cache
    )
    batch, n_pos = (int(n) for n in corrupted_tokens.shape)
    device = torch.device(model.cfg.device)
    unique, inverse = np.unique(ids, return_inverse=True)
    if not adapter.hand_run_blocks:
        scores = _hooked_scores(
            model,
            graph,
            unique,
            corrupted_tokens,
            clean_tokens,
            clean_cache,
            clean_rows,
            metric,
            memory_budget or default_memory_budget(device),
            progress,
        )
        scores = scores[torch.as_tensor(inverse, device=device)]
        return scores if per_pair else scores.mean(-1)
    check_hand_run(model, "Circuit discovery")
    scores = torch.zeros(len(unique), batch, device=device)
    by_reader: dict[str, list[int]] = {}  # reader -> positions in unique
    for i, e in enumerate(unique):
        by_reader.setdefault(graph.downstream[graph.dst[e]].kind, []).append(i)
    sources = sorted({int(graph.src[e]) for e in unique})
    last = int(model.cfg.n_layers) - 1

    def reader_layer(e: int) -> int:
        # the logits are read after the last block
        return min(graph.downstream[graph.dst[e]].layer, last)

    names = set(_source_hooks(graph, sources))
    for kind, pos in by_reader.items():
        names |= {
            h
            for i in pos
            for h in (
                READERS[kind].read_hook(reader_layer(unique[i])),
                READERS[kind].hook(reader_layer(unique[i])),
            )
        }
    corrupted_logits, corr = capture(model, corrupted_tokens, sorted(names))
    _check_metric(metric, corrupted_logits, batch)
    clean = _clean(
        model, clean_tokens, clean_cache, clean_rows, _source_hooks(graph, sources), n_pos, batch
    )
    metrics = Metrics({"metric": metric}, True, batch, n_pos)
    budget = memory_budget or default_memory_budget(device)
    bar = tqdm(total=len(unique), desc="exact edge patching", disable=not progress)
    with torch.no_grad():
        for kind, pos in by_reader.items():
            reader = READERS[kind]
            kind_sources = sorted({int(graph.src[unique[i]]) for i in pos})
            for group in _groups(model, reader.name, kind_sources, batch, n_pos, budget // 2):
                slot = {u: s for s, u in enumerate(group)}
                todo = [i for i in pos if int(graph.src[unique[i]]) in slot]
                indices = [
                    [
                        reader_layer(unique[i]),
                        slot[int(graph.src[unique[i]])],
                        *_reader_index(graph, unique[i]),
                    ]
                    for i in todo
                ]
                live: dict[int, list[int]] = {}
                for layer, s, *_ in indices:
                    live.setdefault(layer, [])
                    if s not in live[layer]:
                        live[layer].append(s)
                deltas = torch.stack([_delta(model, graph.upstream[u], clean, corr) for u in group])
                values = EdgeValues(
                    model,
                    reader,
                    deltas,
                    live,
                    {layer: corr[reader.read_hook(layer)] for layer in live},
                    {layer: corr[reader.hook(layer)] for layer in live},
                    [graph.upstream[u].name for u in group],
                )
                out, baseline = edge_sweep(
                    model,
                    corrupted_tokens,
                    values,
                    indices,
                    metrics,
                    budget // 2,
                    progress,
                    True,
                    bar=bar,
                )
                scores[todo] = out[:, 0] - baseline[0]
    bar.close()
    scores = scores[torch.as_tensor(inverse, device=device)]
    return scores if per_pair else scores.mean(-1)


def _hooked_scores(
    model: HookedModel,
    graph: Graph,
    edges: np.ndarray,
    corrupted: torch.Tensor,
    clean: torch.Tensor | None,
    clean_cache: Any,
    clean_rows: Any,
    metric: Callable[[torch.Tensor], torch.Tensor],
    budget: int,
    progress: bool,
) -> torch.Tensor:
    """(edge, batch): each edge patched alone on the model's own forward, its one input given
    its source's clean-minus-corrupted output (:meth:`~actstore.circuits.forward_hooked.
    HookedGraphForward.edge_patches`), many edges a forward, logits only where the metric
    reads them."""
    from tqdm.auto import tqdm

    from .clean import CleanNodes
    from .forward import GraphForward
    from .forward_hooked import HookedGraphForward

    fwd = GraphForward(model, graph)
    assert isinstance(fwd, HookedGraphForward)  # the families whose blocks are not run by hand
    batch, n_pos = (int(n) for n in corrupted.shape)
    with torch.no_grad():
        corrupted_logits = model(corrupted)
    _check_metric(metric, corrupted_logits, batch)
    metrics = Metrics({"metric": metric}, True, batch, n_pos)
    baseline = metrics.evaluate(metrics.select(corrupted_logits))[0, 0]  # (batch,)
    clean_out = CleanNodes(
        model, clean_cache if clean_cache is not None else clean, graph, n_pos, batch, clean_rows
    )
    deltas = clean_out(0, batch) - fwd.node_outputs(corrupted)  # (upstream, batch, pos, d_model)
    positions = metrics.positions if metrics.restricted else None
    # the per-head input copies, the largest hook
    qkv_inputs = 3 * int(model.cfg.n_heads) * n_pos * fwd.d_model
    row = variant_row_bytes(model, n_pos, qkv_inputs, full_logits=positions is None)
    per_chunk = max(1, budget // max(1, batch * row))
    scores = torch.zeros(len(edges), batch, device=fwd.device)
    bar = tqdm(total=len(edges), desc="exact edge patching", disable=not progress)
    for a in range(0, len(edges), per_chunk):
        chunk = [int(e) for e in edges[a : a + per_chunk]]
        # (edge * batch, pos', vocab)
        logits = fwd.edge_patches(corrupted, chunk, deltas, positions).flatten(0, 1)
        sel = (
            logits[..., list(metrics.token_ids)]
            if positions is not None
            else metrics.select(logits)
        )
        scores[a : a + len(chunk)] = metrics.evaluate(sel)[:, 0] - baseline
        bar.update(len(chunk))
    bar.close()
    return scores


def _parse_edges(graph: Graph, edges: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if edges is None:
        return np.arange(graph.n_edges, dtype=np.int64)
    arr = np.asarray(edges)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(
            f"edges must be a 1-D sequence of integer edge numbers, got an array of shape {arr.shape} "
            f"and dtype {arr.dtype}; use graph.edge_index(names) to number edges by name."
        )
    bad = arr[(arr < 0) | (arr >= graph.n_edges)]
    if bad.size:
        raise ConfigError(
            f"edge numbers {bad[:5].tolist()} are outside the graph (edges 0..{graph.n_edges - 1} of a "
            f"{graph.n_layers}-layer, {graph.n_heads}-head model); use graph.edge_index(names) or "
            "graph.edges_into(...) to pick edges."
        )
    return arr.astype(np.int64)


def _parse_tokens(
    model: HookedModel, corrupted: torch.Tensor, clean: torch.Tensor | None, clean_cache: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    device = torch.device(model.cfg.device)
    corrupted = torch.as_tensor(corrupted)
    corrupted = (corrupted[None] if corrupted.ndim == 1 else corrupted).to(device)
    if corrupted.ndim != 2:
        raise ConfigError(
            f"corrupted_tokens must be (batch, pos) token ids, got shape {tuple(corrupted.shape)}."
        )
    if clean is None:
        if clean_cache is None:
            raise ConfigError(
                "exact_edge_scores needs the clean run: pass clean_tokens, or clean_cache (an "
                "ActivationCache, or an ActivationStore with clean_rows)."
            )
        return corrupted, None
    clean = torch.as_tensor(clean)
    clean = (clean[None] if clean.ndim == 1 else clean).to(device)
    if clean.shape != corrupted.shape:
        raise ConfigError(
            f"clean_tokens {tuple(clean.shape)} and corrupted_tokens {tuple(corrupted.shape)} differ in "
            "shape; each clean prompt needs a corrupted one of the same token length."
        )
    return corrupted, clean


def _check_metric(
    metric: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, batch: int
) -> None:
    if not callable(metric):
        raise ConfigError(
            f"metric must be a callable (logits (batch, pos, d_vocab) -> (batch,)), got {metric!r}."
        )
    with torch.no_grad():
        shape = tuple(torch.as_tensor(metric(logits)).shape)
    if shape != (batch,):
        raise ConfigError(
            f"metric must return one value per prompt pair, shape ({batch},), on the corrupted run's "
            f"logits; it returned shape {shape}. Return per-pair values (e.g. "
            "patching.LogitDiff(answer, wrong, per_example=True)); the scores are their mean."
        )


def _source_hooks(graph: Graph, sources: Sequence[int]) -> list[str]:
    """The hooks whose clean and corrupted values give the sources' deltas."""
    out = []
    for u in sources:
        node = graph.upstream[u]
        out.append(
            _INPUT
            if node.kind == "input"
            else hook_name("z" if node.kind == "head" else "mlp_out", node.layer)
        )
    return sorted(set(out))


def _clean(
    model: HookedModel,
    tokens: torch.Tensor | None,
    cache: Any,
    rows: Any,
    hooks: Sequence[str],
    n_pos: int,
    batch: int,
) -> dict[str, torch.Tensor]:
    """The clean values of ``hooks``: read once from the cache or store, or from one run of ``tokens``."""
    if cache is None:
        assert tokens is not None
        cache = capture(model, tokens, hooks)[1]
    missing = (
        [h for h in hooks if h not in cache.sites] if isinstance(cache, ActivationStore) else []
    )
    if missing:
        raise StoreMismatchError(
            f"Store '{cache.path}' has no activations for {', '.join(missing[:3])}; exact edge "
            "patching reads the clean run's source outputs. Cache the clean prompts with --sites "
            f"{STORE_SITES}, or pass an ActivationCache (or clean_tokens)."
        )
    source = CleanSource(cache, model, n_pos, batch, rows)
    return {h: source[h] for h in hooks}


def _delta(
    model: HookedModel, node: Node, clean: dict[str, torch.Tensor], corr: dict[str, torch.Tensor]
) -> torch.Tensor:
    """The node's clean-minus-corrupted write to the residual, (batch, pos, d_model)."""
    dtype = bridge_dtype(model)
    if node.kind == "head":
        name = hook_name("z", node.layer)
        w_o = model.blocks[node.layer].attn.W_O[node.head]  # (d_head, d_model)
        return clean[name][:, :, node.head] @ w_o - corr[name][:, :, node.head].to(dtype) @ w_o
    name = _INPUT if node.kind == "input" else hook_name("mlp_out", node.layer)
    return clean[name] - corr[name].to(dtype)


def _reader_index(graph: Graph, edge: int) -> list[int]:
    d = graph.downstream[graph.dst[edge]]
    return [int(d.head)] if d.kind in ("q", "k", "v") else []


def _groups(
    model: HookedModel, reader: str, sources: list[int], batch: int, n_pos: int, budget: int
) -> list[list[int]]:
    """``sources`` in groups whose edge values (and the reader's work on them) fit ``budget`` bytes."""
    cfg = model.cfg
    d_model = int(cfg.d_model)
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d_model)
    width = int(cfg.n_heads) * int(cfg.d_head) if reader in ("q", "k", "v") else d_model
    item = torch.finfo(bridge_dtype(model)).bits // 8
    per_source = (
        batch * n_pos * item * (3 * width + 4 * d_model + (d_mlp if reader == "mlp" else 0))
    )
    size = max(1, budget // per_source)
    return [sources[i : i + size] for i in range(0, len(sources), size)]
