"""Circuit discovery over the edges of a model (the EAP-IG graph, graph.py): exact edge
patching (exact.py), EAP and EAP-IG (attribution.py), circuits and their faithfulness
(circuit.py, faithfulness.py), path patching (paths.py), all on one masked edge forward
(forward.py for GPT-2; forward_hooked.py, the model's own forward and hooks, for the other
families), and the `actstore circuit` job (job.py)."""

from .attribution import edge_attribution
from .circuit import Circuit, prune, select_circuit, select_edges
from .config import CircuitJobConfig
from .exact import exact_edge_scores
from .faithfulness import Faithfulness, faithfulness, faithfulness_curve
from .forward import GraphForward
from .forward_hooked import HookedGraphForward  # noqa: F401  (GraphForward's form for the other families)
from .graph import Graph
from .job import CircuitJobResult, compare_scores, find_circuit
from .metrics import CircuitMetric, circuit_metric
from .paths import Paths, path_patch, path_patch_sweep

__all__ = [
    "Graph",
    "GraphForward",
    "exact_edge_scores",
    "edge_attribution",
    "circuit_metric",
    "CircuitMetric",
    "Circuit",
    "select_circuit",
    "select_edges",
    "prune",
    "Faithfulness",
    "faithfulness",
    "faithfulness_curve",
    "Paths",
    "path_patch",
    "path_patch_sweep",
    "CircuitJobConfig",
    "CircuitJobResult",
    "find_circuit",
    "compare_scores",
]
