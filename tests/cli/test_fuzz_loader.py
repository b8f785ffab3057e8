"""The training loader's part of the bad-input matrix: tables and generated cases over
``store.loader(...)``'s arguments (sites, rows, seed, batch_size, dtype, device,
even_batches / rank / world size, set_epoch), its iterators and its states (garbage,
another store's, out of range, from other settings).

The invariant, for every case: the outcome is either a correct result, checked against
the store itself (every batch's values equal ``store[hook]`` at the batch's (row, pos);
each epoch yields the selected rows' kept tokens once across the ranks, the ranks
disjoint; ``len(loader)`` batches), or an ActStoreError whose message names the fix,
raised before any batch; never another exception type, never a hang.

Three tiny stores are built once: packed rows of a tiny model (12 rows of 8 tokens, 3 inner
chunks), the same layout from another model's weights, and padded rows (one document per row).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import actstore
from actstore.errors import ActStoreError

from ..conftest import DOCS

N, SEQ, RPC = 12, 8, 4  # rows, positions, rows per inner chunk: 3 chunks
SITES = "resid_post:0-1,z:1,pattern:1"
# a message that names a fix: what to do, or what the value must be
FIX = re.compile(r"\b(pass|run|make|select|load|start|finish|close|use|leave|must be)\b", re.I)
GPU = torch.cuda.is_available()
MPS = torch.backends.mps.is_available()


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_model, sharp_model):
    d = tmp_path_factory.mktemp("fuzz-loader")
    opts = dict(
        dataset=DOCS, seq_len=SEQ, n_rows=N, rows_per_chunk=RPC, rows_per_shard=RPC, progress=False
    )
    packed = actstore.cache(out=str(d / "packed.zarr"), model=tiny_model, sites=SITES, **opts)
    # same layout
    other = actstore.cache(out=str(d / "other.zarr"), model=sharp_model, sites=SITES, **opts)
    doc = actstore.cache(
        out=str(d / "doc.zarr"),
        model=tiny_model,
        dataset=DOCS,
        sites="resid_post:1",
        seq_len=16,
        n_rows=10,
        rows_per_chunk=2,
        rows_per_shard=2,
        packing="document",
        progress=False,
    )
    full = {
        s.path: {h: np.asarray(s[h]) for h in s.sites if "pattern" not in h} for s in (packed, doc)
    }
    return Stores(packed=packed, other=other, doc=doc, full=full)


class Stores(dict):
    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return "<the stores>"


# --- the oracle -------------------------------------------------------------------------


def expected_rows(rows: Any, n: int = N) -> np.ndarray:
    """The rows a selection names, by Python's and numpy's own indexing of range(n)."""
    if rows is None:
        return np.arange(n)
    if isinstance(rows, slice):
        return np.arange(n)[rows]
    if isinstance(rows, (int, np.integer)):
        return np.array([range(n)[rows]])
    a = np.asarray(list(rows) if isinstance(rows, range) else rows)
    return (
        np.flatnonzero(a) if a.dtype == bool else np.array([range(n)[int(r)] for r in a], dtype=int)
    )


def expected_keep(store, kw: dict) -> np.ndarray:
    """bool (row, pos): the tokens one epoch must yield across the ranks."""
    n = store.n_rows
    keep = (
        store.mask().copy()
        if kw.get("skip_padding", True)
        else np.ones((n, store.layout.seq_len), bool)
    )
    if kw.get("skip_bos", True):
        keep[:, 0] = False
    sel = np.zeros(n, bool)
    sel[expected_rows(kw.get("rows"), n)] = True
    return keep & sel[:, None]


def epoch_of(loader, epoch: int | None) -> list[dict[str, torch.Tensor]]:
    """The batches of one epoch (``set_epoch(epoch)`` first, unless None)."""
    if epoch is not None:
        loader.set_epoch(epoch)
    start, n = loader.epoch, len(loader)
    batches = list(loader)
    # len() is what it yields; a finished epoch moves on
    assert len(batches) == n and loader.epoch == start + 1
    return batches


def check_values(stores, store, batches: list[dict], kw: dict) -> np.ndarray:
    """Every batch equals the store at its (row, pos), in the asked dtype; returns the
    batches' tokens as (2, token) (row, pos)."""
    dtype = kw.get("dtype")
    dtype = getattr(torch, dtype.removeprefix("torch.")) if isinstance(dtype, str) else dtype
    for b in batches:
        r, p = b["row"].numpy(), b["pos"].numpy()
        for hook in [k for k in b if k not in ("row", "pos")]:
            want = torch.from_numpy(stores["full"][store.path][hook][r, p])
            want = want.to(dtype) if dtype is not None else want
            assert b[hook].dtype == want.dtype and torch.equal(b[hook].cpu(), want), hook
    if not batches:
        return np.zeros((2, 0), int)
    return np.stack(
        [
            torch.cat([b["row"] for b in batches]).numpy(),
            torch.cat([b["pos"] for b in batches]).numpy(),
        ]
    )


