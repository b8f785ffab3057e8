"""Path-patching variants and the edge masks they compile to: :class:`Paths` (one variant's
senders, receivers and intermediates, checked as given), its compilation into a row of the
mask of the graph's forward (the edges that read live values; every other edge reads the base
run's node outputs), the checks that the names it holds form paths in order (ConfigError
naming the variant and the fix), and which variants can share one forward. How such a mask
realises the classic path-patching recipe, and the run itself: :mod:`actstore.circuits.paths`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .graph import Graph

__all__ = ["Names", "Paths", "Variant", "group_variants", "path_mask", "plan_variants"]

Names = str | Sequence[str]


_FORMS = {
    "senders": "'input', 'a{L}.h{H}' (a head's output) or 'm{L}' (an MLP's output)",
    "receivers": "'a{L}.h{H}' (its q, k and v inputs), 'a{L}.h{H}<q|k|v>', 'm{L}' or 'logits'",
    "through": "'a{L}.h{H}', 'a{L}.h{H}<q|k|v>' or 'm{L}', or () for none",
}


def _names(value: Names | None, role: str) -> tuple[str, ...]:
    if value is None and role == "through":
        return ()
    if isinstance(value, str):
        return (value,)
    ok = isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping))
    out = tuple(value) if ok else ()  # type: ignore[arg-type]
    if not ok or not all(isinstance(n, str) for n in out):
        raise ConfigError(
            f"{role} must be a name or a list of names, each {_FORMS[role]}; got {value!r}."
        )
    return out


@dataclass(frozen=True, init=False)
class Paths:
    """One path-patching variant.

    ``senders``: nodes whose outputs come from the other run (``input``, ``a{L}.h{H}``,
    ``m{L}``). ``receivers``: inputs that get the senders' effect (``a{L}.h{H}<q|k|v>``,
    ``m{L}``, ``logits``; a head's name means its q, k and v inputs). ``through``:
    intermediate nodes (or single head inputs, ``a{L}.h{H}<v>``) that are recomputed
    from the senders' effect and pass it on: the patched paths are every path from a
    sender to a receiver whose inner nodes all lie in ``through`` (None or () for none). Each
    of the three is a name or a list of names; anything else is a ConfigError naming the
    accepted forms. ``direct``: whether
    the sender -> receiver edges themselves are among them; default: only when
    ``through`` is empty (``through=["m1"]`` alone patches sender -> m1 -> receiver)."""

    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    through: tuple[str, ...] = ()
    direct: bool | None = None

    def __init__(
        self, senders: Names, receivers: Names, through: Names = (), direct: bool | None = None
    ):
        object.__setattr__(self, "senders", _names(senders, "senders"))
        object.__setattr__(self, "receivers", _names(receivers, "receivers"))
        object.__setattr__(self, "through", _names(through, "through"))
        if direct is not None and not isinstance(direct, (bool, np.bool_)):
            raise ConfigError(
                f"direct must be True, False or None (the default: direct paths only without "
                f"through=), got {direct!r}."
            )
        object.__setattr__(self, "direct", None if direct is None else bool(direct))

    @property
    def uses_direct(self) -> bool:
        return not self.through if self.direct is None else bool(self.direct)


@dataclass(frozen=True)
class Variant:
    """One compiled variant. Its mask row: an edge u -> d reads live values where d is a
    receiver's or an intermediate's input and u a sender or an intermediate (but a
    sender -> receiver edge when ``cut_direct``), or where d is any other input and u a
    receiver node or downstream of one; every other edge reads the base run."""

    senders: np.ndarray  # upstream indices
    changed: np.ndarray  # upstream indices of nodes whose output differs from the base run's
    on_path: np.ndarray  # (n_upstream,) bool: senders and intermediates
    into_path: np.ndarray  # (n_downstream,) bool: receivers' and intermediates' inputs
    after: np.ndarray  # (n_upstream,) bool: receiver nodes and their descendants (recomputed)
    receiving: np.ndarray  # (n_downstream,) bool: the receivers' inputs
    cut_direct: bool

    def row(self, graph: Graph, edges: np.ndarray | slice = slice(None)) -> np.ndarray:
        src, dst = graph.src[edges], graph.dst[edges]
        live = np.where(self.into_path[dst], self.on_path[src], self.after[src])
        if self.cut_direct:
            is_s = np.zeros_like(self.on_path)
            is_s[self.senders] = True
            live &= ~(is_s[src] & self.receiving[dst])
        return live


@dataclass(frozen=True)
class _Tables:
    up: dict[str, int]  # upstream node name -> index
    inputs: dict[str, tuple[int, ...]]  # downstream input or node name -> downstream indices
    node_of: np.ndarray  # (n_downstream,) upstream index of the node reading it, -1 for logits
    below: np.ndarray  # (n_upstream, n_upstream) bool: [r, w] w is r or computed from r's output


def _tables(graph: Graph) -> _Tables:
    """The graph's tables, computed once per graph (kept on it, as its edge lookup)."""
    cached = graph.__dict__.get("_path_tables")
    if cached is None:
        cached = _make_tables(graph)
        object.__setattr__(graph, "_path_tables", cached)
    return cached


