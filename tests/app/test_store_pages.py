"""The store pages: their plain functions (actstore.app.store_data) equal direct reads of
the store, read lazily (a bounded number of chunks, counted on the store's reads), and
each page runs in Streamlit's AppTest on a store with results."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

import actstore
from actstore.app import store_data as sd
from actstore.cli.main import info_text
from actstore.errors import ActStoreError, ConfigError, RowIndexError, StoreNotFoundError

from ..conftest import DOCS

N_PAIRS = 4


@pytest.fixture(scope="module")
def demo():
    from actstore.models import load_model

    return load_model("actstore-demo", "float32", "cpu")


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory, demo):
    """The trained demo model on its corpus (a spread of norms across layers), with a
    patching sweep, a probe and a logit lens under results/."""
    from actstore.analysis import logit_lens
    from actstore.patching.job import PatchJobConfig, patch_pairs

    path = str(tmp_path_factory.mktemp("app") / "demo.zarr")
    store = actstore.cache(
        out=path,
        model=demo.bridge,
        dataset="actstore-demo",
        seq_len=24,
        n_rows=16,
        batch_size=8,
        rows_per_chunk=4,
        rows_per_shard=8,
        sites="resid_pre:0,resid_post:all,z:1,pattern:1",
        progress=False,
    )
    patch_pairs(
        PatchJobConfig(
            model=demo.bridge,
            task="ioi",
            n_pairs=N_PAIRS,
            sweep="resid_pre",
            out=path,
            progress=False,
        )
    )
    actstore.probes.fit_probes(
        store, sites="resid_post:all", target=store.doc_pos().astype(np.float32), name="dp"
    )
    logit_lens(store, demo, [0, 1], k=3, progress=False).save(store)
    return actstore.open(path)


@pytest.fixture(scope="module")
def circuit_group(tmp_path_factory, demo):
    from actstore.circuits.config import CircuitJobConfig
    from actstore.circuits.job import find_circuit

    out = str(tmp_path_factory.mktemp("app") / "ioi.circuit.zarr")
    find_circuit(
        CircuitJobConfig(
            model=demo.bridge, task="ioi", n_pairs=2, method="eap", out=out, top=10, progress=False
        )
    )
    return out


@pytest.fixture(scope="module")
def many_rows(tmp_path_factory, tiny_model):
    """64 rows in 32 chunks of 2 rows (16 shards): a page that read whole arrays would read them all."""
    path = str(tmp_path_factory.mktemp("app") / "many.zarr")
    store = actstore.cache(
        out=path,
        model=tiny_model,
        dataset=DOCS,
        seq_len=8,
        n_rows=64,
        batch_size=8,
        rows_per_chunk=2,
        rows_per_shard=4,
        sites="resid_post:all,z:1,pattern:1,loss",
        progress=False,
    )
    store.save_result(
        "mine/big", np.arange(4000 * 300, dtype=np.float32).reshape(4000, 300), ("a", "b")
    )
    return path


@contextlib.contextmanager
def counted_reads() -> Iterator[Counter]:
    """Every read of a local store's objects while inside, as (key, byte range) -> count."""
    reads: Counter = Counter()
    original = LocalStore.get

    async def get(self, key, prototype=None, byte_range=None):
        reads[(key, str(byte_range))] += 1
        return await original(self, key, prototype, byte_range)

    LocalStore.get = get
    try:
        yield reads
    finally:
        LocalStore.get = original


def data_keys(reads: Counter, prefix: str) -> set[str]:
    """The data objects (not zarr.json) under ``prefix`` that were read."""
    return {k for k, _ in reads if k.startswith(prefix) and not k.endswith("zarr.json")}


# --- the plain functions equal direct reads ----------------------------------------------------
def test_info_is_actstore_info(demo_store):
    assert sd.info_text is info_text  # the CLI's own function, not a copy
    assert (
        sd.info_json(demo_store)["rows_done"] == 16
        and sd.info_json(demo_store)["model"] == demo_store.metadata["model"]
    )