def check_ok(stores, store, kw: dict, epoch: int | None = None) -> None:
    """Every rank's loader yields a correct epoch: the store's values; with neither
    drop_last nor even_batches, the selection's kept tokens once across the ranks (each
    rank's share); with them, a prefix of the share in whole batches (even_batches: as
    many on every rank as the smallest share holds, and every rank gets work)."""
    world = kw.pop("world_size", 1)
    bs = kw["batch_size"]
    loaders = [store.loader(**kw, rank=r, world_size=world) for r in range(world)]
    keep = expected_keep(store, kw)  # (after the loaders: a selection they refuse may not index)
    plain_kw = {**kw, "drop_last": False, "even_batches": False}
    seen = np.zeros(keep.shape, int)
    shares, lens = [], []
    for r, lo in enumerate(loaders):
        batches = epoch_of(lo, epoch)
        got = check_values(stores, store, batches, kw)
        share = got
        if kw.get("drop_last") or kw.get("even_batches"):
            share = check_values(
                stores,
                store,
                epoch_of(store.loader(**plain_kw, rank=r, world_size=world), epoch),
                kw,
            )
            assert np.array_equal(got, share[:, : got.shape[1]]), "not a prefix of the rank's share"
            assert all(len(b["row"]) == bs for b in batches), "a short batch"
        else:
            assert all(0 < len(b["row"]) <= bs for b in batches) and all(
                len(b["row"]) == bs for b in batches[:-1]
            )
            assert len(batches) == -(-share.shape[1] // bs)
        np.add.at(seen, tuple(share), 1)
        shares.append(share.shape[1])
        lens.append(len(batches))
    assert np.array_equal(seen, keep.astype(int)), (
        "the ranks' shares are not the selection's tokens, each once"
    )
    # enough tokens for every rank: every rank gets work
    if world > 1 and keep.sum() >= world * SEQ:
        assert min(shares) > 0, f"a rank gets no tokens: {shares}"
    if kw.get("even_batches"):
        assert set(lens) == {min(s // bs for s in shares)} and lens[0] > 0, (lens, shares)
        # about one chunk (the docs)
        assert max(shares) - min(shares) <= 3 * RPC * store.layout.seq_len, shares
    elif kw.get("drop_last"):
        assert lens == [s // bs for s in shares], (lens, shares)


def check_refused(excinfo: pytest.ExceptionInfo, match: str) -> None:
    e = excinfo.value
    assert isinstance(e, ActStoreError), f"{type(e).__name__} instead of an error of ours: {e}"
    assert re.search(match, str(e)), str(e)
    assert FIX.search(str(e)), f"the message names no fix: {e}"


def outcome(stores, case: dict) -> None:
    """Run one table case: a correct result (expect None) or a refusal matching ``expect``."""
    store = stores[case.get("store", "packed")]
    kw = {"sites": "resid_post:1", "batch_size": 8, "num_workers": 1, **case["kw"]}
    if case["expect"] is None:
        check_ok(stores, store, kw, case.get("epoch"))
        return
    with pytest.raises(Exception) as excinfo:
        lo = store.loader(**kw)
        if "epoch" in case:
            lo.set_epoch(case["epoch"])
        for _ in lo:
            pass
    check_refused(excinfo, case["expect"])


# --- arguments --------------------------------------------------------------------------

ARGS = [  # (id, loader arguments, expect: None = a correct result, else the refusal's regex)
    ("default", {}, None),
    ("several-sites", {"sites": "resid_post:0-1,z:1"}, None),
    ("hook-list", {"sites": ["blocks.1.hook_resid_post", "blocks.1.attn.hook_z"]}, None),
    ("sites-empty", {"sites": ""}, r"sites='' names no site.*holds"),
    ("sites-empty-list", {"sites": []}, r"names no site"),
    ("sites-none", {"sites": None}, r"names no site"),
    ("sites-int", {"sites": 5}, r"names no site"),
    ("sites-unknown", {"sites": "resid_pots:1"}, r"resid_pots"),
    ("sites-pattern", {"sites": "pattern:1"}, r"not one vector per token"),
    ("rows-step", {"rows": slice(0, 12, 2)}, None),
    ("rows-step-3", {"rows": slice(1, None, 3), "world_size": 2}, None),
    ("rows-negative-step", {"rows": slice(None, None, -1)}, None),
    ("rows-tail", {"rows": slice(-5, None)}, None),
    ("rows-clipped", {"rows": slice(4, 100)}, None),
    ("rows-int", {"rows": 3}, None),
    ("rows-int-negative", {"rows": -1}, None),
    ("rows-range", {"rows": range(2, 9)}, None),
    ("rows-range-step", {"rows": range(0, 12, 5)}, None),
    ("rows-list", {"rows": [0, 5, 11]}, None),
    ("rows-array", {"rows": np.array([7, 2])}, None),
    ("rows-mask", {"rows": np.arange(N) % 3 == 0}, None),
    ("rows-empty-slice", {"rows": slice(5, 5)}, r"selects no row.*pass rows="),
    ("rows-beyond", {"rows": slice(20, 30)}, r"selects no row"),
    ("rows-step-0", {"rows": slice(0, 12, 0)}, r"step cannot be zero"),
    ("rows-float-slice", {"rows": slice(0.5, 3)}, r"must be integers"),
    ("rows-int-out", {"rows": 12}, r"row 12, out of range.*0\.\.11"),
    ("rows-int-out-negative", {"rows": -13}, r"row -13, out of range"),
    ("rows-range-empty", {"rows": range(0)}, r"rows=range\(0, 0\) selects no row"),
    ("rows-list-empty", {"rows": []}, r"list with no row\) is not a row selection"),
    ("rows-twice", {"rows": [1, 1]}, r"row 1 more than once"),
    ("rows-list-out", {"rows": [0, 99]}, r"row 99, out of range"),
    ("rows-str", {"rows": "0:5"}, r"not a row selection"),
    ("rows-float", {"rows": 2.5}, r"not a row selection"),
    ("rows-mask-none", {"rows": np.zeros(N, bool)}, r"no row set"),
    ("rows-mask-short", {"rows": np.ones(5, bool)}, r"not a row selection"),
    ("seed-7", {"seed": 7}, None),
    ("seed-numpy", {"seed": np.int64(3)}, None),
    ("seed-none", {"seed": None}, r"seed must be a non-negative integer; got None"),
    ("seed-negative", {"seed": -1}, r"seed must be"),
    ("seed-float", {"seed": 1.5}, r"seed must be"),
    ("seed-str", {"seed": "0"}, r"seed must be"),
    ("batch-1", {"batch_size": 1}, None),
    ("batch-7", {"batch_size": 7, "shuffle": False}, None),
    ("batch-all", {"batch_size": 84}, None),
    ("batch-more-than-all", {"batch_size": 1000}, None),  # one short batch: nothing dropped
    ("batch-0", {"batch_size": 0}, r"batch_size must be a positive integer"),
    ("batch-float", {"batch_size": 2.5}, r"batch_size must be"),
    ("batch-bool", {"batch_size": True}, r"batch_size must be"),
    ("batch-none", {"batch_size": None}, r"batch_size must be"),
    (
        "no-batch-drop-last",
        {"batch_size": 1000, "drop_last": True},
        r"no batch.*84 tokens.*batch_size=84 or less",
    ),
    ("drop-last", {"batch_size": 10, "drop_last": True}, None),
    ("dtype-float16", {"dtype": torch.float16}, None),
    ("dtype-str-float16", {"dtype": "float16"}, None),
    ("dtype-str-bfloat16", {"dtype": "bfloat16"}, None),
    ("dtype-str-torch", {"dtype": "torch.float64"}, None),
    (
        "dtype-bad-str",
        {"dtype": "float17"},
        r"dtype='float17' is not a floating-point dtype.*'float16'",
    ),
    ("dtype-int", {"dtype": torch.int32}, r"not a floating-point dtype"),
    ("dtype-int-str", {"dtype": "int8"}, r"not a floating-point dtype"),
    ("dtype-number", {"dtype": 5}, r"not a floating-point dtype"),
    ("device-cpu", {"device": "cpu"}, None),
    ("device-cpu-object", {"device": torch.device("cpu")}, None),
    ("device-cuda", {"device": "cuda"}, None if GPU else r"no CUDA GPU.*device='cpu'"),
    ("device-cuda-7", {"device": "cuda:7"}, r"CUDA GPU"),
    ("device-mps", {"device": "mps"}, None if MPS else r"no Apple GPU"),
    ("device-gpu", {"device": "gpu"}, r"device='gpu' is not a device"),
    ("device-empty", {"device": ""}, r"is not a device"),
    ("device-meta", {"device": "meta"}, r"'cpu', 'cuda'"),
    ("world-2", {"world_size": 2}, None),
    ("world-3-even", {"world_size": 3, "even_batches": True}, None),
    ("world-4", {"world_size": 4}, None),  # more ranks than chunks
    ("world-4-even", {"world_size": 4, "even_batches": True}, None),
    ("world-5-even", {"world_size": 5, "even_batches": True, "batch_size": 4}, None),
    ("world-12-even", {"world_size": 12, "even_batches": True, "batch_size": 7}, None),
    (
        "world-4-even-rows",
        {"world_size": 4, "even_batches": True, "rows": slice(0, 8), "batch_size": 4},
        None,
    ),
    ("world-13", {"world_size": 13, "rank": 0}, r"world_size=13 ranks.*at most 12 processes"),
    (
        "world-even-no-batch",
        {"world_size": 2, "rank": 0, "even_batches": True, "batch_size": 50},
        r"no batch.*fewest tokens, and that rank gets 28 tokens.*batch_size=28 or less",
    ),
    ("rank-out", {"world_size": 2, "rank": 2}, r"rank must be in 0..world_size-1"),
    ("rank-alone", {"rank": 1}, r"Pass rank= and world_size= together"),
    ("world-0", {"world_size": 0, "rank": 0}, r"world_size >= 1"),
    ("set-epoch-3", {"seed": 2}, None, 3),
    ("set-epoch-big", {}, None, 10**6),
    ("set-epoch-negative", {}, r"epoch must be a non-negative integer; got -1", -1),
    ("set-epoch-str", {}, r"epoch must be", "1"),
    ("epoch-arg-negative", {"epoch": -2}, r"epoch must be"),
    ("skip-bos-false", {"skip_bos": False, "world_size": 3}, None),
    ("num-workers-0", {"num_workers": 0}, r"num_workers .* must be a positive integer"),
    ("buffer-0", {"buffer_tokens": 0}, r"buffer_tokens must be"),
    ("buffer-small", {"buffer_tokens": 3, "world_size": 2}, None),
    ("prefetch-0", {"prefetch": 0, "num_workers": 2}, r"prefetch must be"),
    ("shuffle-str", {"shuffle": "no"}, r"shuffle must be True or False"),
    ("doc-default", {"store": "doc"}, None),
    ("doc-even-3", {"store": "doc", "world_size": 3, "even_batches": True, "batch_size": 5}, None),
    ("doc-even-8", {"store": "doc", "world_size": 8, "even_batches": True, "batch_size": 1}, None),
    (
        "doc-even-8-no-batch",
        {"store": "doc", "world_size": 8, "rank": 3, "even_batches": True, "batch_size": 3},
        r"no batch.*that rank gets 1 tokens of rows 0..9 \(105 in all\).*batch_size=1 or less",
    ),
    ("doc-rows-step", {"store": "doc", "rows": slice(1, None, 2), "world_size": 2}, None),
    ("doc-no-padding-skip", {"store": "doc", "skip_padding": False, "skip_bos": False}, None),
]


def _case(row: tuple) -> dict:
    case_id, kw, expect, *epoch = row
    kw = dict(kw)
    case = {"kw": kw, "expect": expect, "store": kw.pop("store", "packed")}
    if epoch:
        case["epoch"] = epoch[0]
    return case


@pytest.mark.parametrize("row", ARGS, ids=[r[0] for r in ARGS])
def test_arguments(stores, row):
    outcome(stores, _case(row))


def test_normalisation_over_a_selection(stores):
    """center/scale over rows with a step equal numpy over exactly those tokens."""
    store = stores["packed"]
    hook = "blocks.1.hook_resid_post"
    lo = store.loader(
        hook, batch_size=16, rows=slice(1, 12, 2), center=True, scale=True, progress=False
    )
    x = stores["full"][store.path][hook][1::2, 1:].reshape(-1, 64).astype(np.float64)
    mean = x.mean(0)
    factor = np.sqrt(64) / np.linalg.norm(x - mean, axis=1).mean()
    np.testing.assert_allclose(lo.norm[hook].mean, mean, rtol=1e-9, atol=1e-9 * np.abs(mean).max())
    assert lo.norm[hook].scale == pytest.approx(factor, rel=1e-9)
    got = torch.cat([b[hook] for b in lo]).numpy()
    assert len(got) == len(x)


# --- iterators ------------------------------------------------------------------------------


def test_two_iterators(stores):
    """Either refused, or independent and correct: the batches taken are the epoch's, in
    order, each once, and the state counts them."""
    store = stores["packed"]
    whole = [b["row"] for b in store.loader("resid_post:1", 8, seed=1)]
    lo = store.loader("resid_post:1", 8, seed=1)
    taken: list[torch.Tensor] = []
    try:
        a, b = iter(lo), iter(lo)
        taken += [next(a)["row"], next(b)["row"], next(a)["row"], next(b)["row"]]
    except ActStoreError as e:
        assert FIX.search(str(e)) and "iterator" in str(e), str(e)
    else:
        assert lo.state_dict()["batches"] == len(taken)
        assert all(torch.equal(t, w) for t, w in zip(taken, whole)), "batches repeated or skipped"


@pytest.mark.parametrize("call", ["set_epoch", "load_state_dict", "iter"])
def test_changing_the_position_while_an_iterator_is_open(stores, call):
    """Refused while an iterator holds the position; allowed once it is closed."""
    store = stores["packed"]
    lo = store.loader("resid_post:1", 8, seed=1)
    state = lo.state_dict()
    it = iter(lo)
    next(it)
    do = {
        "set_epoch": lambda: lo.set_epoch(2),
        "load_state_dict": lambda: lo.load_state_dict(state),
        "iter": lambda: next(iter(lo)),
    }[call]
    with pytest.raises(ActStoreError, match=r"iterator of this loader is open.*close it"):
        do()
    it.close()
    do()


# --- states ------------------------------------------------------------------------------

STATES = [  # (id, a function (stores, this loader's own state) -> the state to load, expect)
    ("none", lambda s, m: None, r"is a NoneType"),
    ("list", lambda s, m: [1, 2], r"is a list"),
    ("empty", lambda s, m: {}, r"lacks 'version'"),
    (
        "garbage",
        lambda s, m: {"x": 1},
        r"lacks .*not a dict that ActivationLoader.state_dict\(\) returned",
    ),
    (
        "old-format",
        lambda s, m: (
            {k: m[k] for k in ("epoch", "seed", "world_size", "batch_size", "shuffle")}
            | {"batches": 2, "n_tokens": 84, "buffer_tokens": 256}
        ),
        r"without the store's identity",
    ),
    ("seed-str", lambda s, m: {**m, "seed": "x"}, r"seed='x' \(a loader saves an integer\)"),
    ("version", lambda s, m: {**m, "version": 99}, r"version 99"),
    (
        "other-model",
        lambda s, m: s["other"].loader("resid_post:1", 8).state_dict(),
        r"another store.*model's weights.*Load it into a loader of the store it was saved from",
    ),
    (
        "other-layout",
        lambda s, m: s["doc"].loader("resid_post:1", 8).state_dict(),
        r"another store.*layout",
    ),
    (
        "other-seed",
        lambda s, m: s["packed"].loader("resid_post:1", 8, seed=4).state_dict(),
        r"saved with seed=4, this loader has seed=0; make the loader with seed=4",
    ),
    (
        "other-rows",
        lambda s, m: s["packed"].loader("resid_post:1", 8, rows=slice(0, 12, 2)).state_dict(),
        r"saved with rows=<6 rows of 0..10",
    ),
    (
        "other-world",
        lambda s, m: s["packed"].loader("resid_post:1", 8, rank=1, world_size=2).state_dict(),
        r"world_size=2 and as many processes",
    ),
    (
        "other-batch",
        lambda s, m: s["packed"].loader("resid_post:1", 9).state_dict(),
        r"saved with batch_size=9",
    ),
    (
        "other-sites",
        lambda s, m: s["packed"].loader("resid_post:0", 8).state_dict(),
        r"saved with sites=",
    ),
    (
        "other-buffer",
        lambda s, m: s["packed"].loader("resid_post:1", 8, buffer_tokens=64).state_dict(),
        r"saved with buffer_tokens=64, this loader has buffer_tokens=256 \(its default",
    ),
    (
        "batches-huge",
        lambda s, m: {**m, "batches": 10**6},
        r"batches=1000000\) is out of range.*has 11 batches",
    ),
    ("batches-negative", lambda s, m: {**m, "batches": -5}, r"batches=-5"),
    ("batches-float", lambda s, m: {**m, "batches": 2.0}, r"batches=2.0"),
    ("epoch-negative", lambda s, m: {**m, "epoch": -1}, r"epoch=-1"),
    ("mid-epoch", lambda s, m: {**m, "batches": 4}, None),
    ("end-of-epoch", lambda s, m: {**m, "epoch": 2, "batches": 11}, None),
    ("json", lambda s, m: json.loads(json.dumps({**m, "batches": 3})), None),
]


@pytest.mark.parametrize("row", STATES, ids=[r[0] for r in STATES])
def test_states(stores, row):
    _, make, expect = row
    store = stores["packed"]
    lo = store.loader("resid_post:1", 8, seed=0)
    state = make(stores, lo.state_dict())
    if expect is not None:
        with pytest.raises(Exception) as excinfo:
            lo.load_state_dict(state)
        check_refused(excinfo, expect)
        assert "seed=None" not in str(excinfo.value)
        assert (lo.epoch, lo.state_dict()["batches"]) == (0, 0)  # a refused state changes nothing
        return
    lo.load_state_dict(state)
    epoch, k = state["epoch"], state["batches"]
    ref = store.loader("resid_post:1", 8, seed=0)
    ref.set_epoch(epoch)
    rest = list(ref)[k:]
    if not rest:  # saved at the end of an epoch: the next one follows
        ref.set_epoch(epoch + 1)
        rest = list(ref)
    got = list(lo)
    assert len(got) == len(rest) and all(torch.equal(a["row"], b["row"]) for a, b in zip(got, rest))


# --- generated -------------------------------------------------------------------------------

# slices (any start, stop and step, some empty or out of range); the table has the other kinds
ROWS = st.builds(
    slice,
    st.one_of(st.none(), st.integers(-14, 14)),
    st.one_of(st.none(), st.integers(-14, 14)),
    st.one_of(st.none(), st.integers(-4, 4)),
)


def valid_rows(rows: Any) -> bool:
    try:
        idx = expected_rows(rows)
    except (IndexError, ValueError):
        return False
    return len(idx) > 0 and len(set(idx.tolist())) == len(idx)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=ROWS,
    batch_size=st.sampled_from([1, 3, 8, 20, 50, 100]),
    world=st.integers(1, 6),
    even=st.booleans(),
    drop_last=st.booleans(),
    seed=st.integers(0, 3),
    epoch=st.sampled_from([None, 0, 2]),
)
def test_generated(stores, rows, batch_size, world, even, drop_last, seed, epoch):
    """Every combination: a correct epoch on every rank, or a refusal of ours that the
    numbers justify (no rows; fewer rows than ranks; a rank with fewer tokens than a batch)."""
    store = stores["packed"]
    kw = {
        "sites": "resid_post:1,z:1",
        "batch_size": batch_size,
        "rows": rows,
        "seed": seed,
        "even_batches": even,
        "drop_last": drop_last,
        "num_workers": 1,
    }
    try:
        check_ok(stores, store, {**kw, "world_size": world}, epoch)
    except ActStoreError as e:
        msg = str(e)
        assert FIX.search(msg), msg
        if not valid_rows(rows):
            return
        n_rows = len(expected_rows(rows))
        if n_rows < world:
            assert re.search(rf"\({n_rows} rows\) cannot be shared by world_size={world}", msg), msg
            return
        # the refusal must be that a rank has fewer tokens than a batch and drops them
        assert re.search(r"has no batch", msg) and (even or drop_last), msg
        plain = [
            store.loader(
                **{**kw, "even_batches": False, "drop_last": False, "batch_size": 1},
                rank=r,
                world_size=world,
            )
            for r in range(world)
        ]
        assert any(
            min(lo.plan(e).rank_tokens() for lo in plain) < batch_size for e in {0, epoch or 0}
        ), msg
