"""Probes agree with independent references: scikit-learn's LogisticRegression (test
accuracy within 1 point), numpy's ridge solution (weights to 1e-5), computed here from
the store's arrays with numpy, not through actstore.probes."""

import json
import re
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score

import actstore
from actstore.cli import main
from actstore.errors import ConfigError, StoreNotFoundError, UnknownSiteError
from actstore.probes import Probe, fit_probes
from actstore.probes.labels import parse_target, split_rows
from actstore.store.loader import resolve_sites

from ..conftest import DOCS

L = 16  # seq_len
RESID = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("probes") / "s.zarr"
    return actstore.cache(
        out=str(out),
        model=tiny_model,
        dataset=DOCS,
        sites="resid_post:all,z:1,pattern:1",
        seq_len=L,
        n_rows=40,
        batch_size=4,
        rows_per_chunk=4,
        rows_per_shard=8,
        progress=False,
    )


@pytest.fixture(scope="module")
def doc_store(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("probes") / "d.zarr"
    return actstore.cache(
        out=str(out),
        model=tiny_model,
        dataset=DOCS,
        sites="resid_post:1",
        seq_len=L,
        packing="document",
        batch_size=5,
        progress=False,
    )


def features(store, hook, standardize=True):
    """(row, pos, F) float64, standardised with the store's stats as the probes are."""
    x = store.acts(hook).astype(np.float64).reshape(store.n_rows, L, -1)
    if standardize:
        m = store.stats(hook)
        x = (x - m.mean.ravel()) / np.sqrt(m.var.ravel())
    return x


def next_token(store):
    t = store.tokens().astype(np.int64)
    return np.concatenate([t[:, 1:], np.full((len(t), 1), -1)], axis=1)


def split_masks(store, labels, classes=None, seed=0, test_frac=0.2):
    """(train, test) bool (row, pos): labelled, not BOS, rows split by split_rows."""
    test_rows = split_rows(store.n_rows, test_frac, seed)
    ok = labels >= 0 if classes is None else np.isin(labels, classes)
    ok[:, 0] = False
    return ok & ~test_rows[:, None], ok & test_rows[:, None]


# --- logistic vs scikit-learn --------------------------------------------------------


@pytest.mark.parametrize(
    "name,target,opts",
    [
        ("pos", "position", {}),
        ("next", "next_token", {"max_classes": 8}),
        ("next-balanced", "next_token", {"max_classes": 8, "class_weight": "balanced", "C": 0.1}),
        ("token-raw", "token", {"max_classes": 6, "standardize": False}),
    ],
)
def test_logistic_matches_sklearn(store, name, target, opts):
    rep = fit_probes(
        store, sites="resid_post:all,z:1", target=target, progress=False, name=name, **opts
    )
    labels = {
        "position": np.broadcast_to(np.arange(L), (40, L)).copy(),
        "next_token": next_token(store),
        "token": store.tokens().astype(np.int64),
    }[target]
    for hook, r in rep.results.items():
        probe = Probe.load(store, hook, name)
        train, test = split_masks(store, labels, probe.classes)
        assert (r.n_train, r.n_test) == (train.sum(), test.sum())
        if opts.get("max_classes"):  # the kept classes are the most frequent training labels
            vals, counts = np.unique(labels[split_masks(store, labels)[0]], return_counts=True)
            assert len(probe.classes) == opts["max_classes"]
            assert (
                counts[np.isin(vals, probe.classes)].min()
                >= counts[~np.isin(vals, probe.classes)].max()
            )
        x = features(store, hook, opts.get("standardize", True)).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: both stop at max_iter alike
            sk = LogisticRegression(
                C=opts.get("C", 1.0), class_weight=opts.get("class_weight")
            ).fit(x[train], labels[train])
        assert np.array_equal(sk.classes_, probe.classes)
        assert abs(r.train - sk.score(x[train], labels[train])) <= 0.01, hook
        assert abs(r.test - sk.score(x[test], labels[test])) <= 0.01, hook
        majority = sk.classes_[np.argmax(np.bincount(np.searchsorted(sk.classes_, labels[train])))]
        assert r.baseline == pytest.approx(np.mean(labels[test] == majority))


def test_streaming_equals_in_memory(store):
    kw = dict(
        sites="resid_post:1-2", target="next_token", max_classes=8, progress=False, save=False
    )
    mem = fit_probes(store, **kw)
    stream = fit_probes(store, max_memory_gb=0, num_workers=2, **kw)
    assert mem.notes["data"] == "memory" and stream.notes["data"] == "stream"
    for hook in mem.results:
        a, b = mem.results[hook], stream.results[hook]
        assert (a.n_train, a.n_test) == (b.n_train, b.n_test)
        assert abs(a.test - b.test) <= 0.01 and abs(a.train - b.train) <= 0.01


def test_saved_probe_predicts_its_reported_accuracy(store):
    rep = fit_probes(store, sites="resid_post:2,z:1", target="position", progress=False)
    assert rep.name == "position-logistic"
    for hook, r in rep.results.items():
        probe = Probe.load(store, hook, "position-logistic")
        assert probe.kind == "logistic" and probe.attrs["scores"]["test"] == r.test
        w = store.load_result(f"probes/position-logistic/{hook}/weight")
        want = ("d_model", "class") if "resid" in hook else ("head", "d_head", "class")
        assert tuple(w.metadata.dimension_names) == want
        labels = np.broadcast_to(np.arange(L), (40, L))
        _, test = split_masks(store, labels.copy())
        pred = probe.predict(store.acts(hook))  # raw activations (row, pos, *feature) -> (row, pos)
        assert abs(np.mean(pred[test] == labels[test]) - r.test) <= 1 / test.sum()


# --- ridge vs numpy ------------------------------------------------------------------


def numpy_ridge(x, y, alpha):
    """scikit-learn's Ridge: centred, unpenalised intercept."""
    mx, my = x.mean(0), y.mean()
    xc = x - mx
    a = xc.T @ xc + alpha * np.eye(x.shape[1])
    w = (
        np.linalg.solve(a, xc.T @ (y - my))
        if alpha > 0
        else np.linalg.lstsq(a, xc.T @ (y - my), rcond=None)[0]
    )
    return w, my - mx @ w


@pytest.mark.parametrize("standardize,alpha", [(True, 1.0), (False, 10.0), (True, 0.0)])
def test_ridge_equals_numpy(store, tmp_path, standardize, alpha):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, L)) + np.arange(L) * 0.1
    y[rng.random((40, L)) < 0.1] = np.nan  # unlabelled positions
    path = tmp_path / "score.npy"
    np.save(path, y)
    rep = fit_probes(
        store,
        sites="resid_post:all,z:1",
        target=str(path),
        standardize=standardize,
        alpha=alpha,
        test_frac=0.25,
        seed=3,
        progress=False,
    )
    assert rep.kind == "ridge" and rep.name == "score-ridge"
    test_rows = split_rows(40, 0.25, 3)
    ok = ~np.isnan(y)
    ok[:, 0] = False
    train, test = ok & ~test_rows[:, None], ok & test_rows[:, None]
    for hook, r in rep.results.items():
        x = features(store, hook, standardize)
        w, b = numpy_ridge(x[train], y[train], alpha)
        if standardize:  # fold the standardisation into raw-space weights, as saved
            m = store.stats(hook)
            sd = np.sqrt(m.var.ravel())
            w, b = w / sd, b - (m.mean.ravel() / sd) @ w
        probe = Probe.load(store, hook, "score-ridge")
        np.testing.assert_allclose(
            probe.weight.reshape(-1), w, rtol=1e-5, atol=1e-5 * np.abs(w).max()
        )
        assert float(probe.bias) == pytest.approx(b, rel=1e-5, abs=1e-5)
        raw = store.acts(hook).astype(np.float64).reshape(40, L, -1)
        assert r.train == pytest.approx(r2_score(y[train], raw[train] @ w + b), abs=1e-8)
        assert r.test == pytest.approx(r2_score(y[test], raw[test] @ w + b), abs=1e-8)
        np.testing.assert_allclose(
            probe.predict(store.acts(hook)), raw @ w + b, rtol=1e-6, atol=1e-6
        )
        assert (r.n_train, r.n_test) == (train.sum(), test.sum())


