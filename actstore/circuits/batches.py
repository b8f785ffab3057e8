"""`actstore circuit`'s work in batches of ``--batch-pairs`` prompt pairs: each method's edge
scores, and the faithfulness curve of the circuits they pick, computed a batch at a time.
The batches are the same whatever the number of processes; under torchrun / accelerate they
are dealt round-robin, and every result is gathered in batch order on every process, so the
results are the same, byte for byte, for any number of processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..model_protocol import HookedModel
from ..parallel import Group
from ..store import ActivationStore
from .circuit import select_circuit
from .config import CircuitJobConfig
from .faithfulness import Faithfulness, default_sizes, faithfulness
from .graph import Graph

__all__ = ["Batches", "edge_scorer"]


def edge_scorer(method: str) -> Callable[..., torch.Tensor]:
    """The method's edge-score function; ``steps`` applies to the eap-ig methods only."""
    if method == "exact":
        from .exact import exact_edge_scores

        return lambda *args, steps, **kw: exact_edge_scores(*args, **kw)
    from .attribution import edge_attribution

    return lambda *args, steps, **kw: edge_attribution(*args, method=method, steps=steps, **kw)


class Batches:
    """The job's work in batches of ``--batch-pairs`` pairs, the same batches for any number
    of processes, dealt round-robin; each result gathered in batch order on every process."""

    def __init__(
        self,
        cfg: CircuitJobConfig,
        procs: Group,
        bridge: HookedModel,
        metric: Any,
        clean: torch.Tensor,
        corrupted: torch.Tensor,
        store: ActivationStore | None,
        rows: list[int] | None,
    ):
        self.cfg, self.procs, self.bridge, self.metric = cfg, procs, bridge, metric
        self.clean, self.corrupted, self.store, self.rows = clean, corrupted, store, rows
        n = int(clean.shape[0])
        self.bounds = [(a, min(a + cfg.batch_pairs, n)) for a in range(0, n, cfg.batch_pairs)]
        self.n = n

    def _each(self, fn: Callable[[int, int, Any], Any], what: str) -> list[Any]:
        """``fn(a, b, metric of pairs a..b-1)`` of every batch, in batch order."""
        mine = {
            i: fn(a, b, self.metric if (a, b) == (0, self.n) else self.metric.for_pairs(a, b))
            for i, (a, b) in (
                (i, self.bounds[i]) for i in self.procs.owned(range(len(self.bounds)))
            )
        }
        for share in self.procs.all_gather(mine, what):
            mine.update(share)
        return [mine[i] for i in range(len(self.bounds))]

    def scores(self, method: str, graph: Graph) -> np.ndarray:
        """(edge,) float64: the method's scores, the mean over every pair of the per-pair ones."""
        cfg = self.cfg
        if cfg.progress and self.procs.main:
            print(
                f"scoring {graph.n_edges} edges: {method}"
                + (
                    f" ({self.procs.world} processes share {len(self.bounds)} batches of pairs)"
                    if self.procs.distributed
                    else ""
                )
            )

        def batch(a: int, b: int, metric: Any) -> np.ndarray:
            extra = (
                {"clean_cache": self.store, "clean_rows": self.rows[a:b]}
                if self.store is not None and self.rows is not None
                else {}
            )
            s = edge_scorer(method)(
                self.bridge,
                self.clean[a:b],
                self.corrupted[a:b],
                metric,
                graph=graph,
                steps=cfg.steps,
                memory_budget=cfg.memory_budget,
                per_pair=True,
                progress=cfg.progress and self.procs.main,
                **extra,
            )
            return s.detach().double().cpu().numpy()  # (edge, pair)

        return np.concatenate(
            self._each(batch, f"every batch of pairs was scored ({method})"), axis=1
        ).mean(1)

    def faithfulness(self, graph: Graph, signed: np.ndarray, pick: dict[str, Any]) -> Faithfulness:
        """The faithfulness curve of the circuits the scores pick, at the default sizes and --top."""
        from .forward import GraphForward

        fwd = GraphForward(self.bridge, graph)
        sizes = sorted(set(default_sizes(graph.n_edges)) | {self.cfg.top})
        masks = np.stack([select_circuit(graph, signed, n, **pick).mask for n in sizes])

        def batch(a: int, b: int, metric: Any) -> Faithfulness:
            return faithfulness(
                self.bridge,
                self.clean[a:b],
                self.corrupted[a:b],
                metric,
                masks,
                forward=fwd,
                memory_budget=self.cfg.memory_budget,
                progress=self.cfg.progress and self.procs.main,
                sizes=sizes,
                positions=metric.positions,
            )

        return Faithfulness.concat(self._each(batch, "every batch of pairs was measured"))
