"""actstore.patching against transformer_lens.patching, side by side in one run.

On a random-init GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, built into a
temp folder: no download), with 20-token prompts (BOS + 19), for get_act_patch_resid_pre
and get_act_patch_attn_head_out_by_pos, it times:
  (a) transformer_lens.patching with a plain logit-difference metric (what a TL user writes)
  (b) actstore.patching with the same plain metric (drop-in: only the import changed)
  (c) actstore.patching with the built-in batched LogitDiff
and prints the ratios (a)/(b) and (a)/(c), the max abs difference from (a), the cost of
actstore's self-check (every sweep recomputes one or two variants with a plain
run_with_hooks: (c) timed again with the check off, in the same run), and the work
through the blocks (row x position items through block calls; the reference runs every
variant in full; when the metric reads the last position only, actstore's last block runs
that position alone and computes the others' keys and values apart, not counted here).

Two prompt pairs ("scenarios"), because the engine skips what a patch cannot change:
  s2     IOI, the second mention of the subject swapped ("... then John handed" ->
         "... then Mary handed"): clean and corrupted differ at position 15 of 20
  early  the first word changed ("After the meeting" -> "Before the meeting"): they
         differ at position 1, so almost every patch changes something (worst case)
The reference's cost does not depend on the prompts (every variant is a full forward); it
is timed on each scenario for resid_pre and, unless --ref-every-scenario, on s2 only for
the 2880-variant head sweep (about 0.1 s a forward: several minutes).

--xl adds a GPT-2-XL-shaped (48 layers, d_model 1600, 25 heads, ~6.5 GB fp32) resid_pre
sweep on the s2 prompts, built into a temp folder by a subprocess: model load time, sweep
time, peak RSS of the sweep and of the process; the reference is estimated from one
timed full forward x the number of variants (running it would take ~20 minutes).
--direct-path times get_act_patch_direct_path (one source head, every later head's q, k
or v input) against TransformerLens's (one forward per edge), and ours for every source
(get_act_patch_direct_path_all_sources; the reference's time estimated from the measured
single-source run x the number of edges).
No assertions on timings: the figures are information only.

    /tmp/venv/bin/python benchmarks/bench_patching.py                   # GPT-2-small shape
    /tmp/venv/bin/python benchmarks/bench_patching.py --threads 1       # a busy machine: avoid thread thrash
    /tmp/venv/bin/python benchmarks/bench_patching.py --xl              # + the GPT-2-XL shape
    /tmp/venv/bin/python benchmarks/bench_patching.py --xl-only --xl-scenario early
    /tmp/venv/bin/python benchmarks/bench_patching.py --direct-path-only --threads 1
    python benchmarks/bench_patching.py --tiny --direct-path --threads 1   # a smoke run (2 layers)
    python benchmarks/bench_patching.py --device cuda --dtype float16 --batch 8   # on a GPU
    python benchmarks/bench_patching.py --family llama --sweeps resid_pre      # another family, same size

--family runs the small sweeps on a random model of another family at GPT-2-small's size
(actstore.random_models): there actstore runs the patched variants as whole plain
forwards, batched, so the block work of ours and the reference's is the same but for the
no-op patches skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformer_lens import patching as tlp  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from actstore import patching as ap  # noqa: E402
from actstore.demo import gpt2_tokenizer  # noqa: E402
from actstore.patching import self_check as _self_check  # noqa: E402

CLEAN = "After the meeting, Mary and John walked to the station, and then John handed the ticket to"
SCENARIOS = {
    "s2": "After the meeting, Mary and John walked to the station, and then Mary handed the ticket to",
    "early": "Before the meeting, Mary and John walked to the station, and then John handed the ticket to",
}
ANSWER, WRONG = " Mary", " John"
SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
TINY = dict(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=50257)  # --tiny: a smoke run
XL = dict(n_layer=48, n_embd=1600, n_head=25, n_positions=1024, vocab_size=50257)
SWEEPS = ("get_act_patch_resid_pre", "get_act_patch_attn_head_out_by_pos")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--batch", type=int, default=1, help="prompt pairs per sweep (copies of the pair)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    p.add_argument("--sweeps", default=",".join(s.removeprefix("get_act_patch_") for s in SWEEPS))
    p.add_argument("--scenarios", default="s2,early")
    p.add_argument(
        "--ref-every-scenario",
        action="store_true",
        help="time the head sweep's reference on each scenario",
    )
    p.add_argument("--xl", action="store_true", help="also the GPT-2-XL-shaped resid_pre sweep")
    p.add_argument("--xl-only", action="store_true")
    p.add_argument("--xl-scenario", default="s2", choices=list(SCENARIOS))
    p.add_argument(
        "--model-dir", default=None, help="build/reuse the random models here (default: a temp dir)"
    )
    p.add_argument(
        "--direct-path", action="store_true", help="also direct path patching (GPT-2-small shape)"
    )
    p.add_argument("--direct-path-only", action="store_true")
    p.add_argument(
        "--direct-path-source", default="0.1", help="LAYER.HEAD of the single-source comparison"
    )
    p.add_argument(
        "--family",
        default="gpt2",
        help="the model family of the small sweeps (actstore.random_models."
        "FAMILIES), at GPT-2-small's size: 12 layers, d_model 768, 12 heads (4 key/value heads where the "
        "family has grouped-query attention)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="the small sweeps and direct paths on a 2-layer model (the family's tiny shape): a "
        "smoke run, what tests/test_benchmarks.py runs",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--out-json", default=None)
    return p.parse_args()


def build(folder: Path, config: dict[str, int], seed: int, family: str = "gpt2") -> Path:
    """Build the random model in a subprocess, so this process's peak memory is the run's own."""
    if not (folder / "config.json").exists():
        code = (
            (
                "import sys; from actstore.demo import build_random_gpt2; "
                f"build_random_gpt2(sys.argv[1], seed={seed}, **{config!r})"
            )
            if family == "gpt2"
            else (
                "import sys; from actstore.random_models import build_random_model; "
                f"build_random_model({family!r}, sys.argv[1], seed={seed}, **{config!r})"
            )
        )
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True)
    return folder


def family_shape(family: str, tiny: bool = False) -> dict[str, Any]:
    """GPT-2-small's size in ``family``'s config keywords (its tiny config's other settings kept:
    Mistral's and Gemma 2's sliding window of 8 positions, so 20-token prompts cross it); with
    ``tiny``, the family's tiny shape (actstore.random_models) and GPT-2's 2-layer TINY."""
    if tiny:
        return TINY if family == "gpt2" else {}
    if family == "gpt2":
        return SMALL
    shape: dict[str, Any] = dict(
        num_hidden_layers=12,
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=2048,
        max_position_embeddings=1024,
    )
    if family != "gpt_neox":
        shape["num_key_value_heads"] = 4
    if family == "gemma2":
        shape.update(head_dim=64, query_pre_attn_scalar=64)
    return shape


DEVICE, DTYPE = "cpu", torch.float32  # set from --device/--dtype in main()


def boot(folder: Path) -> Any:
    bridge = TransformerBridge.boot_transformers(str(folder), device=DEVICE, dtype=DTYPE)
    bridge.eval()
    return bridge


def prompts(batch: int, scenario: str) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    tok = gpt2_tokenizer()
    ids = lambda t: [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    clean = torch.tensor([ids(CLEAN)] * batch, device=DEVICE)
    corrupted = torch.tensor([ids(SCENARIOS[scenario])] * batch, device=DEVICE)
    assert clean.shape == corrupted.shape == (batch, 20), (clean.shape, corrupted.shape)
    return clean, corrupted, tok(ANSWER)["input_ids"][0], tok(WRONG)["input_ids"][0]


class BlockWork:
    """Counts row x position items through the blocks (pre-hooks on every block)."""

    def __init__(self, bridge: Any):
        self.n = 0
        self.handles = [
            b.register_forward_pre_hook(self._count, with_kwargs=True) for b in bridge.blocks
        ]

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor):
            self.n += int(x.shape[0] * x.shape[1])

    def close(self) -> int:
        for h in self.handles:
            h.remove()
        return self.n


def timed(bridge: Any, fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor, int]:
    gc.collect()
    work = BlockWork(bridge)
    _sync()
    t = time.perf_counter()
    out = fn()
    _sync()
    dt = time.perf_counter() - t
    return dt, out, work.close()


def _sync() -> None:
    if torch.device(DEVICE).type == "cuda":
        torch.cuda.synchronize(DEVICE)


def without_self_check(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        _self_check.ENABLED = False
        try:
            return fn()
        finally:
            _self_check.ENABLED = True

    return run


def loadavg() -> str:
    try:
        return open("/proc/loadavg").read().split(" ")[0]
    except OSError:
        return "?"


def bench_small(args: argparse.Namespace, model_dir: Path, rows: list[dict[str, Any]]) -> None:
    size = "tiny" if args.tiny else "small-shape"
    what = "a tiny shape" if args.tiny else "GPT-2-small's size"
    bridge = boot(
        build(
            model_dir / f"{args.family}-{size}",
            family_shape(args.family, args.tiny),
            0,
            args.family,
        )
    )
    print(
        f"\n{args.family}, {what} ({bridge.cfg.n_layers} layers, d_model {bridge.cfg.d_model}, "
        f"{bridge.cfg.n_heads} heads), random init, {args.dtype}, {DEVICE}; {args.batch} pair(s) of 20-token prompts; torch threads "
        f"{torch.get_num_threads()}; load average at start {loadavg()} on {os.cpu_count()} CPUs"
    )
    head = (
        f"{'sweep':<22} {'prompts':<7} {'variants':>8} {'reference':>10} {'ours plain':>10} {'ratio':>7} "
        f"{'ours LogitDiff':>14} {'ratio':>7} {'check cost':>10} {'max|diff|':>9} {'block work ref / ours':>22}"
    )
    print(head)
    print("-" * len(head))
    ref_time: dict[str, float] = {}
    for sweep in args.sweeps.split(","):
        name = f"get_act_patch_{sweep}"
        for scenario in args.scenarios.split(","):
            clean, corrupted, a, w = prompts(args.batch, scenario)
            with torch.no_grad():
                _, cache = bridge.run_with_cache(clean)
            ld = ap.LogitDiff([a] * args.batch, [w] * args.batch)

            def plain(logits: torch.Tensor) -> torch.Tensor:  # a TransformerLens user's metric
                return (logits[:, -1, a] - logits[:, -1, w]).mean()

            run_ref = (
                scenario == args.scenarios.split(",")[0]
                or "resid" in sweep
                or args.ref_every_scenario
            )
            if run_ref:
                t_ref, ref, work_ref = timed(
                    bridge, lambda: getattr(tlp, name)(bridge, corrupted, cache, plain)
                )
                ref_time[sweep] = t_ref
            t_plain, got_plain, work_plain = timed(
                bridge, lambda: getattr(ap, name)(bridge, corrupted, cache, plain, progress=False)
            )
            t_ld, got_ld, work_ld = timed(
                bridge, lambda: getattr(ap, name)(bridge, corrupted, cache, ld, progress=False)
            )
            t_unchecked, _, _ = timed(
                bridge,
                without_self_check(
                    lambda: getattr(ap, name)(bridge, corrupted, cache, ld, progress=False)
                ),
            )
            t_ref = ref_time[sweep]
            diff = (
                max((got_plain - ref).abs().max().item(), (got_ld - ref).abs().max().item())
                if run_ref
                else None
            )
            row = dict(
                sweep=sweep,
                scenario=scenario,
                variants=int(got_ld.numel()),
                reference_s=t_ref,
                reference_measured=run_ref,
                ours_plain_s=t_plain,
                ours_logitdiff_s=t_ld,
                ratio_plain=t_ref / t_plain,
                ratio_logitdiff=t_ref / t_ld,
                max_abs_diff=diff,
                ours_logitdiff_unchecked_s=t_unchecked,
                self_check_cost=t_ld / t_unchecked - 1,
                work_reference=work_ref if run_ref else None,
                work_plain=work_plain,
                work_logitdiff=work_ld,
            )
            rows.append(row)
            ref_s = f"{t_ref:9.1f}s" + ("" if run_ref else "*")
            print(
                f"{sweep:<22} {scenario:<7} {row['variants']:>8} {ref_s:>10} {t_plain:9.2f}s {row['ratio_plain']:6.1f}x "
                f"{t_ld:13.2f}s {row['ratio_logitdiff']:6.1f}x {row['self_check_cost']:9.1%} "
                f"{'' if diff is None else f'{diff:9.1e}':>9} "
                f"{(str(work_ref) if run_ref else '-') + ' / ' + str(work_ld):>22}"
            )
    print("* the reference time measured on the first scenario (it does not depend on the prompts)")
    print(
        "check cost: ours with LogitDiff, self-check on / off - 1 (one plain forward of the checked variant)"
    )
    print(f"load average at end {loadavg()}")


def _reset_peak_rss() -> bool:
    try:  # Linux: '5' resets VmHWM, the peak resident set size
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_xl(args: argparse.Namespace, model_dir: Path, rows: list[dict[str, Any]]) -> None:
    print(
        f"\nGPT-2-XL shape ({XL['n_layer']} layers, d_model {XL['n_embd']}, {XL['n_head']} heads), random init, "
        f"{args.dtype}, {DEVICE}; resid_pre sweep, {args.batch} pair(s) of 20-token prompts ({args.xl_scenario}); "
        f"torch threads {torch.get_num_threads()}; load average {loadavg()}"
    )
    t = time.perf_counter()
    folder = build(model_dir / "gpt2-xl-shape", XL, seed=0)
    print(
        f"  built the random model in {time.perf_counter() - t:.0f} s (subprocess; reused if --model-dir has it)"
    )
    t = time.perf_counter()
    bridge = boot(folder)
    t_load = time.perf_counter() - t
    storages = {
        p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
        for p in bridge.original_model.parameters()
    }
    print(f"  loaded {sum(storages.values()) / 2**30:.2f} GiB of weights in {t_load:.0f} s")
    clean, corrupted, a, w = prompts(args.batch, args.xl_scenario)
    ld = ap.LogitDiff([a] * args.batch, [w] * args.batch)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
        _sync()
        t = time.perf_counter()
        bridge.run_with_hooks(corrupted, fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)])
        _sync()
        t_fwd = time.perf_counter() - t
    print(
        f"  clean run_with_cache and one reference-style forward ({t_fwd:.2f} s) done; "
        f"process peak RSS so far {_peak_rss_gb():.2f} GB"
    )
    reset = _reset_peak_rss()
    rss0 = _peak_rss_gb()
    t_sweep, got, work = timed(
        bridge, lambda: ap.get_act_patch_resid_pre(bridge, corrupted, cache, ld)
    )
    peak = _peak_rss_gb()
    n_var = got.numel()
    est_ref = t_fwd * n_var
    print(
        f"  sweep: {n_var} variants in {t_sweep:.1f} s; block work {work} row x positions "
        f"(the reference: {n_var * XL['n_layer'] * 20 * args.batch})"
    )
    print(
        f"  peak RSS during the sweep {peak:.2f} GB ({'reset before the sweep' if reset else 'whole process'}; "
        f"{rss0:.2f} GB before it: the model), process peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
    )
    if torch.device(DEVICE).type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(DEVICE) / 2**30:.2f} GiB")
    print(
        f"  reference estimated: one full forward {t_fwd:.2f} s x {n_var} variants = {est_ref / 60:.1f} min "
        f"-> ratio ~{est_ref / t_sweep:.0f}x (estimate, not measured)"
    )
    print(
        f"  result range [{got.min().item():.3f}, {got.max().item():.3f}], finite: {bool(torch.isfinite(got).all())}"
    )
    rows.append(
        dict(
            sweep="resid_pre",
            model="gpt2-xl-shape",
            scenario=args.xl_scenario,
            variants=int(n_var),
            load_s=t_load,
            sweep_s=t_sweep,
            peak_rss_sweep_gb=peak,
            one_forward_s=t_fwd,
            reference_estimate_s=est_ref,
            work=work,
        )
    )


def bench_direct_path(
    args: argparse.Namespace, model_dir: Path, rows: list[dict[str, Any]]
) -> None:
    shape = TINY if args.tiny else SMALL
    bridge = boot(
        build(model_dir / f"gpt2-{'tiny' if args.tiny else 'small-shape'}", shape, seed=0)
    )
    clean, corrupted, a, w = prompts(args.batch, "s2")
    ld = ap.LogitDiff([a] * args.batch, [w] * args.batch)
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(clean)
        _, corrupted_cache = bridge.run_with_cache(corrupted)
    src_layer, src_head = (int(x) for x in args.direct_path_source.split("."))
    n_layers, n_heads = shape["n_layer"], shape["n_head"]
    print(
        f"\ndirect path patching, GPT-2-{'tiny' if args.tiny else 'small'} shape, random init, {args.dtype}, {DEVICE}; {args.batch} pair(s) of 20-token "
        f"prompts (s2); LogitDiff; torch threads {torch.get_num_threads()}; load average {loadavg()}"
    )
    for component in ("q", "k", "v"):
        args_ = (
            bridge,
            corrupted,
            clean_cache,
            corrupted_cache,
            ld,
            src_layer,
            src_head,
            component,
        )
        t_ref, ref, _ = timed(bridge, lambda: tlp.get_act_patch_direct_path(*args_, verbose=False))
        t_ours, got, _ = timed(bridge, lambda: ap.get_act_patch_direct_path(*args_, verbose=False))
        t_unchecked, _, _ = timed(
            bridge, without_self_check(lambda: ap.get_act_patch_direct_path(*args_, verbose=False))
        )
        n_edges = (n_layers - 1 - src_layer) * n_heads
        diff = (got - ref).abs().max().item()
        print(
            f"  source {src_layer}.{src_head} -> {component}: {n_edges} edges, reference {t_ref:.1f} s, ours "
            f"{t_ours:.2f} s ({t_ref / t_ours:.0f}x), max|diff| {diff:.1e}, self-check cost "
            f"{t_ours / t_unchecked - 1:.1%}"
        )
        rows.append(
            dict(
                kind="direct_path",
                component=component,
                source=args.direct_path_source,
                edges=n_edges,
                reference_s=t_ref,
                ours_s=t_ours,
                ours_unchecked_s=t_unchecked,
                max_abs_diff=diff,
            )
        )
    all_edges = sum((n_layers - 1 - sl) * n_heads for sl in range(n_layers)) * n_heads
    per_edge = rows[-1]["reference_s"] / rows[-1]["edges"]
    t_all, _, _ = timed(
        bridge,
        lambda: ap.get_act_patch_direct_path_all_sources(
            bridge, corrupted, clean_cache, corrupted_cache, ld, component="v", verbose=False
        ),
    )
    print(
        f"  all sources -> v: {all_edges} edges, ours {t_all:.1f} s; reference estimated {per_edge * all_edges / 60:.0f} "
        f"min (measured per-edge time x edges) -> ~{per_edge * all_edges / t_all:.0f}x"
    )
    rows.append(
        dict(
            kind="direct_path_all_sources",
            component="v",
            edges=all_edges,
            ours_s=t_all,
            reference_estimate_s=per_edge * all_edges,
        )
    )


def main() -> None:
    global DEVICE, DTYPE
    args = parse_args()
    DEVICE, DTYPE = args.device, getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir or tmp)
        model_dir.mkdir(parents=True, exist_ok=True)
        if not (args.xl_only or args.direct_path_only):
            bench_small(args, model_dir, rows)
        if args.direct_path or args.direct_path_only:
            bench_direct_path(args, model_dir, rows)
        if args.xl or args.xl_only:
            bench_xl(args, model_dir, rows)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
