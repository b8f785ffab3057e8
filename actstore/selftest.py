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
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from . import compat
from .model_protocol import HookedModel
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

REL = {torch.float32: 1e-4, torch.float64: 1e-6, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str  # what was compared, or the error
    error: float | None = None  # max |ours - reference|
    tolerance: float | None = None
    seconds: float = 0.0


@dataclass
class SelftestReport:
    device: str
    versions: dict[str, str]
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "device": self.device,
            "versions": self.versions,
            "checks": [asdict(c) for c in self.checks],
        }

    def text(self) -> str:
        lines = [
            f"actstore selftest on {self.device}",
            "versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
        ]
        for c in self.checks:
            nums = (
                ""
                if c.error is None
                else f"  max error {c.error:.2g} (tolerance {c.tolerance:.2g})"
            )
            lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}{nums}  [{c.seconds:.1f} s]")
            if not c.passed or c.error is None:
                lines.append(f"        {c.detail}")
        n_fail = sum(not c.passed for c in self.checks)
        lines.append(
            "all checks passed"
            if self.passed
            else f"{n_fail} of {len(self.checks)} checks FAILED: do not trust actstore's numbers with these "
            "versions; install the tested ones (constraints.txt in actstore's source; README, 'Versions')."
        )
        return "\n".join(lines)


def compare_to_reference(
    ours: torch.Tensor, ref: torch.Tensor, scale: float, dtype: torch.dtype, min_spread: float
) -> tuple[bool, float, float, str]:
    """(within tolerance, max error, tolerance, why): ``ours`` against ``ref``, the tolerance
    relative to the reference's spread; a spread under ``min_spread`` is too little to compare."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ours.shape != ref.shape:
        return (
            False,
            float("inf"),
            0.0,
            f"shape {tuple(ours.shape)} where the reference has {tuple(ref.shape)}",
        )
    spread = float(ref.max() - ref.min())
    tol = max(REL[dtype] * spread, 16 * torch.finfo(dtype).eps * scale)
    err = float((ours - ref).abs().max())
    if spread < min_spread:
        return (
            False,
            err,
            tol,
            f"the reference's values span only {spread:.3g}: too little to compare",
        )
    return err <= tol, err, tol, f"reference spread {spread:.3g}"


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
    exact = device == "cpu" and storage == "float32"
    worst, worst_tol = 0.0, 0.0
    for hook in store.sites:
        ours = torch.from_numpy(np.asarray(store.acts(hook))).double()
        want = ref[hook].to(getattr(torch, storage)).double().cpu()
        if exact and not torch.equal(ours, want):
            return Check(
                "",
                False,
                f"{hook}: stored values differ from run_with_cache (float32 on CPU is bit-exact)",
            )
        ok, err, tol, why = compare_to_reference(
            ours, want, float(want.abs().max()), getattr(torch, storage), 0.0
        )
        if not ok:
            return Check(
                "", False, f"{hook}: {why}; max error {err:.3g} > tolerance {tol:.3g}", err, tol
            )
        worst, worst_tol = max(worst, err), max(worst_tol, tol)
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
    what = "bit-exact" if exact else f"max error {worst:.2g}"
    return Check(
        "",
        True,
        f"{len(store.sites)} sites x 12 rows: {what}; verify: whole",
        None if exact else worst,
        None if exact else worst_tol,
    )


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


def directional_derivative(
    bridge: HookedModel,
    corrupted: torch.Tensor,
    clean_cache: Any,
    metric: Callable[..., Any],
    name: str,
    setter: Callable[..., torch.Tensor],
    index: Sequence[int],
    eps: float = 1e-4,
) -> torch.Tensor:
    """The reference of attribution patching: d/dt of the metric with the activation at
    hook ``name`` moved by t x (setter(act, index, clean) - act), the change written into
    the hooked tensor as transformer_lens's setters write a patch, at t = 0 (central
    differences; use a float64 model)."""
    clean = clean_cache[name]

    def run(t: float) -> torch.Tensor:
        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return act.add_(t * (setter(act.clone(), index, clean) - act))

        with torch.no_grad():
            return torch.as_tensor(metric(bridge.run_with_hooks(corrupted, fwd_hooks=[(name, fn)])))

    return (run(eps) - run(-eps)) / (2 * eps)


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


def edge_by_hooks(
    bridge: HookedModel,
    corrupted: torch.Tensor,
    clean_cache: Any,
    corrupted_cache: Any,
    metric: Any,
    src: tuple[int, int],
    dst: tuple[int, int],
    component: str,
) -> float:
    """One edge patched by hand, the reference of direct path patching: the source
    head's clean-minus-corrupted write added to the residual entering the destination
    layer, the destination head's ``component`` read off that run and written into the
    corrupted run (every other reader keeps the corrupted residual); the metric."""
    (sl, sh), (dl, dh) = src, dst
    z = hook_name("z", sl)
    w_o = bridge.blocks[sl].attn.W_O[sh]
    delta = clean_cache[z][:, :, sh] @ w_o - corrupted_cache[z][:, :, sh] @ w_o
    name = hook_name(component, dl)
    seen: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["act"] = act.clone()
        return act

    def write(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act[:, :, dh] = seen["act"][:, :, dh]
        return act

    with torch.no_grad():
        bridge.run_with_hooks(
            corrupted,
            fwd_hooks=[(hook_name("resid_pre", dl), lambda a, hook: a + delta), (name, keep)],
        )
        return float(metric(bridge.run_with_hooks(corrupted, fwd_hooks=[(name, write)])))


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


def run_plan(
    plan: Sequence[tuple[str, Callable[[], Check]]], report: SelftestReport, progress: bool
) -> None:
    """Run each (name, check) into ``report``; an exception is a failed check."""
    for name, run in plan:
        t = time.perf_counter()
        try:
            check = run()
        except Exception as e:  # a broken engine raises (EngineCheckError): that is a failed check
            check = Check("", False, f"{type(e).__name__}: {e}")
        check.name, check.seconds = name, time.perf_counter() - t
        report.checks.append(check)
        if progress:
            print(
                f"  {'PASS' if check.passed else 'FAIL'}  {name}  [{check.seconds:.1f} s]",
                flush=True,
            )