# --- labels, splits, positions -------------------------------------------------------


def test_builtin_labels_equal_the_store_arrays(store):
    rows = slice(4, 12)
    lab = {
        name: parse_target(name, store).labels(store, rows)
        for name in ("position", "doc_pos", "token", "next_token", "doc")
    }
    assert np.array_equal(lab["position"], np.broadcast_to(np.arange(L), (8, L)))
    assert np.array_equal(lab["doc_pos"], store.doc_pos(rows)) and np.array_equal(
        lab["doc"], store.doc(rows)
    )
    assert np.array_equal(lab["token"], store.tokens(rows))
    assert (
        np.array_equal(lab["next_token"][:, :-1], store.tokens(rows)[:, 1:])
        and (lab["next_token"][:, -1] == -1).all()
    )
    assert (lab["doc"][:, 0] == -1).all()  # BOS belongs to no document


def test_split_rows_is_disjoint_sized_and_seeded():
    a = split_rows(100, 0.2, seed=0)
    assert a.sum() == 20 and np.array_equal(a, split_rows(100, 0.2, seed=0))
    assert not np.array_equal(a, split_rows(100, 0.2, seed=1))
    assert split_rows(10, 0.0, 0).sum() == 0 and split_rows(10, 0.01, 0).sum() == 1