def _make_tables(graph: Graph) -> _Tables:
    up = {u.name: i for i, u in enumerate(graph.upstream)}
    inputs: dict[str, list[int]] = {}
    for j, d in enumerate(graph.downstream):
        inputs.setdefault(d.name, []).append(j)
        if d.node != d.name:
            inputs.setdefault(d.node, []).append(j)
    node_of = np.array([up.get(d.node, -1) for d in graph.downstream], dtype=np.int64)
    reads = np.zeros((len(up), len(up)), dtype=bool)  # [u, w]: node w reads u's output
    into_node = node_of[graph.dst] >= 0
    reads[graph.src[into_node], node_of[graph.dst[into_node]]] = True
    below = reads | np.eye(len(up), dtype=bool)
    # transitive closure (one step for GPT-2's graph, where reading is transitive already)
    while True:
        step = (below.astype(np.float32) @ below.astype(np.float32)) > 0
        if (step == below).all():
            break
        below = step
    return _Tables(up, {k: tuple(v) for k, v in inputs.items()}, node_of, below)


def _parse_inputs(
    t: _Tables, names: Sequence[str], role: str, where: str
) -> tuple[list[int], list[int]]:
    """(downstream indices, upstream indices of their nodes) of receiver or intermediate names."""
    ins: list[int] = []
    for n in names:
        if n not in t.inputs or (role == "intermediate" and n == "logits"):
            kinds = "'a{L}.h{H}', 'a{L}.h{H}<q|k|v>', 'm{L}'" + (
                ", 'logits'" if role == "receiver" else ""
            )
            raise ConfigError(
                f"{where}{role} {n!r} is not an input of the graph; {role}s are {kinds}."
            )
        ins += [j for j in t.inputs[n] if j not in ins]
    return ins, sorted({int(t.node_of[j]) for j in ins if t.node_of[j] >= 0})


def _compile(graph: Graph, t: _Tables, p: Paths, where: str) -> Variant:
    if not p.senders or not p.receivers:
        raise ConfigError(
            f"{where}path patching needs at least one sender and one receiver, got senders="
            f"{list(p.senders)} and receivers={list(p.receivers)}."
        )
    for n in p.senders:
        if n not in t.up:
            raise ConfigError(
                f"{where}sender {n!r} is not a node of the graph; senders are 'input', "
                "'a{L}.h{H}' (a head's output) and 'm{L}' (an MLP's output)."
            )
    if p.direct is False and not p.through:
        raise ConfigError(
            f"{where}direct=False leaves no path without intermediates; name them in through=, or "
            "drop direct=False."
        )
    s = sorted({t.up[n] for n in p.senders})
    r_in, r_nodes = _parse_inputs(t, p.receivers, "receiver", where)
    i_in, i_nodes = _parse_inputs(t, p.through, "intermediate", where)
    changed: np.ndarray = (
        np.asarray(t.below[r_nodes].any(0)) if r_nodes else np.zeros(len(t.up), dtype=bool)
    )
    name = [u.name for u in graph.upstream]
    for role, nodes in (("sender", s), ("intermediate", i_nodes)):
        bad = [name[u] for u in nodes if changed[u]]
        if bad:
            raise ConfigError(
                f"{where}{role} {bad[0]!r} is a receiver or computed from one; a {role} must come "
                "before every receiver (receivers' effects are not path-patched)."
            )
    both = set(s) & set(i_nodes)
    if both:
        raise ConfigError(
            f"{where}{name[min(both)]!r} is both a sender and an intermediate; name it once."
        )
    on_path, into_path = (
        np.zeros(len(t.up), dtype=bool),
        np.zeros(len(graph.downstream), dtype=bool),
    )
    on_path[s + i_nodes] = True
    into_path[r_in + i_in] = True
    receiving = np.zeros_like(into_path)
    receiving[r_in] = True
    moved = changed.copy()
    moved[i_nodes] = True
    v = Variant(
        np.asarray(s, dtype=np.int64),
        np.flatnonzero(moved),
        on_path,
        into_path,
        changed,
        receiving,
        not p.uses_direct,
    )
    _check_paths(t, v, graph, s, i_nodes, i_in, r_in, where)
    return v


