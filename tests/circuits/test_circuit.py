"""Circuit selection and pruning against naive references written from the definitions:
greedy as a scan of every candidate edge at each step, pruning as a fixed point over
edge names."""

import numpy as np
import pytest

from actstore.circuits.circuit import prune, select_circuit, select_edges
from actstore.circuits.graph import Graph
from actstore.errors import ConfigError


def _reader(graph: Graph, e: int) -> str:
    return graph.downstream[graph.dst[e]].node  # 'a1.h0' for a1.h0<q>, 'm1', 'logits'


def _naive_prune(graph: Graph, edges) -> set[int]:
    edges = set(int(e) for e in edges)
    while True:  # drop edges until none is dead: a fixed point, by names
        fed = {_reader(graph, e) for e in edges} | {"input"}
        feeding = {graph.upstream[graph.src[e]].name for e in edges} | {"logits"}
        reached = {"input"}
        changed = True
        while changed:
            changed = False
            for e in edges:
                if (
                    graph.upstream[graph.src[e]].name in reached
                    and _reader(graph, e) not in reached
                ):
                    reached.add(_reader(graph, e))
                    changed = True
        reaches = {"logits"}
        changed = True
        while changed:
            changed = False
            for e in edges:
                if (
                    _reader(graph, e) in reaches
                    and graph.upstream[graph.src[e]].name not in reaches
                ):
                    reaches.add(graph.upstream[graph.src[e]].name)
                    changed = True
        keep = {
            e
            for e in edges
            if graph.upstream[graph.src[e]].name in reached and _reader(graph, e) in reaches
        }
        assert all(
            graph.upstream[graph.src[e]].name in fed and _reader(graph, e) in feeding for e in keep
        )
        if keep == edges:
            return keep
        edges = keep


def _naive_greedy(graph: Graph, key: np.ndarray, n: int) -> list[int]:
    nodes, chosen = {"logits"}, []
    for _ in range(n):
        cands = [e for e in range(graph.n_edges) if e not in chosen and _reader(graph, e) in nodes]
        best = max(cands, key=lambda e: (key[e], -e))
        chosen.append(best)
        nodes.add(graph.upstream[graph.src[best]].name)
    return sorted(chosen)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_and_prune_equal_naive_references(seed):
    g = Graph(3, 2)
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=g.n_edges).round(1)  # rounded: many ties, broken by edge number
    for absolute in (True, False):
        key = np.abs(scores) if absolute else scores
        for n in (0, 1, 5, 17, 60):
            got = select_edges(g, scores, n, how="greedy", absolute=absolute)
            assert got.tolist() == _naive_greedy(g, key, n)
            top = select_edges(g, scores, n, absolute=absolute)
            order = sorted(range(g.n_edges), key=lambda e: (-key[e], e))[:n]
            assert top.tolist() == sorted(order)
            for chosen in (got, top):
                c = select_circuit(
                    g, scores, n, how="greedy" if chosen is got else "top-n", absolute=absolute
                )
                assert set(c.edges.tolist()) == _naive_prune(g, chosen)
                assert c.n_selected == n and c.n_edges == len(c.edges) <= n
                assert c.mask.sum() == c.n_edges


def test_pruning_examples():
    g = Graph(2, 2)
    ix = g.edge_index
    chain = ix(["input->a0.h0<v>", "a0.h0->a1.h1<q>", "a1.h1->logits"])
    assert prune(g, chain).tolist() == sorted(chain.tolist())
    # a head's q, k and v inputs belong to one node: feeding k and reading its output joins them
    via_k = ix(["input->a0.h1<k>", "a0.h1->logits"])
    assert prune(g, via_k).tolist() == sorted(via_k.tolist())
    # no input-to-logits path
    dangling = ix(["input->a0.h0<q>", "a0.h1->logits", "a0.h0->m0", "input->m1"])
    assert prune(g, dangling).tolist() == []
    c = select_circuit(g, np.isin(np.arange(g.n_edges), chain).astype(float), 3)
    assert c.nodes == ("input", "a0.h0", "a1.h1", "logits") and c.names == [
        g.names[i] for i in sorted(chain)
    ]


def test_full_graph_is_its_own_circuit_and_signed_picks_positive():
    g = Graph(2, 3)
    scores = np.linspace(-1, 1, g.n_edges)
    assert select_circuit(g, scores, g.n_edges).n_edges == g.n_edges
    n = g.n_edges
    # the most positive
    assert select_edges(g, scores, 10, absolute=False).tolist() == list(range(n - 10, n))
    # the largest |score|, both ends
    assert select_edges(g, scores, 10).tolist() == [
        *range(5),
        *range(n - 5, n),
    ]


def test_bad_input():
    g = Graph(2, 2)
    with pytest.raises(ConfigError, match="pick n from 0 to"):
        select_edges(g, np.zeros(g.n_edges), g.n_edges + 1)
    with pytest.raises(ConfigError, match="one score per edge"):
        select_edges(g, np.zeros(3), 1)
    with pytest.raises(ConfigError, match="must be finite"):
        select_edges(g, np.full(g.n_edges, np.nan), 1)
    with pytest.raises(ConfigError, match="unknown selection"):
        select_edges(g, np.zeros(g.n_edges), 1, how="best")  # type: ignore[arg-type]


def test_compare_scores_equals_scipy():
    from scipy import stats

    from actstore.circuits.job import compare_scores

    rng = np.random.default_rng(1)
    exact = rng.normal(size=300).round(1)  # ties: ranks averaged, as scipy's
    approx = exact + rng.normal(scale=0.5, size=300)
    c = compare_scores(exact, approx, 20)
    assert c["pearson"] == pytest.approx(stats.pearsonr(exact, approx)[0], abs=1e-12)
    assert c["spearman"] == pytest.approx(stats.spearmanr(exact, approx)[0], abs=1e-12)
    top = lambda s: set(np.argsort(-np.abs(s), kind="stable")[:20])  # noqa: E731
    assert c["top_overlap"] == len(top(exact) & top(approx)) / 20 and 0 < c["top_overlap"] < 1
    assert compare_scores(exact, exact, 20)["top_overlap"] == 1.0