def test_token_classes_are_those_seen_in_training(store):
    rep = fit_probes(store, sites="resid_post:0", target="token", progress=False, save=False)
    tokens = store.tokens().astype(np.int64)
    train, test = split_masks(store, tokens)
    seen = np.unique(tokens[train])
    assert rep.notes["n_classes"] == len(seen)
    assert rep.notes["n_test_unseen"] == (~np.isin(tokens[test], seen)).sum()
    assert rep.results["blocks.0.hook_resid_post"].n_test == np.isin(tokens[test], seen).sum()


def test_padding_and_bos_are_never_used(doc_store):
    rep = fit_probes(
        doc_store,
        sites="resid_post:1",
        target="position",
        progress=False,
        save=False,
        test_frac=0.3,
    )
    mask = doc_store.mask()
    assert not mask.all()  # the store is padded
    r = rep.results["blocks.1.hook_resid_post"]
    assert r.n_train + r.n_test == mask[:, 1:].sum()
    rep_bos = fit_probes(
        doc_store,
        sites="resid_post:1",
        target="position",
        progress=False,
        save=False,
        test_frac=0.3,
        skip_bos=False,
    )
    r2 = rep_bos.results["blocks.1.hook_resid_post"]
    assert r2.n_train + r2.n_test == mask.sum()


def test_site_specs_resolve_against_the_store(store):
    assert resolve_sites(store, "resid_post:all") == RESID
    # the store's order
    assert resolve_sites(store, "resid_post:1-2,blocks.1.attn.hook_z") == [
        "blocks.1.attn.hook_z",
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_post",
    ]
    assert set(resolve_sites(store, ["blocks.0.hook_resid_post", "z:all"])) == {
        "blocks.0.hook_resid_post",
        "blocks.1.attn.hook_z",
    }