def test_site_stats_equal_direct_reads(demo_store):
    got = {s.hook: s for s in sd.site_stats(demo_store)}
    assert set(got) == {h for h in demo_store.sites if "pattern" not in h}  # patterns have no stats
    rms = []
    for hook, s in got.items():
        x = demo_store.acts(hook).astype(np.float64)  # (row, pos, ...) every token
        x = x.reshape(-1, int(np.prod(x.shape[2:])))
        ref_rms = np.sqrt((x**2).sum(-1).mean())
        ref_var = x.var(axis=0).sum()
        ref_mean = np.linalg.norm(x.mean(0))
        assert s.count == len(x)
        np.testing.assert_allclose(
            [s.rms_norm, s.total_var, s.mean_norm], [ref_rms, ref_var, ref_mean], rtol=1e-9
        )
        rms.append(ref_rms)
        var, dims = sd.feature_variance(demo_store, hook)
        assert dims == tuple(d for d in demo_store.meta.site(hook).dims[1:] if d != "pos")
        np.testing.assert_allclose(
            var.ravel(), x.var(axis=0), rtol=1e-9, atol=1e-12 * x.var(axis=0).max()
        )
    assert max(rms) > 2 * min(rms)  # the references spread: norms grow through the layers
    layers = [s.layer for s in got.values() if s.kind == "resid_post"]
    assert layers == [0, 1, 2, 3]


def test_row_view_equals_direct_reads(demo_store):
    hook = "blocks.1.attn.hook_z"
    v = sd.row_view(demo_store, 11, hook)
    x = demo_store.acts(hook)[11].astype(np.float64)  # (pos, head, d_head)
    ref = np.sqrt((x**2).sum(axis=(1, 2)))
    np.testing.assert_allclose(v.norms, ref, rtol=1e-12)
    assert ref.std() > 0.1 * ref.mean()
    assert np.array_equal(
        v.tokens, demo_store.tokens()[11]
    ) and v.str_tokens == demo_store.str_tokens(11)
    assert np.array_equal(v.doc, demo_store.doc()[11]) and np.array_equal(
        v.doc_pos, demo_store.doc_pos()[11]
    )
    assert v.table()["norm"] == ref.tolist() and len(v.table()["token"]) == 24
    assert sd.token_sites(demo_store) == [h for h in demo_store.sites if "pattern" not in h]
    with pytest.raises(ConfigError, match="no position axis"):
        sd.row_view(demo_store, 0, "blocks.1.attn.hook_pattern")
    with pytest.raises(RowIndexError, match="rows 0..15"):
        sd.row_view(demo_store, 16, hook)


def test_results_of_a_store_with_their_dims_and_labels(demo_store, demo):
    src = sd.open_results(demo_store.path)
    assert src.names == demo_store.results()
    assert {n.split("/")[0] for n in src.names} == {"analysis", "patching", "probes"}
    info = src.describe("patching/resid_pre/logit_diff")
    assert info.dims == ("pair", "layer", "pos") and info.shape[0] == N_PAIRS and info.numeric
    full = np.asarray(demo_store.load_result("patching/resid_pre/logit_diff")[...])
    got = sd.result_slice(src.array(info.name), ("pos", "layer"), at={"pair": 2})
    np.testing.assert_array_equal(got, full[2].T)
    got = sd.result_slice(
        src.array(info.name), ("pair",), at={"layer": 1, "pos": 5}, window={"pair": (1, 3)}
    )
    np.testing.assert_array_equal(got, full[1:3, 1, 5])
    lens = "analysis/logit_lens/target_prob"
    assert sd.axis_labels(src, lens, "site") == demo_store.load_result(lens).attrs["sites"]
    assert sd.axis_labels(src, lens, "pos") is None
    # the first pair labels positions
    clean = np.asarray(demo_store.load_result("patching/resid_pre/clean_tokens")[0])
    assert sd.axis_labels(src, info.name, "pos") == [demo.tokenizer.decode([int(t)]) for t in clean]
    with pytest.raises(ConfigError, match="one or two different dims"):
        sd.result_slice(src.array(info.name), ("pair", "pair"))
    with pytest.raises(ConfigError, match="outside"):
        sd.result_slice(src.array(info.name), ("pos",), at={"pair": N_PAIRS})


def test_results_of_a_circuit_group(circuit_group):
    src = sd.open_results(circuit_group)
    assert src.store is None and "circuit/eap/scores" in src.names
    g = zarr.open_group(circuit_group, mode="r")
    labels = sd.axis_labels(src, "circuit/eap/scores", "edge")
    assert labels == list(np.asarray(g["circuit/eap/edge"][...])) and len(labels) > 100
    np.testing.assert_array_equal(
        sd.result_slice(src.array("circuit/eap/scores"), ("edge",)), g["circuit/eap/scores"][...]
    )
    assert not src.describe("circuit/eap/edge").numeric
    with pytest.raises(StoreNotFoundError, match="No store or results group"):
        sd.open_results(circuit_group + "-missing")


