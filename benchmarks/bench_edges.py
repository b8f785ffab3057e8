"""Exact edge patching (actstore.circuits.exact_edge_scores) against one forward per edge,
side by side in one run.

On a random-init GPT-2-small-shaped model (12 layers, d_model 768, 12 heads: 32,491
edges; built into a temp folder, no download) and `--pairs` IOI prompt pairs
(actstore.patching.tasks, template 0, ABC corruption: clean and corrupted differ from the names
on; `--corruption flip`: they differ late), with the per-pair LogitDiff, it times:
  ours       exact_edge_scores over every edge of the graph (self-check included)
  reference  the per-edge loop of run_with_hooks that the tests compare against
             (tests/circuits/edge_reference.py: two forwards per edge into a head or an
             MLP, one per edge into the logits) on a seeded uniform sample of `--sample`
             edges, extrapolated to the whole graph (its time per edge x the edges)
and prints edges/s for both, their ratio, and the max |ours - reference| on the sample
next to the spread of the reference's values (a random-init model moves them little).
`--check-cost` also times ours with the self-check off. No assertions on timings.

    /tmp/venv/bin/python benchmarks/bench_edges.py --threads 1          # GPT-2-small shape, CPU
    /tmp/venv/bin/python benchmarks/bench_edges.py --tiny               # 3 layers, d_model 64, 4 heads: 262 edges
    python benchmarks/bench_edges.py --device cuda --pairs 16 --sample 400   # on a GPU
    python benchmarks/bench_edges.py --family gpt_neox --tiny           # another family (actstore.random_models)

--family builds a random model of another family of the same shape (one key/value head per
head); there ours runs the graph's masked forward on the model's own forward and hooks
(actstore.circuits.forward_hooked), and the reference adds each edge's delta to the one
input it feeds (tests/circuits/edge_reference.py: edge_by_input_hooks), one forward an edge.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from actstore import patching as ap  # noqa: E402
from actstore.circuits.exact import exact_edge_scores  # noqa: E402
from actstore.circuits.graph import Graph  # noqa: E402
from actstore.demo import gpt2_tokenizer  # noqa: E402
from actstore.patching import self_check as _self_check  # noqa: E402
from actstore.patching import tasks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' reference
from tests.circuits.edge_reference import edge_by_hooks, edge_by_input_hooks  # noqa: E402

hf_logging.disable_progress_bar()  # building and loading the model: no bars, no warnings
hf_logging.set_verbosity_error()

SHAPES = {
    "small": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257),
    "tiny": dict(n_layer=3, n_embd=64, n_head=4, n_positions=64, vocab_size=50257),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tiny",
        action="store_true",
        help="3 layers, d_model 64, 4 heads instead of GPT-2 small's shape",
    )
    p.add_argument(
        "--family",
        default="gpt2",
        help="model family (actstore.random_models.FAMILIES) of that shape",
    )
    p.add_argument("--pairs", type=int, default=4, help="IOI prompt pairs (the batch)")
    p.add_argument(
        "--corruption",
        default="abc",
        choices=["abc", "flip"],
        help="abc: three fresh names (pairs differ from position 2 on); flip: the second mention of the "
        "subject replaced (they differ late, so each edge runs over fewer positions)",
    )
    p.add_argument(
        "--sample", type=int, default=60, help="edges the reference runs (a seeded uniform sample)"
    )
    p.add_argument(
        "--check-cost", action="store_true", help="also time ours with the self-check off"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--model-dir", default=None, help="build/reuse the random model here (default: a temp dir)"
    )
    p.add_argument("--out-json", default=None)
    return p.parse_args()


def boot(model_dir: Path, shape: str, device: str, dtype: torch.dtype, family: str = "gpt2") -> Any:
    """The random model, built by a subprocess (reused if model_dir has it)."""
    folder = model_dir / f"{family}-{shape}-shape"
    if not (folder / "config.json").exists():
        cfg = SHAPES[shape]
        code = (
            "import sys; from actstore.demo import build_random_gpt2; "
            f"build_random_gpt2(sys.argv[1], seed=0, **{cfg!r})"
        )
        if family != "gpt2":
            heads = dict(
                num_attention_heads=cfg["n_head"],
                **({} if family == "gpt_neox" else {"num_key_value_heads": cfg["n_head"]}),
            )
            kw = dict(
                num_hidden_layers=cfg["n_layer"],
                hidden_size=cfg["n_embd"],
                intermediate_size=4 * cfg["n_embd"],
                max_position_embeddings=cfg["n_positions"],
                **heads,
            )
            code = (
                "import sys; from actstore.random_models import build_random_model; "
                f"build_random_model({family!r}, sys.argv[1], seed=0, **{kw!r})"
            )
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True)
    bridge = TransformerBridge.boot_transformers(str(folder), device=device, dtype=dtype)
    bridge.eval()
    return bridge


def clock(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def loadavg() -> str:
    try:
        return open("/proc/loadavg").read().split(" ")[0]
    except OSError:
        return "?"


def bench(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = "tiny" if args.tiny else "small"
    bridge = boot(model_dir, shape, args.device, getattr(torch, args.dtype), args.family)
    tok = gpt2_tokenizer()
    pairs = tasks.ioi_pairs(args.pairs, seed=0, tokenizer=tok, corruption=args.corruption)
    ids = lambda t: [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    clean = torch.tensor([ids(p.clean) for p in pairs], device=args.device)
    corrupted = torch.tensor([ids(p.corrupted) for p in pairs], device=args.device)
    metric = ap.LogitDiff(
        [ids(p.answer)[1] for p in pairs], [ids(p.wrong)[1] for p in pairs], per_example=True
    )
    graph = Graph.from_model(bridge)
    cfg = SHAPES[shape]
    first = int(torch.nonzero((clean != corrupted).any(0))[0, 0])
    print(
        f"\nexact edge patching, {args.family}, GPT-2-{shape} shape ({cfg['n_layer']} layers, d_model {cfg['n_embd']}, "
        f"{cfg['n_head']} heads: {graph.n_edges} edges), random init, {args.dtype}, {args.device}; {args.pairs} IOI "
        f"pairs ({args.corruption}) of {clean.shape[1]} tokens, first differing at position {first}; per-pair "
        f"LogitDiff; torch threads {torch.get_num_threads()}; load average {loadavg()} on {os.cpu_count()} CPUs"
    )

    t_ours, ours = clock(
        args.device,
        lambda: exact_edge_scores(
            bridge, clean, corrupted, metric, graph=graph, per_pair=True, progress=False
        ),
    )
    sample = sorted(random.Random(0).sample(range(graph.n_edges), min(args.sample, graph.n_edges)))
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(clean)
        corrupted_logits, corrupted_cache = bridge.run_with_cache(corrupted)
    by_hooks = edge_by_hooks if args.family == "gpt2" else edge_by_input_hooks
    t_ref, ref = clock(
        args.device,
        lambda: torch.stack(
            [
                by_hooks(
                    bridge,
                    corrupted,
                    clean_cache,
                    corrupted_cache,
                    corrupted_logits,
                    graph,
                    e,
                    metric,
                )
                for e in sample
            ]
        ),
    )
    per_edge_ref = t_ref / len(sample)
    est_ref = per_edge_ref * graph.n_edges
    diff = float((ours[sample] - ref).abs().max())
    spread = float(ref.max() - ref.min())
    print(
        f"  ours:      {graph.n_edges} edges in {t_ours:.1f} s = {graph.n_edges / t_ours:.0f} edges/s"
    )
    print(
        f"  reference: {len(sample)} sampled edges in {t_ref:.1f} s = {1 / per_edge_ref:.1f} edges/s; every edge "
        f"~{est_ref / 60:.1f} min (estimate: time per edge x edges)"
    )
    print(
        f"  ratio ~{est_ref / t_ours:.0f}x; max |ours - reference| on the sample {diff:.2g} (reference spread "
        f"{spread:.3g})"
    )
    row = dict(
        family=args.family,
        shape=shape,
        edges=graph.n_edges,
        pairs=args.pairs,
        corruption=args.corruption,
        first_change=first,
        n_pos=int(clean.shape[1]),
        device=args.device,
        dtype=args.dtype,
        threads=torch.get_num_threads(),
        ours_s=t_ours,
        ours_edges_per_s=graph.n_edges / t_ours,
        reference_sample=len(sample),
        reference_s=t_ref,
        reference_edges_per_s=1 / per_edge_ref,
        reference_estimate_s=est_ref,
        ratio=est_ref / t_ours,
        max_abs_diff=diff,
        reference_spread=spread,
    )
    if args.check_cost:
        _self_check.ENABLED = False
        try:
            t_unchecked, _ = clock(
                args.device,
                lambda: exact_edge_scores(
                    bridge, clean, corrupted, metric, graph=graph, per_pair=True, progress=False
                ),
            )
        finally:
            _self_check.ENABLED = True
        print(
            f"  self-check cost {t_ours / t_unchecked - 1:.1%} (ours {t_unchecked:.1f} s with it off)"
        )
        row["ours_unchecked_s"] = t_unchecked
    return row


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir or tmp)
        model_dir.mkdir(parents=True, exist_ok=True)
        row = bench(args, model_dir)
    print(f"load average at end {loadavg()}")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps([row], indent=2))


if __name__ == "__main__":
    main()
