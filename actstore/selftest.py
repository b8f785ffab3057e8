"""`actstore selftest`: does actstore give the reference's numbers on this machine, with
these library versions?

actstore relies on internals of transformers and TransformerLens (how a bridge block
runs standalone, how its attention takes a key/value cache, which hooks alias which
tensors). A release can change them without an error; this checks, in well under a
minute on a CPU, on the shipped demo model (trained: IOI logit differences near 9), that

- caching equals ``run_with_cache`` (bit for bit in float32 on CPU), and a store
  written, read back and verified is whole;
- activation patching equals ``transformer_lens.patching`` (prompts differing late and
  early, residual stream, heads, patterns), attribution patching equals finite
  differences (float64), direct path patching equals single-edge patches written with
  hooks;
- on a GPU, the same in float16 (compute and storage) as well.

Each check compares with a tolerance of 1e-4 of the spread of the reference's values
(16 ulps of the logits where that is larger; float16: 2e-2), and reports the error, the
tolerance and PASS/FAIL. Run it after installing or upgrading anything, on each new
machine (a cluster node, a GPU type), and before a long sweep.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr

import numpy as np
import torch

from . import compat
from .selftest_checks import Check, SelftestReport, compare_store, compare_to_reference, run_plan
from .selftest_references import directional_derivative, edge_by_hooks
from .sites import hook_name

__all__ = [
    "Check",
    "SelftestReport",
    "run_selftest",
    "run_plan",
    "check_selftest_device",
    "available_devices",
    "edge_by_hooks",
    "directional_derivative",
]


@contextmanager
def _quiet_reference() -> Iterator[None]:
    """transformer_lens.patching's sweeps draw a progress bar each (on stderr); not here."""
    # no_grad: transformer_lens then writes its patches
    with (
        torch.no_grad(),
        redirect_stderr(io.StringIO()),
    ):
        yield  # into the hooked tensor, as actstore does


# --- the model and prompts ------------------------------------------------------------------------