# --- lazily: a bounded number of chunks ---------------------------------------------------------
def test_each_function_reads_a_bounded_number_of_chunks(many_rows):
    with counted_reads() as reads:
        store = actstore.open(many_rows)
        info_text(store)
    # metadata and the manifest only
    assert not data_keys(reads, "acts/") and not data_keys(reads, "tokens/")
    assert len(data_keys(reads, "done/")) <= 16
    with counted_reads() as reads:
        sd.site_stats(store)
    # the merged stats, not the activations
    assert not data_keys(reads, "acts/") and data_keys(reads, "stats/")
    with counted_reads() as reads:
        v = sd.row_view(store, 37, "blocks.1.attn.hook_z")
    acts = data_keys(reads, "acts/")
    assert acts == {"acts/blocks.1.attn.hook_z/c/9/0/0/0"}  # shard 9 holds row 37
    assert sum(n for (k, _), n in reads.items() if k in acts) <= 3  # its index and one 2-row chunk
    assert v.norms.shape == (8,)
    with counted_reads() as reads:
        src = sd.open_results(store)
        big = src.array("mine/big")
        got = sd.result_slice(big, ("a",), at={"b": 150}, window={"a": (1000, 1100)})
    np.testing.assert_array_equal(got, np.arange(1000, 1100) * 300 + 150)
    assert len(data_keys(reads, "results/")) == 1 < np.prod(big.cdata_shape)


