"""Attribution patching against exact patching: wall-clock ratio and agreement.

For each model shape (tiny: 3 layers, d_model 64, 4 heads; GPT-2 small: 12 layers,
d_model 768, 12 heads), random init, float32, CPU, and IOI prompt pairs from
actstore.patching.tasks (template 0, ABC corruption, `--pairs` pairs, 16 tokens with BOS), for
each sweep it times:
  exact        actstore.patching (vectorised) with the batched LogitDiff
  attribution  actstore.patching.attribution, the same sweep, the same metric
  (reference   transformer_lens.patching, with --reference; resid_pre only unless
               --reference-all: the head sweeps take minutes on GPT-2 small)
and prints exact / attribution, Pearson r between the two over every cell and over
the cells a patch changes (no-op cells are equal in both by construction), and the
time of all the sweeps from one attribution_patch call (one forward + backward).

The models are random-init, so the numbers say how fast attribution is and how
linear *these* networks are, not how well attribution finds circuits in GPT-2. At
GPT-2's init scale (0.02) the blocks are close to linear; `--init 0.2` (10x wider
weights, as the patching tests use) makes them far more nonlinear.
No assertions: information only.

    /tmp/venv/bin/python benchmarks/bench_attribution.py                       # tiny + GPT-2-small shape
    /tmp/venv/bin/python benchmarks/bench_attribution.py --init 0.2 --shapes tiny,small
    /tmp/venv/bin/python benchmarks/bench_attribution.py --reference --threads 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformer_lens.patching's progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformer_lens import patching as tlp  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from actstore import patching as ap  # noqa: E402
from actstore.demo import gpt2_tokenizer  # noqa: E402
from actstore.patching import attribution as at  # noqa: E402
from actstore.patching import tasks

SHAPES = {
    "tiny": dict(n_layer=3, n_embd=64, n_head=4, n_positions=64, vocab_size=50257),
    "small": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257),
}
SWEEPS = "resid_pre,attn_head_out_by_pos,attn_head_out_all_pos,block_every"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="tiny,small")
    p.add_argument("--sweeps", default=SWEEPS)
    p.add_argument("--pairs", type=int, default=8, help="IOI prompt pairs (the batch)")
    p.add_argument(
        "--init",
        type=float,
        default=0.02,
        help="initializer_range of the random model (GPT-2: 0.02)",
    )
    p.add_argument("--repeat", type=int, default=3, help="best of this many runs per timing")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--reference", action="store_true", help="also time transformer_lens.patching (resid_pre)"
    )
    p.add_argument("--reference-all", action="store_true", help="... on every sweep (slow)")
    p.add_argument("--model-dir", default=None)
    p.add_argument("--out-json", default=None)
    return p.parse_args()


def build(folder: Path, config: dict[str, int], init: float) -> Path:
    if not (folder / "config.json").exists():
        code = (
            "import sys; from actstore.demo import build_random_gpt2; "
            f"build_random_gpt2(sys.argv[1], seed=0, initializer_range={init!r}, **{config!r})"
        )
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True)
    return folder


def best_of(n: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(n):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(np.corrcoef(x.flatten().double().numpy(), y.flatten().double().numpy())[0, 1])


def loadavg() -> str:
    try:
        return open("/proc/loadavg").read().split(" ")[0]
    except OSError:
        return "?"


def bench(
    args: argparse.Namespace, shape: str, model_dir: Path, rows: list[dict[str, Any]]
) -> None:
    cfg = SHAPES[shape]
    bridge = TransformerBridge.boot_transformers(
        str(build(model_dir / f"{shape}-{args.init}", cfg, args.init)),
        device="cpu",
        dtype=torch.float32,
    )
    bridge.eval()
    tok = gpt2_tokenizer()
    pairs = tasks.ioi_pairs(args.pairs, seed=0, tokenizer=tok)
    ids = lambda t: [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    clean = torch.tensor([ids(p.clean) for p in pairs])
    corrupted = torch.tensor([ids(p.corrupted) for p in pairs])
    answer = [ids(p.answer)[1] for p in pairs]
    wrong = [ids(p.wrong)[1] for p in pairs]
    with torch.no_grad():
        clean_logits, cache = bridge.run_with_cache(clean)
        corrupted_logits = bridge(corrupted)
    metric = ap.LogitDiff(answer, wrong).normalised(clean_logits, corrupted_logits)
    print(
        f"\n{shape} shape ({cfg['n_layer']} layers, d_model {cfg['n_embd']}, {cfg['n_head']} heads), random init "
        f"{args.init}, float32, CPU; {args.pairs} IOI pairs (ABC) of {clean.shape[1]} tokens; normalised logit "
        f"difference; torch threads {torch.get_num_threads()}; load {loadavg()} on {os.cpu_count()} CPUs; best of "
        f"{args.repeat}"
    )
    head = (
        f"{'sweep':<24} {'cells':>6} {'exact':>9} {'attribution':>11} {'ratio':>7} {'r all':>6} "
        f"{'r changed':>9} {'max|diff|':>9} {'reference':>10}"
    )
    print(head)
    print("-" * len(head))
    sweeps = args.sweeps.split(",")
    # warm-up, untimed
    at.attribution_patch(bridge, corrupted, cache, metric, sweeps=sweeps[:1], progress=False)
    for sweep in sweeps:
        exact_fn, attr_fn = (
            getattr(ap, f"get_act_patch_{sweep}"),
            getattr(at, f"get_act_patch_{sweep}"),
        )
        t_exact, exact = best_of(
            args.repeat, lambda: exact_fn(bridge, corrupted, cache, metric, progress=False)
        )
        t_attr, approx = best_of(
            args.repeat, lambda: attr_fn(bridge, corrupted, cache, metric, progress=False)
        )
        # the corrupted run scores 0: a cell no patch changes has attribution exactly 0
        changed = approx != 0
        r_all, r_changed = pearson(exact, approx), pearson(exact[changed], approx[changed])
        t_ref = None
        if args.reference_all or (args.reference and sweep == "resid_pre"):
            t_ref, ref = best_of(
                1, lambda: getattr(tlp, f"get_act_patch_{sweep}")(bridge, corrupted, cache, metric)
            )
            assert (ref - exact).abs().max() < 1e-3
        row = dict(
            shape=shape,
            init=args.init,
            sweep=sweep,
            cells=int(exact.numel()),
            exact_s=t_exact,
            attribution_s=t_attr,
            ratio=t_exact / t_attr,
            pearson=r_all,
            pearson_changed=r_changed,
            n_changed=int(changed.sum()),
            max_abs_diff=float((exact - approx).abs().max()),
            reference_s=t_ref,
            pairs=args.pairs,
            threads=torch.get_num_threads(),
        )
        rows.append(row)
        ref_s = "" if t_ref is None else f"{t_ref:9.1f}s"
        print(
            f"{sweep:<24} {row['cells']:>6} {t_exact:8.3f}s {t_attr:10.3f}s {row['ratio']:6.1f}x {r_all:6.3f} "
            f"{r_changed:9.3f} {row['max_abs_diff']:9.3f} {ref_s:>10}"
        )
    t_all, _ = best_of(
        args.repeat,
        lambda: at.attribution_patch(
            bridge, corrupted, cache, metric, sweeps=sweeps, progress=False
        ),
    )
    print(
        f"all {len(sweeps)} sweeps from one attribution_patch call (one forward + backward): {t_all:.3f}s"
    )
    rows.append(
        dict(shape=shape, init=args.init, sweep="all (attribution_patch)", attribution_s=t_all)
    )


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir or tmp)
        model_dir.mkdir(parents=True, exist_ok=True)
        for shape in args.shapes.split(","):
            bench(args, shape, model_dir, rows)
    print(f"load average at end {loadavg()}")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