class _Demo:
    """actstore-demo with held-out IOI pairs: ``late`` differ at position 10 (the
    repeated subject), ``early`` at position 2 (another first name)."""

    def __init__(self, device: str, dtype: torch.dtype):
        from transformer_lens.model_bridge import TransformerBridge

        from .demo import data as demo_data
        from .patching import LogitDiff
        from .resources import demo_model_dir, demo_tokenizer

        self.bridge = TransformerBridge.boot_transformers(
            str(demo_model_dir()), device=device, dtype=dtype
        )
        self.bridge.eval()
        tok = demo_tokenizer()
        ids = lambda t: [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        pairs = demo_data.ioi_pairs(2, template=0)
        self.clean = torch.tensor([ids(p["clean"]) for p in pairs], device=device)
        late = torch.tensor([ids(p["corrupted"]) for p in pairs], device=device)
        early = self.clean.clone()
        early[:, 2] = torch.tensor([ids(" Emma")[1], ids(" Paul")[1]], device=device)
        self.corrupted = {"late": late, "early": early}
        self.ld = LogitDiff(
            [ids(p["answer"])[1] for p in pairs], [ids(p["wrong"])[1] for p in pairs]
        )
        with torch.no_grad():
            self.clean_logits, self.cache = self.bridge.run_with_cache(self.clean)
        self.scale = float(self.clean_logits.abs().max())
        self.dtype = dtype


# --- the checks -----------------------------------------------------------------------------------


def _check_cache(d: _Demo, device: str, tmp: str, storage: str) -> Check:
    from .capture import cache
    from .store import ActivationStore, verify_store

    sites = "resid_pre:all,resid_mid:1,attn_out:2,mlp_out:3,z:1,pattern:0,resid_post:3"
    path = f"{tmp}/selftest-{storage}.zarr"
    store = cache(
        out=path,
        model="actstore-demo",
        dataset="actstore-demo",
        sites=sites,
        seq_len=32,
        n_rows=12,
        batch_size=4,
        rows_per_chunk=4,
        dtype=str(d.dtype).removeprefix("torch."),
        storage_dtype=storage,
        device=device,
        progress=False,
    )
    tokens = torch.as_tensor(store.tokens().astype(np.int64), device=device)
    with torch.no_grad():
        _, ref = d.bridge.run_with_cache(tokens)
    check = compare_store(store, ref, device == "cpu" and storage == "float32")
    if not check.passed:
        return check
    damage = verify_store(path, progress=False)
    if damage or not store.is_complete:
        return Check(
            "",
            False,
            f"verify found {len(damage)} damaged shard objects; complete: {store.is_complete}",
        )
    back = ActivationStore.open(path)
    if not np.array_equal(back.tokens(), store.tokens()) or back.sites != store.sites:
        return Check("", False, "the store read back differs from what was written")
    check.detail = f"{len(store.sites)} sites x 12 rows: {check.detail}; verify: whole"
    return check


def _check_patching(d: _Demo, kind: str, sweeps: tuple[str, ...]) -> Check:
    from transformer_lens import patching as tlp

    from . import patching as ap

    corrupted = d.corrupted[kind]
    worst = (-1.0, 0.0, 0.0)  # (error / tolerance, error, tolerance) of the closest call
    for sweep in sweeps:
        ours = getattr(ap, f"get_act_patch_{sweep}")(
            d.bridge, corrupted, d.cache, d.ld, progress=False
        )
        with _quiet_reference():
            ref = getattr(tlp, f"get_act_patch_{sweep}")(d.bridge, corrupted, d.cache, d.ld)
        ok, err, tol, why = compare_to_reference(ours, ref, d.scale, d.dtype, 0.02)
        if not ok:
            return Check(
                "", False, f"{sweep}: {why}; max error {err:.3g} > tolerance {tol:.3g}", err, tol
            )
        worst = max(worst, (err / tol, err, tol))
    return Check("", True, ", ".join(sweeps), worst[1], worst[2])


def _check_attribution(d: _Demo) -> Check:
    from . import patching as ap
    from .patching import attribution as at

    corrupted = d.corrupted["late"]
    worst = (-1.0, 0.0, 0.0)
    for sweep, act, setter in (
        ("resid_mid", "resid_mid", ap.layer_pos_patch_setter),
        ("attn_head_out_by_pos", "z", ap.layer_pos_head_vector_patch_setter),
    ):
        got = getattr(at, f"get_act_patch_{sweep}")(
            d.bridge, corrupted, d.cache, d.ld, as_effect=True, progress=False
        )
        for flat in torch.argsort(got.abs().flatten(), descending=True)[:2].tolist():
            index = [int(i) for i in np.unravel_index(flat, tuple(got.shape))]
            fd = float(
                directional_derivative(
                    d.bridge, corrupted, d.cache, d.ld, hook_name(act, index[0]), setter, index
                )
            )
            err, tol = abs(float(got.flatten()[flat]) - fd), 1e-6 * abs(fd) + 1e-9
            if err > tol:
                return Check(
                    "",
                    False,
                    f"{sweep} {index}: attribution {float(got.flatten()[flat]):.6g}, finite "
                    f"difference {fd:.6g}",
                    err,
                    tol,
                )
            worst = max(worst, (err / tol, err, tol))
    return Check(
        "", True, "resid_mid and head outputs, their 2 largest cells each", worst[1], worst[2]
    )


def _check_direct_path(d: _Demo) -> Check:
    from . import patching as ap

    corrupted = d.corrupted["late"]
    with torch.no_grad():
        _, corrupted_cache = d.bridge.run_with_cache(corrupted)
    src, component = (1, 1), "v"  # the demo's strongest source into values
    got = ap.get_act_patch_direct_path(
        d.bridge,
        corrupted,
        d.cache,
        corrupted_cache,
        d.ld,
        *src,
        component=component,
        verbose=False,
    )
    n_layers, n_heads = got.shape
    want = torch.zeros_like(got)
    for dl in range(src[0] + 1, n_layers):
        for dh in range(n_heads):
            want[dl, dh] = edge_by_hooks(
                d.bridge, corrupted, d.cache, corrupted_cache, d.ld, src, (dl, dh), component
            )
    ok, err, tol, why = compare_to_reference(
        got[src[0] + 1 :], want[src[0] + 1 :], d.scale, d.dtype, 0.02
    )
    return Check(
        "",
        ok,
        f"edges from head {src[0]}.{src[1]} into every later head's {component}; {why}",
        err,
        tol,
    )


def available_devices() -> list[str]:
    """The devices torch sees here, as --device takes them."""
    cuda = (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return ["cpu", *cuda, *(["mps"] if torch.backends.mps.is_available() else [])]


def check_selftest_device(device: str) -> str:
    """The device to test on (``auto``: a GPU if there is one), or a ConfigError, before any
    check runs: an unknown device name, or one this machine lacks, is no failed check."""
    from .errors import ConfigError
    from .models import resolve_device

    if not isinstance(device, str):
        raise ConfigError(f"device must be a name such as 'cpu' or 'cuda'; got {device!r}.")
    try:
        return resolve_device(device)
    except ConfigError as e:
        raise ConfigError(
            f"{e} Devices here: {', '.join(available_devices())}. Nothing was checked."
        ) from None


def run_selftest(device: str = "cpu", progress: bool = True) -> SelftestReport:
    """Every check on ``device`` ('cpu', 'cuda', 'cuda:1', 'mps', 'auto'; on a GPU, float16
    too). A device that is not a device name, or that this machine lacks, is refused
    (ConfigError) before any check runs."""
    device = check_selftest_device(device)
    report = SelftestReport(device=device, versions=compat.versions())
    gpu = torch.device(device).type == "cuda"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="actstore-selftest-") as tmp:
        loaded: dict[torch.dtype, _Demo] = {}

        def demo(dtype: torch.dtype) -> _Demo:
            if dtype not in loaded:
                loaded[dtype] = _Demo(device, dtype)
            return loaded[dtype]

        plan: list[tuple[str, Callable[[], Check]]] = [
            (
                "cache equals run_with_cache; store write, read, verify (float32)",
                lambda: _check_cache(demo(torch.float32), device, tmp, "float32"),
            ),
            (
                "patching equals transformer_lens.patching, prompts differing late",
                lambda: _check_patching(
                    demo(torch.float32),
                    "late",
                    (
                        "resid_pre",
                        "resid_mid",
                        "attn_out",
                        "mlp_out",
                        "attn_head_out_by_pos",
                        "attn_head_v_all_pos",
                        "attn_head_pattern_all_pos",
                    ),
                ),
            ),
            (
                "patching equals transformer_lens.patching, prompts differing early",
                lambda: _check_patching(
                    demo(torch.float32), "early", ("resid_pre", "attn_head_q_all_pos")
                ),
            ),
            (
                "direct path patching equals single-edge patches with hooks",
                lambda: _check_direct_path(demo(torch.float32)),
            ),
            (
                "attribution patching equals finite differences (float64)",
                lambda: _check_attribution(demo(torch.float64)),
            ),
        ]
        if gpu:
            plan += [
                (
                    "cache equals run_with_cache (float16 compute and storage)",
                    lambda: _check_cache(demo(torch.float16), device, tmp, "float16"),
                ),
                (
                    "patching equals transformer_lens.patching (float16)",
                    lambda: _check_patching(
                        demo(torch.float16), "late", ("resid_pre", "attn_head_out_all_pos")
                    ),
                ),
            ]
        run_plan(plan, report, progress)
    return report