# --- the pages, in AppTest ----------------------------------------------------------------------
def figures(at) -> list[dict]:
    """The plotly figures the page drew, as JSON (arrays decoded)."""
    import base64
    import json

    def decode(v):
        if isinstance(v, dict) and "bdata" in v:
            a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
            return a.reshape([int(n) for n in str(v["shape"]).split(",")]) if "shape" in v else a
        if isinstance(v, dict):
            return {k: decode(x) for k, x in v.items()}
        if isinstance(v, list):
            return [decode(x) for x in v]
        return v

    return [decode(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]


def ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_store_info_page(open_app, demo_store):
    at = ok(open_app("store_info", stores=(demo_store.path,)))
    assert at.code[0].value == info_text(demo_store)
    assert list(at.dataframe[0].value["hook"]) == demo_store.sites
    assert "16 of 16 rows done" in at.get("progress")[0].proto.text


def test_store_stats_page(open_app, demo_store):
    at = ok(open_app("store_stats", stores=(demo_store.path,)))
    stats = sd.site_stats(demo_store)
    by_kind = {t["name"]: t for t in figures(at)[0]["data"]}
    assert set(by_kind) == {"resid_pre", "resid_post", "z"}
    np.testing.assert_allclose(
        by_kind["resid_post"]["y"], [s.rms_norm for s in stats if s.kind == "resid_post"]
    )
    ok(at.selectbox(key="stats-measure").set_value("total_var").run())
    by_kind = {t["name"]: t for t in figures(at)[0]["data"]}
    np.testing.assert_allclose(
        by_kind["resid_post"]["y"], [s.total_var for s in stats if s.kind == "resid_post"]
    )
    ok(at.selectbox(key="stats-site").set_value("blocks.1.attn.hook_z").run())
    z = np.asarray(figures(at)[1]["data"][0]["z"], dtype=np.float64)  # (head, d_head)
    np.testing.assert_allclose(
        z, sd.feature_variance(demo_store, "blocks.1.attn.hook_z")[0], rtol=1e-12
    )


def test_store_rows_page(open_app, demo_store):
    at = ok(open_app("store_rows", stores=(demo_store.path,)))
    at.number_input(key=f"rows-row-{demo_store.path}").set_value(11)
    ok(at.selectbox(key="rows-site").set_value("blocks.1.attn.hook_z").run())
    bar = figures(at)[0]["data"][0]
    v = sd.row_view(demo_store, 11, "blocks.1.attn.hook_z")
    np.testing.assert_allclose(bar["y"], v.norms, rtol=1e-12)
    assert [c[0] for c in bar["customdata"]] == v.str_tokens
    assert list(at.dataframe[0].value["doc_pos"]) == v.doc_pos.tolist()


def test_switching_stores_keeps_each_ones_row(open_app, demo_store, many_rows):
    at = ok(open_app("store_rows", stores=(many_rows, demo_store.path)))
    # past the demo store's 16 rows
    ok(at.number_input(key=f"rows-row-{many_rows}").set_value(37).run())
    ok(at.selectbox(key="store").set_value(demo_store.path).run())
    assert at.number_input(key=f"rows-row-{demo_store.path}").value == 0
    ok(goto_page(at, "store_results"))
    ok(at.selectbox(key="store").set_value(many_rows).run())
    assert figures(at)[0]["data"][0]["z"].shape == (256, 256)


def test_store_results_page(open_app, demo_store, circuit_group):
    at = ok(open_app("store_results", stores=(demo_store.path,)))
    ok(at.selectbox(key="results-result").set_value("patching/resid_pre").run())
    name = "patching/resid_pre/logit_diff"
    assert at.multiselect(key=f"results-{demo_store.path}-{name}-axes").value == ["layer", "pos"]
    ok(at.slider(key=f"results-{demo_store.path}-{name}-at-pair").set_value(2).run())
    heat = figures(at)[0]["data"][0]
    full = np.asarray(demo_store.load_result(name)[...])
    np.testing.assert_array_equal(np.asarray(heat["z"], dtype=np.float32), full[2])
    assert heat["x"] == [
        f"{i}: {t}" for i, t in enumerate(sd.axis_labels(sd.open_results(demo_store), name, "pos"))
    ]
    assert np.ptp(full[2]) > 0.1 * np.abs(full[2]).max()
    ok(at.selectbox(key="results-result").set_value("analysis/logit_lens").run())
    heat = figures(at)[0]["data"][0]  # target_prob (row, site, pos): site by pos, the sites named
    assert heat["y"] == [
        f"{i}: {h}"
        for i, h in enumerate(
            demo_store.load_result(
                name.replace("patching/resid_pre/logit_diff", "analysis/logit_lens/target_prob")
            ).attrs["sites"]
        )
    ]

    ok(at.text_input(key="results-group").set_value(circuit_group).run())
    ok(at.selectbox(key="results-result").set_value("circuit/eap").run())
    arrays = at.selectbox(key=f"results-array-{circuit_group}-circuit/eap")
    ok(
        arrays.set_value(
            arrays.options.index(next(o for o in arrays.options if o.startswith("scores")))
        ).run()
    )
    line = figures(at)[0]["data"][0]
    g = zarr.open_group(circuit_group, mode="r")
    np.testing.assert_array_equal(
        np.asarray(line["y"], dtype=np.float32), g["circuit/eap/scores"][...]
    )
    assert line["x"] == [f"{i}: {e}" for i, e in enumerate(np.asarray(g["circuit/eap/edge"][...]))]

    at.text_input(key="results-group").set_value(circuit_group + "-missing").run()
    assert not at.exception and "No store or results group" in at.error[0].value


def test_a_missing_store_is_an_error_on_the_page(open_app, tmp_path):
    at = open_app("store_info", stores=(str(tmp_path / "nowhere.zarr"),))
    assert not at.exception and "No store at" in at.error[0].value


def _not_a_store(tmp_path, many_rows, case: str) -> str:
    """A path that actstore.open refuses, made as ``case`` says."""
    import json
    import shutil

    path = tmp_path / f"{case}.zarr"
    if case == "a file":
        path.write_text("not a store")
    elif case == "a folder of other files":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif case == "a zarr group, not a store":
        zarr.open_group(str(path), mode="w")
    else:  # a copy of a store with its root metadata damaged
        shutil.copytree(many_rows, path)
        root = path / "zarr.json"
        if case == "root metadata not JSON":
            root.write_text("{not json")
        else:
            doc = json.loads(root.read_text())
            doc["attributes"]["actstore"] = (
                {"format_version": 999} if case == "a later format" else "garbage"
            )
            root.write_text(json.dumps(doc))
    return str(path)


# results: its own opening
@pytest.mark.parametrize(
    "case, page",
    [
        (c, "store_info")
        for c in (
            "a file",
            "a folder of other files",
            "a zarr group, not a store",
            "root metadata not JSON",
            "a later format",
            "actstore metadata not a mapping",
        )
    ]
    + [("root metadata not JSON", "store_results")],
)
def test_a_path_that_is_not_a_store_is_an_error_on_the_page(
    open_app, tmp_path, many_rows, case, page
):
    """Every refusal of actstore.open shows on every store page as the error naming the path, not as a traceback."""
    path = _not_a_store(tmp_path, many_rows, case)
    with pytest.raises(ActStoreError) as refused:
        actstore.open(path)
    at = open_app(page, stores=(path,))
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == [str(refused.value)] and path in str(refused.value)


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No AWS credentials anywhere (environment, files, instance metadata) and an endpoint that
    nothing serves, so nothing leaves this machine."""
    import s3fs

    for k in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # the discard port: nothing answers
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("page", ["store_info", "store_results"])
def test_a_store_url_without_credentials_is_an_error_on_the_page(open_app, no_credentials, page):
    pytest.importorskip("s3fs")
    at = open_app(page, stores=("s3://nope/x.zarr",))
    assert not at.exception, [e.value for e in at.exception]
    (error,) = [e.value for e in at.error]
    assert "Cannot read 's3://nope/x.zarr" in error and "NoCredentialsError" in error
    assert (
        "AWS_ACCESS_KEY_ID" in error and "AWS_ENDPOINT_URL" in error and "bucket and path" in error
    )


def test_pages_read_a_bounded_number_of_chunks(open_app, many_rows):
    at = ok(open_app("store_rows", stores=(many_rows,)))
    with counted_reads() as reads:
        ok(at.number_input(key=f"rows-row-{many_rows}").set_value(37).run())
    # the row's shard, one chunk of it
    assert data_keys(reads, "acts/") == {"acts/blocks.0.hook_resid_post/c/9/0/0"}
    with counted_reads() as reads:
        ok(goto_page(at, "store_stats"))
        # a site outside the layers, in the table
        assert list(at.dataframe[0].value["hook"])[-1] == "loss"
        ok(at.selectbox(key="stats-site").set_value("loss").run())
        ok(goto_page(at, "store_info"))
    assert not data_keys(reads, "acts/") and not data_keys(reads, "tokens/")
    with counted_reads() as reads:
        ok(goto_page(at, "store_results"))
        heat = figures(at)[0]["data"][0]
    assert np.asarray(heat["z"]).shape == (256, 256)
    big = zarr.open_group(many_rows, mode="r")["results/mine/big"]
    # the chunks holding the 256 x 256 drawn
    touched = int(np.prod([-(-256 // c) for c in big.chunks]))
    assert len(data_keys(reads, "results/mine/big")) == touched < np.prod(big.cdata_shape)


def goto_page(at, page):
    from .conftest import goto

    return goto(at, page)


@pytest.fixture
def s3_store(monkeypatch, many_rows):
    """``many_rows`` copied to moto's S3-compatible server on loopback, as an s3:// URL."""
    server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    srv = server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    env = dict(
        AWS_ACCESS_KEY_ID="app-test-key",
        AWS_SECRET_ACCESS_KEY="app-test-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
    )
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=env["AWS_ENDPOINT_URL"])
    fs.mkdir("app")
    fs.put(many_rows, "app/many.zarr", recursive=True)
    yield "s3://app/many.zarr"
    srv.stop()
    s3fs.S3FileSystem.clear_instance_cache()  # its cached filesystems point at this server, now gone


