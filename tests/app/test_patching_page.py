"""The patching page (actstore/app/views/patching.py) and its numbers
(actstore/app/patching_data.py), on the trained demo model.

The plain functions against independent references: activation patching against
``transformer_lens.patching`` with a hand-written normalised metric; attribution patching
against a gradient taken by hand with hooks; exact edge patching against single-edge
patches written with hooks (tests/circuits/edge_reference.py); EAP against the library's
``edge_attribution``; the edge tables against their definitions. Pairs differ late (the
demo's IOI task: position 10) and early (a typed pair: position 2); every comparison is
within 1e-4 of the spread of the reference's values, which it asserts is large.

The page under Streamlit's AppTest: with the default task and with typed prompts, the
heatmaps' numbers equal the library's; bad input shows the library's message, not a
traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import patching as tl_patching

from actstore.app import patching_data as pd
from actstore.circuits import edge_attribution
from actstore.circuits.graph import Graph
from actstore.errors import ConfigError

from ..circuits.edge_reference import edge_by_hooks
from ..fidelity_cases import assert_close_rel
from ..patching.conftest import _one_thread  # noqa: F401  (one torch thread: the references run many tiny forwards)

# a typed pair that differs early (position 2: everything after it differs too)
EARLY = pd.typed_record(
    "When Mary and John went to the store, John gave a drink to",
    "When Alice and John went to the store, John gave a drink to",
    " Mary",
    " John",
)


@pytest.fixture(scope="module")
def model():
    from actstore.models import load_model

    return load_model("actstore-demo", device="cpu").bridge


@pytest.fixture(scope="module", params=["late", "early"])
def case(request, model):
    """(pairs, their first differing position, the raw clean and corrupted logit differences, clean cache)."""
    tok = model.tokenizer
    records = pd.task_records(pd.DEMO_IOI, 4, 0, tok) if request.param == "late" else [EARLY]
    pairs = pd.tokenize(records, tok, request.param)
    first = int(torch.nonzero((pairs.clean != pairs.corrupted).any(0))[0, 0])
    assert first == (10 if request.param == "late" else 2)
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(pairs.clean)
        corr_logits = model(pairs.corrupted)
    b = torch.arange(len(pairs.answer))
    raw = lambda logits: (logits[b, -1, pairs.answer] - logits[b, -1, pairs.wrong]).double()  # noqa: E731
    return pairs, raw(clean_logits), raw(corr_logits), cache


def _normalised(clean: torch.Tensor, corr: torch.Tensor, pairs, per_pair: bool = False):
    """The normalised logit difference written by hand: (ld - mean corrupted) / (mean clean - mean corrupted)."""
    b = torch.arange(len(pairs.answer))

    def metric(logits: torch.Tensor) -> torch.Tensor:
        ld = (logits[b, -1, pairs.answer] - logits[b, -1, pairs.wrong]).double()
        out = (ld - corr.mean()) / (clean.mean() - corr.mean())
        return out if per_pair else out.mean()

    return metric


@pytest.fixture(scope="module")
def sweeps(case, model):
    return pd.run_sweeps(model, case[0])


def test_task_records_are_the_librarys_pairs(model):
    from actstore.demo import data
    from actstore.patching import tasks

    assert pd.task_records(pd.DEMO_IOI, 3, 0, model.tokenizer) == data.ioi_pairs(3, template=0)
    want = [p.to_json() for p in tasks.make_pairs("ioi-flip", 3, 5, model.tokenizer)]
    assert pd.task_records("ioi-flip", 3, 5, model.tokenizer) == want
    assert pd.default_task("actstore-demo") == pd.DEMO_IOI and pd.default_task("gpt2") == "ioi"
    assert "factual" not in pd.TASK_CHOICES and set(pd.TASK_CHOICES) - {pd.DEMO_IOI} <= set(
        tasks.TASKS
    )


def test_baselines_equal_the_models_logits(case, sweeps):
    pairs, clean, corr, _ = case
    np.testing.assert_allclose(
        sweeps.clean_logit_diff, clean.numpy(), rtol=0, atol=1e-4 * float(clean.abs().max())
    )
    np.testing.assert_allclose(
        sweeps.corrupted_logit_diff, corr.numpy(), rtol=0, atol=1e-4 * float(corr.abs().max())
    )
    assert float(clean.mean() - corr.mean()) > 5  # the pairs are well separated


def test_sweeps_equal_transformer_lens_patching(case, sweeps, model):
    pairs, clean, corr, cache = case
    metric = _normalised(clean, corr, pairs)
    with torch.no_grad():
        want = {
            "resid_pre": tl_patching.get_act_patch_resid_pre(model, pairs.corrupted, cache, metric),
            "attn_head_out_all_pos": tl_patching.get_act_patch_attn_head_out_all_pos(
                model, pairs.corrupted, cache, metric
            ),
        }
    for name, ref in want.items():
        assert sweeps.exact[name].shape == tuple(ref.shape)
        assert_close_rel(
            torch.as_tensor(sweeps.exact[name]), ref.float(), min_spread=0.5, what=name
        )


def _attribution_reference(model, pairs, cache, metric, hook_names):
    """Per hook: metric(corrupted) and (clean - corrupted) * d metric / d activation, with hooks."""
    acts, leaves = {}, {}

    def attach(name):
        def fn(act, hook):
            acts[name] = act.detach().clone()
            leaves[name] = torch.zeros_like(act, requires_grad=True)
            return act + leaves[name]

        return fn

    with torch.enable_grad():
        value = metric(
            model.run_with_hooks(pairs.corrupted, fwd_hooks=[(h, attach(h)) for h in hook_names])
        )
        grads = torch.autograd.grad(value, [leaves[h] for h in hook_names])
    return value.detach(), {
        h: ((cache[h] - acts[h]) * g).double() for h, g in zip(hook_names, grads)
    }


def test_attribution_equals_a_gradient_by_hand(case, sweeps, model):
    pairs, clean, corr, cache = case
    n_layers = model.cfg.n_layers
    resid = [f"blocks.{i}.hook_resid_pre" for i in range(n_layers)]
    z = [f"blocks.{i}.attn.hook_z" for i in range(n_layers)]
    base, terms = _attribution_reference(
        model, pairs, cache, _normalised(clean, corr, pairs), resid + z
    )
    # (layer, head)
    want = {
        "resid_pre": base + torch.stack([terms[h].sum((0, 2)) for h in resid]),  # (layer, pos)
        "attn_head_out_all_pos": base + torch.stack([terms[h].sum((0, 1, 3)) for h in z]),
    }
    for name, ref in want.items():
        assert_close_rel(
            torch.as_tensor(sweeps.attribution[name]), ref.float(), min_spread=0.5, what=name
        )
        assert sweeps.correlation[name]["pearson"] == pytest.approx(
            np.corrcoef(sweeps.exact[name].ravel(), sweeps.attribution[name].ravel())[0, 1],
            abs=1e-6,
        )


@pytest.fixture(scope="module")
def edges(case, model):
    calls = []
    return pd.run_edges(
        model, case[0], chunk=100, on_progress=lambda done, total: calls.append((done, total))
    ), calls


def test_exact_edges_equal_single_edge_patches_with_hooks(case, edges, model):
    pairs, clean, corr, cache = case
    result, calls = edges
    graph = result.graph
    # 479 edges, 100 a chunk
    assert calls == [(min(k * 100, graph.n_edges), graph.n_edges) for k in range(1, 6)]
    with torch.no_grad():
        corr_logits, corr_cache = model.run_with_cache(pairs.corrupted)
    metric = _normalised(clean, corr, pairs, per_pair=True)
    rng = np.random.default_rng(0)
    sample = np.union1d(
        np.argsort(-np.abs(result.exact))[:8], rng.choice(graph.n_edges, 24, replace=False)
    )
    want = torch.stack(
        [
            edge_by_hooks(
                model, pairs.corrupted, cache, corr_cache, corr_logits, graph, int(e), metric
            ).mean()
            for e in sample
        ]
    )
    assert_close_rel(
        torch.as_tensor(result.exact[sample]), want.float(), min_spread=0.3, what="exact edges"
    )


def test_eap_is_the_librarys(case, edges, model):
    pairs, clean, corr, _ = case
    result, _ = edges
    from actstore.circuits import circuit_metric

    with torch.no_grad():
        metric = circuit_metric(
            "norm-logit-diff",
            answer=pairs.answer,
            wrong=pairs.wrong,
            clean_logits=model(pairs.clean),
            corrupted_logits=model(pairs.corrupted),
        )
    want = edge_attribution(
        model, pairs.clean, pairs.corrupted, metric, method="eap", progress=False
    )
    assert_close_rel(torch.as_tensor(result.eap), want.float(), min_spread=0.3, what="eap")
    assert result.correlation["pearson"] == pytest.approx(
        np.corrcoef(result.exact, result.eap)[0, 1], abs=1e-6
    )


def test_edge_tables_follow_their_definitions():
    graph = Graph(3, 2)
    scores = np.random.default_rng(1).normal(size=graph.n_edges)
    rows, cols, grid = pd.edge_matrix(graph, scores)
    by_name = dict(zip(graph.names, scores))
    for i, u in enumerate(rows):
        for j, d in enumerate(cols):
            want = by_name.get(f"{u}->{d}")
            assert np.isnan(grid[i, j]) if want is None else grid[i, j] == want, (u, d)
    summary = pd.head_summary(graph, scores)
    for layer in range(3):
        for h in range(2):
            own = [s for n, s in by_name.items() if n.startswith(f"a{layer}.h{h}->")]
            assert summary[layer, h] == pytest.approx(sum(own))
    top = pd.top_edges(graph, scores, 5, other=-scores)
    assert [r["edge"] for r in top] == sorted(by_name, key=lambda n: -abs(by_name[n]))[:5]
    assert all(r["eap"] == -r["exact"] == -by_name[r["edge"]] for r in top)


@pytest.mark.parametrize(
    "record, match",
    [
        (
            pd.typed_record(
                "When Mary and John went to the store, John gave a drink to",
                "When Mary and John went to the big store, John gave a drink to",
                " Mary",
                " John",
            ),
            "the clean prompt is 15 tokens and the corrupted one 18",
        ),
        (dict(EARLY, wrong=" Mary"), "are the same token"),
        (dict(EARLY, answer=" Marianne"), "is 5 tokens"),
        (dict(EARLY, corrupted=EARLY["clean"]), "the same tokens"),
    ],
)
def test_bad_pairs_are_the_librarys_errors(model, record, match):
    with pytest.raises(ConfigError, match=match):
        pd.tokenize([record], model.tokenizer)


def test_prompts_beyond_the_context_are_refused(model):
    long = " and".join(["When Mary and John went to the store, John gave a drink to Mary"] * 12)
    pairs = pd.tokenize(
        [pd.typed_record(long + " and John", long + " and Mary", " Mary", " John")], model.tokenizer
    )
    with pytest.raises(ConfigError, match="beyond the model's context of 128"):
        pd.run_sweeps(model, pairs)


def test_pairs_the_model_does_not_separate_are_refused(model):
    same = pd.tokenize([EARLY], model.tokenizer)
    same.corrupted = same.clean.clone()  # identical runs: the normalised effect would be 0 / 0
    with pytest.raises(ConfigError, match="0 / 0"):
        pd.run_sweeps(model, same)


# --- the page, under AppTest ---------------------------------------------------------------------


def _chart(at, key: str) -> dict:
    """The plotly figure of chart ``key`` as the page sent it."""
    import json

    found = [e for e in at.get("plotly_chart") if e.key == f"fig-{key}"]
    assert len(found) == 1, (key, [e.key for e in at.get("plotly_chart")])
    return json.loads(found[0].proto.spec)


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array ({dtype, bdata, shape})."""
    import base64

    if isinstance(value, dict):
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).copy()
        shape = value.get("shape")
        return out.reshape([int(s) for s in str(shape).split(",")]) if shape else out
    return np.array(value, dtype=float)