def _check_paths(
    t: _Tables,
    v: Variant,
    graph: Graph,
    s: list[int],
    i_nodes: list[int],
    i_in: list[int],
    r_in: list[int],
    where: str,
) -> None:
    """Every intermediate lies on a path from a sender to a receiver along live edges, every
    sender starts one and every receiver ends one."""
    name = [u.name for u in graph.upstream]
    into = np.flatnonzero(v.into_path[graph.dst])  # the edges into path inputs
    keep = into[v.row(graph, into)]
    e_src, e_dst = graph.src[keep], graph.dst[keep]  # the live ones
    node_in = t.node_of[e_dst]

    def hears(dst_ok: np.ndarray, from_nodes: set[int]) -> bool:
        return bool((dst_ok & np.isin(e_src, sorted(from_nodes))).any())

    reached = set(s)
    for u in i_nodes:  # forward order
        if not hears(node_in == u, reached):
            raise ConfigError(
                f"{where}intermediate {name[u]!r} is not after any sender (through the inputs named); "
                "drop it from through=, or add a sender before it."
            )
        reached.add(u)
    for j in r_in:
        if not hears(e_dst == j, reached):
            raise ConfigError(
                f"{where}receiver {graph.downstream[j].name!r} reads no sender"
                f"{' or intermediate' if i_nodes else ''}: it is not after them; drop it, or choose "
                "senders before it."
            )
    useful: set[int] = set()
    for u in list(reversed(i_nodes)) + s:
        into_useful = np.isin(e_dst, r_in) | np.isin(node_in, sorted(useful))
        if not (into_useful & (e_src == u)).any():
            role = "sender" if u in s else "intermediate"
            raise ConfigError(
                f"{where}{role} {name[u]!r} is not before any receiver"
                f"{' along through=' if i_nodes else ''}; drop it, or choose receivers after it."
            )
        useful.add(u)


def plan_variants(graph: Graph, variants: Paths | Sequence[Paths]) -> list[Variant]:
    """The compiled variants; ConfigError, naming the variant and the fix, for unknown names
    and senders, intermediates or receivers out of order."""
    if isinstance(variants, Paths):
        variants = [variants]
    elif isinstance(variants, Iterable) and not isinstance(variants, (str, bytes, Mapping)):
        variants = list(variants)
    if not variants:
        raise ConfigError(
            "path patching needs at least one variant (a Paths of senders and receivers)."
        )
    t = _tables(graph)
    out = []
    for v, p in enumerate(variants):
        if not isinstance(p, Paths):
            raise ConfigError(
                f"variant {v} is a {type(p).__name__}; pass Paths(senders, receivers, through=...)."
            )
        out.append(_compile(graph, t, p, f"variant {v}: " if len(variants) > 1 else ""))
    return out


def path_mask(graph: Graph, variants: Paths | Sequence[Paths]) -> np.ndarray:
    """(variant, n_edges) bool: the edges that read live values in each variant's forward,
    the rest reading the base run's node outputs (see :mod:`actstore.circuits.paths`); ConfigError
    for unknown names and senders, intermediates or receivers out of order."""
    return np.stack([v.row(graph) for v in plan_variants(graph, variants)])


def group_variants(plan: Sequence[Variant]) -> list[list[int]]:
    """Variants that can share a forward: a node given the other run's output in one
    (a sender) must hold its base output in the others, so must not change there."""
    groups: list[tuple[list[int], set[int], set[int]]] = []
    for v, var in enumerate(plan):
        s, c = set(var.senders.tolist()), set(var.changed.tolist())
        for rows, g_s, g_c in groups:
            if not (s & g_c) and not (c & g_s):
                rows.append(v)
                g_s |= s
                g_c |= c
                break
        else:
            groups.append(([v], s, c))
    return [rows for rows, _, _ in groups]