def test_a_store_on_object_storage_reads_the_same(open_app, s3_store, many_rows):
    local = actstore.open(many_rows)
    at = open_app("store_rows")
    at.session_state["stores"] = s3_store  # typed in the sidebar
    ok(at.run())
    ok(at.number_input(key=f"rows-row-{s3_store}").set_value(37).run())
    np.testing.assert_array_equal(
        figures(at)[0]["data"][0]["y"], sd.row_view(local, 37, local.sites[0]).norms
    )
    assert at.dataframe[0].value["token_id"].tolist() == local.tokens(37).tolist()
    ok(goto_page(at, "store_info"))
    assert at.code[0].value == info_text(actstore.open(s3_store)) and s3_store in at.code[0].value


def test_an_unfinished_store(open_app, many_rows, tmp_path):
    """Shards 8..15 not done: statistics over the done rows, rows not done an error on the page."""
    import shutil

    path = str(tmp_path / "unfinished.zarr")
    shutil.copytree(many_rows, path)
    zarr.open_group(path, mode="r+")["done"][8:] = False
    store = actstore.open(path)
    x = store.acts("blocks.2.hook_resid_post", slice(0, 32)).astype(np.float64).reshape(-1, 64)
    s = {s.hook: s for s in sd.site_stats(store)}["blocks.2.hook_resid_post"]
    assert s.count == len(x) == 32 * 8
    np.testing.assert_allclose(
        [s.rms_norm, s.total_var], [np.sqrt((x**2).sum(-1).mean()), x.var(0).sum()], rtol=1e-9
    )
    at = ok(open_app("store_info", stores=(path,)))
    assert "32 of 64 rows done (incomplete)" in at.get("progress")[0].proto.text
    ok(goto_page(at, "store_rows"))
    at.number_input(key=f"rows-row-{path}").set_value(37).run()
    assert not at.exception and "not yet written" in at.error[0].value