@pytest.mark.parametrize(
    "opts,err,match",
    [
        (
            dict(sites="resid_pots:all"),
            UnknownSiteError,
            r"Unknown site 'resid_pots'.*Close matches: resid_post",
        ),
        (
            dict(sites="mlp_out:1"),
            UnknownSiteError,
            r"'blocks.1.hook_mlp_out'.*This store holds: blocks.0.hook_resid_post",
        ),
        (dict(sites="mlp_out:all"), UnknownSiteError, r"the store holds no mlp_out hooks"),
        (dict(sites="resid_post:7"), UnknownSiteError, r"layer 7 is out of range"),
        (dict(sites="pattern:1"), ConfigError, r"not one vector per token"),
        (dict(sites="z:1.2"), ConfigError, r"selects heads"),
        (dict(target="colour"), ConfigError, r"Unknown target 'colour'; expected one of position"),
        (dict(target="missing.npy"), ConfigError, r"Target file 'missing.npy' not found"),
        (
            dict(target=np.zeros((3, 3))),
            ConfigError,
            r"shape \(row, pos\) = \(40, 16\).*got \(3, 3\)",
        ),
        (
            dict(target=np.zeros((40, L), np.int64)),
            ConfigError,
            r"has 1 class\(es\) in the training rows",
        ),
        (
            dict(target=np.zeros((40, L)), kind="logistic"),
            ConfigError,
            r"holds real values; fit it with kind 'ridge'",
        ),
        (dict(target="token", kind="ridge"), ConfigError, r"category ids, not quantities"),
        (dict(kind="svm"), ConfigError, r"Unknown probe kind 'svm'"),
        (dict(test_frac=1.0), ConfigError, r"test_frac must be in \[0, 1\)"),
        (dict(name="a/b"), ConfigError, r"hold no '/'"),
        # silently wrong before: R^2 = nan from an infinite label, a traceback from no label at all
        (
            dict(
                target=np.where(np.arange(40 * L).reshape(40, L) == 3 * L + 5, np.inf, 1.0)
                * np.arange(L)
            ),
            ConfigError,
            r"Target 'labels' holds 1 infinite value \(first at row 3, pos 5\); mark positions without a label with NaN",
        ),
        (
            dict(target=np.full((40, L), -np.inf)),
            ConfigError,
            r"holds 640 infinite values \(first at row 0, pos 0\)",
        ),
        (
            dict(target=np.full((40, L), np.nan)),
            ConfigError,
            r"labels no position \(every value is NaN",
        ),
        (
            dict(target=np.full((40, L), -1)),
            ConfigError,
            r"labels no position \(every value is negative",
        ),
        (dict(target=np.full((40, L), 2**63, np.uint64)), ConfigError, r"640 values beyond int64"),
        (
            dict(target=np.where(np.arange(L) == 1, 1.0, np.nan) * np.ones((40, 1))),
            ConfigError,
            r"is 1 at every training position, so R\^2 is undefined",
        ),
        (
            dict(
                target=np.where(
                    split_rows(40, 0.2, 0)[:, None], np.nan, np.ones((40, L)) * np.arange(L)
                )
            ),
            ConfigError,
            r"labels no position of the test rows, so there is no test score; pass --test-frac 0",
        ),
        (dict(target=np.full((40, L), "a")), ConfigError, r"got dtype <U1"),
    ],
)
def test_bad_input_fails_before_work(store, opts, err, match):
    before = store.results()
    with pytest.raises(err, match=match):
        fit_probes(
            store, **{"sites": "resid_post:1", "target": "position", "progress": False, **opts}
        )
    assert actstore.ActivationStore.open(store.path).results() == before


def test_load_probe_names_the_runs(doc_store):
    hook = "blocks.1.hook_resid_post"
    with pytest.raises(
        StoreNotFoundError, match=r"has no probe for blocks.1.hook_resid_post; fit one with"
    ):
        Probe.load(doc_store, hook)
    for name in ("a", "b"):
        fit_probes(doc_store, sites="resid_post:1", target="position", name=name, progress=False)
    with pytest.raises(
        ConfigError, match=r"holds probes a, b for blocks.1.hook_resid_post; pass name="
    ):
        Probe.load(doc_store, hook)
    with pytest.raises(
        StoreNotFoundError, match=r"has no probe 'c' for blocks.1.hook_resid_post; it has: a, b"
    ):
        Probe.load(doc_store, hook, "c")
    assert Probe.load(doc_store, hook, "b").name == "b"


# --- the command ---------------------------------------------------------------------


