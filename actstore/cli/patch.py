"""`actstore patch`: flags -> :class:`~actstore.patching.job.PatchJobConfig` -> one call of
:func:`~actstore.patching.job.patch_pairs` (see there for what it does and writes)."""

from __future__ import annotations

import argparse

from ..parallel import is_main_process
from ..patching.job import PatchJobConfig, patch_pairs
from ..patching.table import SWEEPS
from .flags import add_command, add_config_flags, command_line, config_from_args

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
    f"  {name:<31}{row.what} [{', '.join(row.result_axes)}]" for name, row in SWEEPS.items()
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "patch",
        help="activation-patching sweep over prompt pairs (vectorised, = transformer_lens.patching)",
        description=__doc__.split("\n\n")[0],
        epilog=f"{EXAMPLE}\n{SWEEP_LINES}",
    )
    add_config_flags(p, PatchJobConfig)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(PatchJobConfig, args, command_line=command_line(args))
    res = patch_pairs(cfg)
    if not is_main_process():
        return 0
    if res.correlation is not None:  # printed even with --quiet: it is the answer to --method both
        c = res.correlation
        fmt = lambda r: "n/a" if r is None else f"{r:.3f}"  # noqa: E731
        print(
            f"attribution vs exact ({cfg.sweep}): Pearson r = {fmt(c['pearson'])} over {c['n_cells']} cells "
            f"(mean over pairs); {fmt(c['pearson_changed'])} over the {c['n_changed']} cells a patch changes; "
            f"{fmt(c['pearson_pair_effects'])} over every pair's effects"
        )
    if cfg.progress:
        arrays = (
            "logit_diff, normalised"
            if res.method == "exact"
            else (
                "attribution_logit_diff, attribution_normalised"
                if res.method == "attribution"
                else "logit_diff, normalised, attribution_logit_diff, attribution_normalised"
            )
        )
        print(
            f"wrote {res.out} ({res.prefix}/: {arrays}, shape {res.logit_diff.shape} dims {res.dims})"
        )
        if cfg.write_pairs:
            print(f"pairs {cfg.write_pairs}")
        for f in res.figures:
            print(f"figure {f}")
    return 0