def _z(at, key: str) -> torch.Tensor:
    return torch.as_tensor(_array(_chart(at, key)["data"][0]["z"]).astype(np.float64))


@pytest.fixture(scope="module")
def default_pairs(model):
    """What the page shows by default (8 pairs of the demo's IOI task, seed 0), by the plain functions."""
    records = pd.task_records(pd.DEMO_IOI, 8, 0, model.tokenizer)
    pairs = pd.tokenize(records, model.tokenizer)
    return pairs, pd.run_sweeps(model, pairs), pd.run_edges(model, pairs)


def _assert_page_shows(at, model, pairs, sweeps, edges) -> None:
    """Every number the page drew equals the plain functions' on the same pairs."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    for key, name in (("patch-resid_pre", "resid_pre"), ("patch-heads", "attn_head_out_all_pos")):
        assert_close_rel(
            _z(at, key), torch.as_tensor(sweeps.exact[name]).double(), min_spread=0.5, what=key
        )
    x = _chart(at, "patch-resid_pre")["data"][0]["x"]
    assert x == pd.position_labels(pairs, model.tokenizer)
    scatter = {t["name"].split(" (r = ")[0]: t for t in _chart(at, "patch-scatter")["data"]}
    for name in pd.SWEEP_KINDS:
        for axis, want in (("x", sweeps.exact[name]), ("y", sweeps.attribution[name])):
            assert_close_rel(
                torch.as_tensor(_array(scatter[name][axis])),
                torch.as_tensor(want.ravel()).double(),
                min_spread=0.5,
                what=f"scatter {axis} {name}",
            )
    grid = pd.edge_matrix(edges.graph, edges.exact)[2]
    assert_close_rel(
        _z(at, "patch-edges"), torch.as_tensor(grid), min_spread=0.3, what="edge heatmap"
    )
    for axis, want in (("x", edges.exact), ("y", edges.eap)):
        assert_close_rel(
            torch.as_tensor(_array(scatter["edges (EAP)"][axis])),
            torch.as_tensor(want).double(),
            min_spread=0.3,
            what=f"scatter {axis} edges",
        )


def test_page_default_task(open_app, model, default_pairs):
    at = open_app("patching")
    _assert_page_shows(at, model, *default_pairs)
    assert at.selectbox(key="patch-task").value == pd.DEMO_IOI


def test_page_typed_pair(open_app, model):
    at = open_app("patching")
    at.radio(key="patch-source").set_value("Typed pair").run()
    for field in ("clean", "corrupted", "answer", "wrong"):
        at.text_input(key=f"patch-{field}").set_value(EARLY[field])
    at.run()
    pairs = pd.tokenize([EARLY], model.tokenizer)
    _assert_page_shows(at, model, pairs, pd.run_sweeps(model, pairs), pd.run_edges(model, pairs))


def test_the_pages_choices_survive_a_visit_to_another_page(open_app):
    from .conftest import goto

    at = open_app("patching")
    at.radio(key="patch-source").set_value("Typed pair").run()
    for field in ("clean", "corrupted", "answer", "wrong"):
        at.text_input(key=f"patch-{field}").set_value(EARLY[field])
    at.run()
    at = goto(goto(at, "tokens"), "patching")
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.radio(key="patch-source").value == "Typed pair"
    assert {f: at.text_input(key=f"patch-{f}").value for f in EARLY} == EARLY


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "corrupted",
            "When Mary and John went to the big store, John gave a drink to",
            "same token length",
        ),
        ("wrong", " Mary", "are the same token"),
        ("answer", " Marianne", "one-token answers"),
    ],
)
def test_page_shows_the_librarys_error(open_app, field, value, message):
    at = open_app("patching")
    at.radio(key="patch-source").set_value("Typed pair").run()
    if field == "wrong":  # answer == wrong
        at.text_input(key="patch-answer").set_value(value)
    at.text_input(key=f"patch-{field}").set_value(value)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and message in at.error[0].value, [e.value for e in at.error]
    assert not at.get("plotly_chart")


def test_a_big_graph_waits_for_the_button_and_shows_a_head_summary(
    open_app, monkeypatch, default_pairs
):
    monkeypatch.setattr(pd, "AUTO_EDGE_LIMIT", 100)  # the demo's 479 edges count as many
    at = open_app("patching")
    assert not at.exception and [e.key for e in at.get("plotly_chart")] == [
        "fig-patch-resid_pre",
        "fig-patch-heads",
        "fig-patch-scatter",
    ]
    at.button(key="patch-edges-run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    edges = default_pairs[2]
    want = pd.head_summary(edges.graph, edges.exact)
    assert_close_rel(
        _z(at, "patch-edges-heads"), torch.as_tensor(want), min_spread=0.3, what="head summary"
    )
    assert [e.key for e in at.get("plotly_chart")][-1] == "fig-patch-scatter"
    (top,) = [d.value for d in at.dataframe if "edge" in d.value.columns]
    assert list(top["edge"]) == [
        r["edge"] for r in pd.top_edges(edges.graph, edges.exact, len(top))
    ]


def test_the_page_on_a_grouped_query_model_shows_the_sweeps_and_says_why_no_edges(
    open_app, family_model
):
    """A Llama-style model (grouped-query attention): the sweeps and their attribution run
    (the patching engine serves every family); edge patching, which the circuit graph does
    not describe there, is left out with the reason."""
    at = open_app("patching", model=family_model("llama"))
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert [e.key for e in at.get("plotly_chart")] == [
        "fig-patch-resid_pre",
        "fig-patch-heads",
        "fig-patch-scatter",
    ]
    assert any("each key/value head is shared by 2 query heads" in i.value for i in at.info)