def test_cli_json_table_and_plot(store, capsys, tmp_path):
    png = tmp_path / "acc.png"
    assert (
        main(
            [
                "probe",
                store.path,
                "--sites",
                "resid_post:all",
                "--target",
                "next_token",
                "--max-classes",
                "8",
                "--name",
                "cli",
                "--json",
                "--quiet",
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert list(out) == RESID
    assert set(out[RESID[0]]) >= {
        "train",
        "test",
        "n_train",
        "n_test",
        "baseline",
        "n_classes",
        "converged",
    }
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = fit_probes(
        store,
        sites="resid_post:all",
        target="next_token",
        max_classes=8,
        progress=False,
        save=False,
    )
    assert {h: r["test"] for h, r in out.items()} == {h: r.test for h, r in again.results.items()}
    probe = Probe.load(actstore.ActivationStore.open(store.path), RESID[2], "cli")
    assert probe.attrs["command_line"].startswith("actstore probe ")

    assert (
        main(
            [
                "probe",
                store.path,
                "--sites",
                "resid_post:1",
                "--target",
                "position",
                "--name",
                "cli2",
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "blocks.1.hook_resid_post" in text and "test acc" in text and "plot: " in text
    assert main(["probe", store.path, "--sites", "nope:1", "--target", "position", "--quiet"]) == 2
    assert "Unknown site 'nope'" in capsys.readouterr().err


def test_a_run_of_the_same_name_replaces_the_earlier_one_whole(store, tmp_path):
    hook = "blocks.0.hook_resid_post"
    fit_probes(store, sites="resid_post:0", target="position", name="same", progress=False)
    assert f"probes/same/{hook}/classes" in store.results()
    np.save(tmp_path / "y.npy", np.random.default_rng(0).normal(size=(40, L)))
    fit_probes(
        store, sites="resid_post:0", target=str(tmp_path / "y.npy"), name="same", progress=False
    )
    # the ridge run writes no classes: the logistic run's are removed, not left beside it
    assert [r for r in store.results() if r.startswith("probes/same/")] == [
        f"probes/same/{hook}/bias",
        f"probes/same/{hook}/weight",
    ]
    assert Probe.load(store, hook, "same").kind == "ridge"


def test_a_file_that_is_not_npy_is_refused(store, tmp_path, capsys):
    (tmp_path / "text.npy").write_text("hello")
    np.save(tmp_path / "obj.npy", np.array([[None] * L] * 40, dtype=object))
    (tmp_path / "short.npy").write_bytes((tmp_path / "obj.npy").read_bytes()[:20])
    for name, why in (
        ("text", "it has no .npy header"),
        ("obj", "Array can.t be memory-mapped: Python objects"),
        ("short", "EOF"),
    ):
        assert (
            main(
                [
                    "probe",
                    store.path,
                    "--target",
                    str(tmp_path / f"{name}.npy"),
                    "--quiet",
                    "--no-save",
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert (
            err.count("\n") == 1
            and re.search(rf"is not a NumPy .npy array \({why}", err)
            and "numpy.save" in err
        ), err


def test_a_read_only_store_is_refused_before_the_fit(store, capsys, monkeypatch):
    from actstore.probes import fit as fit_module

    from ..readonly import read_only_copy

    def no_fit(*a, **k):
        raise AssertionError("the fit ran")

    with read_only_copy(store.path) as ro:
        monkeypatch.setattr(fit_module, "fit_logistic", no_fit)
        assert (
            main(
                [
                    "probe",
                    str(ro),
                    "--sites",
                    "resid_post:1",
                    "--target",
                    "position",
                    "--quiet",
                    "--plot",
                    "none",
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert (
            "Cannot write the result 'results/probes/position-logistic/blocks.1.hook_resid_post'"
            in err
        )
        assert "pass --no-save" in err and "Traceback" not in err
        assert (
            main(["probe", str(ro), "--sites", "resid_post:1", "--target", "position", "--quiet"])
            == 2
        )
        assert "Cannot write the plot" in capsys.readouterr().err  # beside the store, by default
        monkeypatch.undo()
        assert (
            main(
                [
                    "probe",
                    str(ro),
                    "--sites",
                    "resid_post:1",
                    "--target",
                    "position",
                    "--quiet",
                    "--no-save",
                    "--plot",
                    "none",
                ]
            )
            == 0
        )
