"""`actstore patch`: flags -> :class:`~actstore.patching.job.PatchJobConfig` -> one call of
:func:`~actstore.patching.job.patch_pairs` (see there for what it does and writes)."""

from __future__ import annotations

import argparse
import shlex

from ..parallel import is_main_process
from ..patching.job import PatchJobConfig, patch_pairs
from ..patching.table import SWEEPS
from ..patching.tasks import TASKS

__all__ = ["register"]

EXAMPLE = """examples:
  actstore patch --model gpt2 --pairs ioi.jsonl --sweep resid_pre --out ioi.zarr
  actstore patch --model gpt2 --pairs ioi.jsonl --sweep attn_head_out_by_pos --store ioi_clean.zarr
      (the clean activations are read from ioi_clean.zarr, cached from the clean prompts first if it
       does not exist; results go to ioi_clean.zarr/results/patching/ unless --out is given)

  actstore patch --model gpt2 --task ioi --n-pairs 32 --seed 0 --sweep attn_head_out_by_pos --method both
      (exact and attribution patching side by side, their Pearson correlation, a scatter plot)
  actstore patch --model gpt2 --task factual --facts facts.jsonl --write-pairs facts.pairs.jsonl

pairs.jsonl, one JSON object per line (clean and corrupted of the same token length, one-token answers):
  {"clean": "When Mary and John went to the store, John gave a drink to",
   "corrupted": "When Mary and John went to the store, Mary gave a drink to",
   "answer": " Mary", "wrong": " John"}

facts.jsonl (--task factual --facts facts.jsonl), one JSON object per line:
  {"prompt": "The Kremlin is in the city of", "answer": " Moscow"}
  {"prompt": "The capital of Japan is", "answer": " Tokyo", "corrupted_prompt": "The capital of France is",
   "wrong": " Paris"}
  (a fact without corrupted_prompt is paired with another fact of the same token length)
"""
# --sweep's choices, one line each, from the sweep table: name, what it patches, result axes
SWEEP_LINES = "sweeps (--sweep):\n" + "\n".join(
    f"  {name:<31}{row.what} [{', '.join(row.result_axes)}]"
    for name, row in SWEEPS.items())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patch", help="activation-patching sweep over prompt pairs (vectorised, = transformer_lens.patching)",
                       description=__doc__.split("\n\n")[0], epilog=f"{EXAMPLE}\n{SWEEP_LINES}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hub name (gpt2 .. gpt2-xl), local folder, or actstore-demo")
    p.add_argument("--model-revision")
    p.add_argument("--pairs", help="JSON lines: clean, corrupted, answer, wrong (or --task)")
    p.add_argument("--task", help=f"generate the pairs of a standard task instead: {', '.join(TASKS)}")
    p.add_argument("--n-pairs", type=int, help="pairs to generate (default 16; factual: every fact)")
    p.add_argument("--seed", type=int, default=0, help="the generated pairs are a function of the seed (default 0)")
    p.add_argument("--facts", help="--task factual: JSON lines of facts {\"prompt\", \"answer\"[, \"corrupted_prompt\", "
                                   "\"wrong\"]}")
    p.add_argument("--write-pairs", metavar="FILE", help="also save the generated pairs to FILE (the --pairs format)")
    p.add_argument("--method", default="exact", help="exact (activation patching, default), attribution (gradient "
                                                     "estimate: one forward + backward per batch) or both (stored side "
                                                     "by side, with their Pearson correlation and a scatter plot)")
    p.add_argument("--sweep", default="resid_pre", choices=list(SWEEPS), metavar="SWEEP",
                   help="what to patch (default resid_pre): a sweep of transformer_lens.patching, listed below")
    p.add_argument("--store", help="read the clean activations from this store (cached from the clean prompts first "
                                   "if it does not exist)")
    p.add_argument("--out", help="results Zarr group (default: the store's results/, else PAIRS.patch.zarr)")
    p.add_argument("--metric", choices=("normalised", "logit_diff"), default="normalised",
                   help="what the heatmap shows (both are saved)")
    p.add_argument("--figure", help="heatmap PNG path (default: next to the results, OUT.SWEEP.png)")
    p.add_argument("--batch-pairs", type=int, default=16, help="pairs per sweep call")
    p.add_argument("--memory-budget-mb", type=int, help="activation memory of one batched forward, MB")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace this sweep's results in an existing group")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = PatchJobConfig(
        model=args.model, pairs=args.pairs, sweep=args.sweep, store=args.store, out=args.out, metric=args.metric,
        figure=args.figure, batch_pairs=args.batch_pairs,
        memory_budget=None if args.memory_budget_mb is None else args.memory_budget_mb * 2**20, dtype=args.dtype,
        device=args.device, model_revision=args.model_revision, overwrite=args.overwrite, progress=not args.quiet,
        command_line=shlex.join(["actstore", *getattr(args, "argv", [])]), method=args.method, task=args.task,
        n_pairs=args.n_pairs, seed=args.seed, facts=args.facts, write_pairs=args.write_pairs)
    res = patch_pairs(cfg)
    if not is_main_process():
        return 0
    if res.correlation is not None:  # printed even with --quiet: it is the answer to --method both
        c = res.correlation
        fmt = lambda r: "n/a" if r is None else f"{r:.3f}"  # noqa: E731
        print(f"attribution vs exact ({cfg.sweep}): Pearson r = {fmt(c['pearson'])} over {c['n_cells']} cells "
              f"(mean over pairs); {fmt(c['pearson_changed'])} over the {c['n_changed']} cells a patch changes; "
              f"{fmt(c['pearson_pair_effects'])} over every pair's effects")
    if not args.quiet:
        arrays = "logit_diff, normalised" if res.method == "exact" else (
            "attribution_logit_diff, attribution_normalised" if res.method == "attribution" else
            "logit_diff, normalised, attribution_logit_diff, attribution_normalised")
        print(f"wrote {res.out} ({res.prefix}/: {arrays}, shape {res.logit_diff.shape} dims {res.dims})")
        if cfg.write_pairs:
            print(f"pairs {cfg.write_pairs}")
        for f in res.figures:
            print(f"figure {f}")
    return 0
