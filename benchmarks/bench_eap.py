"""Edge attribution (actstore.circuits.edge_attribution: EAP, EAP-IG) against the reference
implementations, side by side in one run, on IOI pairs (actstore.patching.tasks.ioi_pairs).

On a random-init GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, built into a
temp folder: no download) it times, for every edge of the graph (32,491):
  (a) ours: "eap", "eap-ig-inputs" and "eap-ig-activations" (--steps points)
  (b) TransformerLens 4's edge attribution (tools.analysis.attribution_patching,
      granularity="edge": per pair and position, plain attribution only) on --tl-pairs
      pairs, against our EAP on the same pairs (its scores summed over positions)
  (c) hannamw/EAP-IG (`attribute(method='EAP-IG-inputs'/'EAP')`, TransformerLens 3.x's
      HookedTransformer with the same weights) in its own environment
      (--eapig-python, --eapig-src; see benchmarks/peers/eapig_peer.py): ours is the mirror
      image of its EAP-IG-inputs (scores negated), and its EAP (a noising score on the
      clean run) is ours with the two prompts of each pair swapped
and prints the time ratios and the largest difference from each reference relative to the
spread of the reference's scores. No assertions on timings: the figures are information.

--xl scores a GPT-2-XL-shaped model (48 layers, d_model 1600, 25 heads: 2,235,025 edges)
by EAP on --xl-pairs pairs in a subprocess built for it, and prints its time and peak
RSS (VmHWM), model included.

    python benchmarks/bench_eap.py --threads 2                       # GPT-2-small shape, 8 pairs
    python benchmarks/bench_eap.py --pairs 64 --methods eap-ig-inputs --no-tl --threads 2
    python benchmarks/bench_eap.py --xl-only --xl-pairs 1 --threads 2
    python benchmarks/bench_eap.py --eapig-python /tmp/eapig-venv/bin/python --eapig-src /tmp/EAP-IG/src
    python benchmarks/bench_eap.py --tiny                            # what tests/test_benchmarks.py runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from actstore.circuits.attribution import METHODS, edge_attribution  # noqa: E402
from actstore.circuits.graph import Graph  # noqa: E402
from actstore.circuits.metrics import circuit_metric  # noqa: E402
from actstore.demo import gpt2_tokenizer  # noqa: E402
from actstore.patching import tasks  # noqa: E402

SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
TINY = dict(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=50257)
XL = dict(n_layer=48, n_embd=1600, n_head=25, n_positions=1024, vocab_size=50257)
PEER_METHOD = {"eap-ig-inputs": "EAP-IG-inputs"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--tl-pairs", type=int, default=2, help="pairs TransformerLens's edge attribution scores"
    )
    p.add_argument("--no-tl", action="store_true")
    p.add_argument(
        "--eapig-python", default=None, help="a python with TransformerLens 3.x for hannamw/EAP-IG"
    )
    p.add_argument("--eapig-src", default=None, help="hannamw/EAP-IG's src folder")
    p.add_argument("--xl", action="store_true")
    p.add_argument("--xl-only", action="store_true")
    p.add_argument("--xl-pairs", type=int, default=1)
    p.add_argument("--progress", action="store_true", help="show our runs' progress bars")
    p.add_argument(
        "--tiny", action="store_true", help="a 2-layer model, 2 pairs, 2 steps (a smoke run)"
    )
    p.add_argument(
        "--model-dir",
        default=None,
        help="where the random models are built (default: a temp folder)",
    )
    p.add_argument("--xl-child", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def build(folder: Path, config: dict[str, int], save_dtype: str = "float32") -> Path:
    """Build the random model in a subprocess, so a measuring process's peak memory is the run's own
    (saved in float16 for the XL shape: half the disk; it runs in float32)."""
    if not (folder / "config.json").exists():
        code = (
            "import sys; from actstore.demo import build_random_gpt2; "
            f"build_random_gpt2(sys.argv[1], seed=0, save_dtype={save_dtype!r}, **{config!r})"
        )
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True)
    return folder


def boot(folder: Path) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    bridge.eval()
    return bridge


def ioi(n: int) -> tuple[list[Any], torch.Tensor, torch.Tensor, list[int], list[int]]:
    tok = gpt2_tokenizer()
    pairs = tasks.ioi_pairs(n, seed=0)
    ids = lambda t: [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    clean = torch.tensor([ids(p.clean) for p in pairs])
    corrupted = torch.tensor([ids(p.corrupted) for p in pairs])
    return (
        pairs,
        clean,
        corrupted,
        [ids(p.answer)[1] for p in pairs],
        [ids(p.wrong)[1] for p in pairs],
    )


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> str:
    spread = float(want.max() - want.min())
    return f"max |diff| {float((got.double() - want.double()).abs().max()):.2e} ({float((got.double() - want.double()).abs().max()) / spread:.1e} of the reference's spread {spread:.3g})"


def timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_tl(
    model: Any,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    a: list[int],
    w: list[int],
    ours: float,
) -> None:
    from transformer_lens.tools.analysis import attribution_patching as tl

    g = Graph.from_model(model)
    names = {
        "embed": lambda n: "input",
        "attn_head_out": lambda n: f"a{n.layer}.h{n.head}",
        "mlp_out": lambda n: f"m{n.layer}",
        "mlp_in": lambda n: f"m{n.layer}",
        "logits": lambda n: "logits",
    }
    totals: dict[str, float] = {}
    secs = 0.0
    for i in range(len(clean)):

        def metric(logits: torch.Tensor, i: int = i) -> torch.Tensor:
            return logits[0, -1, a[i]] - logits[0, -1, w[i]]

        s, res = timed(
            lambda: tl.attribution_patch(
                model,
                clean[i : i + 1],
                corrupted[i : i + 1],
                metric,
                tl.EdgeAttributionConfig(granularity="edge"),
            )
        )
        secs += s
        for (u, d), score in res.edge_scores.items():
            dn = (
                f"a{d.layer}.h{d.head}<{d.kind[0]}>"
                if d.kind.endswith("_input")
                else names[d.kind](d)
            )
            key = f"{names[u.kind](u)}->{dn}"
            totals[key] = totals.get(key, 0.0) + score / len(clean)
    want = torch.tensor([totals[n] for n in g.names])
    t, got = timed(
        lambda: edge_attribution(
            model, clean, corrupted, circuit_metric("logit-diff", answer=a, wrong=w), progress=False
        )
    )
    print(
        f"  TransformerLens edge attribution, {len(clean)} pair(s): {secs:.1f} s; ours {t:.1f} s: "
        f"ratio {secs / t:.1f}x; {rel_diff(got, want)}"
    )


def bench_eapig(
    args: argparse.Namespace,
    folder: Path,
    pairs: list[Any],
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    a: list[int],
    w: list[int],
    model: Any,
    methods: list[str],
    ours: dict[str, tuple[float, torch.Tensor]],
) -> None:
    g = Graph.from_model(model)
    runs = [[PEER_METHOD[m], args.steps] for m in methods if m in PEER_METHOD] + [["EAP", 1]]
    job = {
        "model_dir": str(folder),
        "pairs": [[p.clean, p.corrupted, x, y] for p, x, y in zip(pairs, a, w)],
        "batch": len(pairs),
        "runs": runs,
        "names": list(g.names),
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "job.json").write_text(json.dumps(job))
        r = subprocess.run(
            [
                args.eapig_python,
                str(Path(__file__).parent / "peers" / "eapig_peer.py"),
                str(Path(tmp, "job.json")),
                str(Path(tmp, "out.json")),
                "--src",
                args.eapig_src,
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(f"  hannamw/EAP-IG did not run:\n{r.stderr[-2000:]}")
            return
        out = json.loads(Path(tmp, "out.json").read_text())
    print(f"  hannamw/EAP-IG ({out['versions']}):")
    metric = circuit_metric("logit-diff", answer=a, wrong=w)
    for run in out["runs"]:
        theirs = torch.tensor(run["scores"], dtype=torch.float64)
        # noising on the clean run: ours with each pair's prompts swapped
        if run["method"] == "EAP":
            secs, got = timed(
                lambda: edge_attribution(model, corrupted, clean, metric, progress=False)
            )
            label = "EAP (noising; ours on swapped pairs)"
            want = theirs
        else:
            secs, got = ours["eap-ig-inputs"]
            label, want = f"EAP-IG-inputs, {run['steps']} steps (ours = -theirs)", -theirs
        print(
            f"    {label}: {run['seconds']:.1f} s; ours {secs:.1f} s: ratio {run['seconds'] / secs:.1f}x; "
            f"{rel_diff(got, want)}"
        )


def bench_xl_child(args: argparse.Namespace) -> None:
    """In its own process: boot the XL-shaped model, score every edge by EAP, report peak RSS."""
    folder = Path(args.xl_child)
    t, model = timed(lambda: boot(folder))
    _, clean, corrupted, a, w = ioi(args.xl_pairs)
    rss_model = _peak_rss_gb()
    secs, s = timed(
        lambda: edge_attribution(
            model, clean, corrupted, circuit_metric("logit-diff", answer=a, wrong=w), progress=True
        )
    )
    print(
        f"  booted in {t:.0f} s (peak RSS {rss_model:.2f} GB); EAP over {s.numel():,} edges, {len(clean)} pair(s) "
        f"of {clean.shape[1]} tokens: {secs:.0f} s; peak RSS of the process {_peak_rss_gb():.2f} GB"
    )


def _peak_rss_gb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.xl_child:
        bench_xl_child(args)
        return
    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="bench_eap_"))
    methods = [m for m in args.methods.split(",") if m]
    if not args.xl_only:
        shape, n_pairs, steps = (TINY, 2, 2) if args.tiny else (SMALL, args.pairs, args.steps)
        args.steps = steps
        folder = build(model_dir / ("tiny" if args.tiny else "gpt2-small-shape"), shape)
        model = boot(folder)
        pairs, clean, corrupted, a, w = ioi(n_pairs)
        metric = circuit_metric("logit-diff", answer=a, wrong=w)
        print(
            f"{shape['n_layer']} layers x {shape['n_head']} heads, d_model {shape['n_embd']}: "
            f"{Graph.from_model(model).n_edges:,} edges; {n_pairs} IOI pairs of {clean.shape[1]} tokens; "
            f"{torch.get_num_threads()} threads"
        )
        ours: dict[str, tuple[float, torch.Tensor]] = {}
        for m in methods:
            ours[m] = timed(
                lambda: edge_attribution(
                    model, clean, corrupted, metric, method=m, steps=steps, progress=args.progress
                )
            )
            print(
                f"  ours {m}{'' if m == 'eap' else f' ({steps} steps)'}: {ours[m][0]:.1f} s "
                f"({ours[m][0] / n_pairs:.2f} s a pair)"
            )
        if not args.no_tl:
            n = min(args.tl_pairs, n_pairs)
            bench_tl(
                model,
                clean[:n],
                corrupted[:n],
                a[:n],
                w[:n],
                ours["eap"][0] if "eap" in ours else 0.0,
            )
        if args.eapig_python and args.eapig_src:
            bench_eapig(args, folder, pairs, clean, corrupted, a, w, model, methods, ours)
    if args.xl or args.xl_only:
        folder = build(model_dir / "gpt2-xl-shape", XL, save_dtype="float16")
        print(
            f"\nGPT-2-XL shape ({XL['n_layer']} layers, d_model {XL['n_embd']}, {XL['n_head']} heads), random init:"
        )
        cmd = [
            sys.executable,
            __file__,
            "--xl-child",
            str(folder),
            "--xl-pairs",
            str(args.xl_pairs),
        ]
        subprocess.run(cmd + (["--threads", str(args.threads)] if args.threads else []), check=True)


if __name__ == "__main__":
    main()
