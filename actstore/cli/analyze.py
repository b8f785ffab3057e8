"""`actstore analyze induction | logit-lens | dla STORE`: one command per standard
analysis; results go under the store's results/analysis/, figures beside the store."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import analysis, plots
from ..errors import ConfigError
from ..location import figure_path
from ..store import ActivationStore, ResultWriter
from ..store.results import check_writable
from .flags import add_command

EXAMPLES = """examples:
  actstore cache rep.zarr --model gpt2 --dataset repeated-random:50 --seq-len 101 --n-rows 64 --sites pattern:all,loss
  actstore analyze induction rep.zarr
  actstore cache acts.zarr --model gpt2 --dataset prompts.jsonl --packing document --seq-len 32 \\
      --sites resid_post:all,z:all,mlp_out:all
  actstore analyze logit-lens acts.zarr --rows 0:2
  actstore analyze dla acts.zarr --rows 0:16 --target " Mary" --wrong " John"
  actstore analyze logit-lens acts.zarr --rows -3:-1 --no-save --figure none

--rows takes Python-style ranges: 'A:B' (B excluded), 'N' (one row), negative values count
from the end ('-3:-1', '-1', '-4:').
"""
_ROWS = re.compile(r"^(-?\d+)?(:)?(-?\d+)?$")


class _Parser(argparse.ArgumentParser):
    """Reads ``--rows -3:-1`` as ``--rows=-3:-1`` (argparse takes a value that starts with
    '-' and is not a plain negative number for an option)."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        if args is not None:
            args = list(args)
            for i in range(len(args) - 1, 0, -1):
                if args[i - 1] == "--rows" and args[i].startswith("-") and _ROWS.match(args[i]):
                    args[i - 1 : i + 1] = [f"--rows={args[i]}"]
        return super().parse_known_args(args, namespace)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "analyze",
        help="induction scores, logit lens, direct logit attribution over a store",
        epilog=EXAMPLES,
    )
    # typed loosely: the parents below are plain parsers, which typeshed wants as _Parser
    which: argparse._SubParsersAction[Any] = p.add_subparsers(
        dest="analysis", required=True, parser_class=_Parser
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("store", help="the store to analyse (a folder or URL)")
    common.add_argument(
        "--rows",
        default=None,
        help="rows to read: 'A:B', 'N', negative from the end ('-3:-1'); "
        "default: see each analysis",
    )
    common.add_argument(
        "--figure",
        help="PNG path (default: beside the store, <store>.<analysis>.png; 'none' to skip)",
    )
    common.add_argument("--json", action="store_true", help="print the numbers as JSON")
    common.add_argument(
        "--no-save",
        dest="save",
        action="store_false",
        help="do not write the result arrays under the store's results/analysis/",
    )
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument(
        "--model",
        help="the store's model, if its recorded name no longer loads (weights are checked)",
    )
    model.add_argument(
        "--device", default="auto", help="auto (GPU if there is one), cpu, cuda, cuda:N, ..."
    )

    i = which.add_parser(
        "induction",
        parents=[common],
        help="induction, previous- and duplicate-token scores per head",
    )
    i.add_argument(
        "--half-len",
        type=int,
        help="length of the repeated half (default: from a repeated-random corpus)",
    )
    i.set_defaults(run=_induction, default_rows=None)
    lens = which.add_parser(
        "logit-lens",
        parents=[common, model],
        help="decode stored residuals through ln_final + unembed",
    )
    lens.add_argument("--k", type=int, default=5, help="top-k tokens kept per position")
    lens.add_argument("--target", help="track this token (default: each position's next token)")
    lens.set_defaults(run=_logit_lens, default_rows="0:1")
    d = which.add_parser(
        "dla", parents=[common, model], help="direct logit attribution per head and MLP layer"
    )
    d.add_argument("--target", required=True, help="answer token, e.g. ' Mary'")
    d.add_argument("--wrong", help="wrong-answer token: attribute the logit difference")
    d.add_argument(
        "--pos", type=int, help="position read (default: the last real token of each row)"
    )
    d.set_defaults(run=_dla, default_rows=None)


def _rows(args: argparse.Namespace, store: ActivationStore) -> slice:
    """--rows as a slice of the store's rows: 'A:B' or 'N', negative values from the end."""
    text = args.rows if args.rows is not None else args.default_rows
    n = store.n_rows
    if text is None:
        return slice(0, n)
    m = _ROWS.match(text.strip())
    if not m or not (m.group(1) or m.group(2)) or (not m.group(2) and m.group(3)):
        raise ConfigError(
            f"--rows '{text}': expected 'A:B' or 'N', counted from the end when negative "
            "(e.g. '0:8', '5', '-3:-1', '-1')."
        )
    a, colon, b = (int(m.group(1)) if m.group(1) else 0), bool(m.group(2)), m.group(3)
    start = a + (n if a < 0 else 0)
    stop = start + 1 if not colon else (n if not b else int(b) + (n if int(b) < 0 else 0))
    if not 0 <= start < stop <= n:
        raise ConfigError(
            f"--rows '{text}' is outside the store's rows 0..{n - 1} (or names no row)."
        )
    return slice(start, stop)


def _outputs(
    args: argparse.Namespace, store: ActivationStore, name: str
) -> tuple[ResultWriter | None, str | None]:
    """The result writer (unless --no-save) and the figure path (unless --figure none), both
    checked writable before the analysis runs."""
    out = analysis.result_writer(store, name) if args.save else None
    figure = (
        None
        if args.figure == "none"
        else (args.figure or figure_path(store.path, f".{name.replace('_', '-')}.png"))
    )
    if figure is not None:
        check_writable(
            os.path.dirname(os.path.abspath(figure)),
            "the figure",
            "pass --figure PATH in a folder you can write, or --figure none",
        )
    return out, figure


def _json(x: Any) -> Any:
    """NaN (no value: a site not stored, a position without a next token) as null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, list):
        return [_json(v) for v in x]
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    return x


def _finish(args: argparse.Namespace, saved: list[str], figure: str | None, numbers: dict) -> int:
    if args.json:
        print(
            json.dumps(
                _json({**numbers, "results": saved, "figure": figure}), indent=2, allow_nan=False
            )
        )
    else:
        print(f"results: {', '.join(saved) or 'not saved (--no-save)'}\nfigure: {figure or 'none'}")
    return 0


def _induction(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.store)
    rows = _rows(args, store)
    out, figure = _outputs(args, store, "induction")
    res = analysis.induction_scores(store, rows, args.half_len, progress=not args.json)
    saved = res.save(store, out) if out is not None else []
    if figure:
        plots.heatmap(
            res.induction,
            figure,
            title=f"Induction score (half length {res.half_len}, {res.n_rows} rows)",
            xlabel="head",
            ylabel="layer",
            colorbar_label="mean attention to the token after the previous occurrence",
        )
    top = _largest(res.induction, 5)  # only heads whose pattern is stored
    if not args.json:
        print("top induction heads (layer.head: induction / prev-token / duplicate):")
        for layer, head in top:
            print(
                f"  {layer}.{head}: {res.induction[layer, head]:.3f} / {res.prev_token[layer, head]:.3f} / "
                f"{res.duplicate[layer, head]:.3f}"
            )
        if res.loss_halves:
            print("mean loss, first half {:.3f}, repeated half {:.3f}".format(*res.loss_halves))
    return _finish(
        args,
        saved,
        figure,
        {
            "rows": list(range(rows.start, rows.stop)),
            "top_induction_heads": [f"{layer}.{h}" for layer, h in top],
            "half_len": res.half_len,
            "induction": res.induction.tolist(),
            "loss_halves": res.loss_halves,
        },
    )


def _largest(grid: np.ndarray, n: int, key: Any = None) -> list[tuple[int, int]]:
    """(layer, head) of the ``n`` largest finite cells of ``grid`` (by ``key(grid)``); NaN
    cells (sites not stored) are never ranked."""
    ranked = key(grid) if key is not None else grid
    cells = np.argwhere(np.isfinite(grid))
    order = np.argsort(-ranked[tuple(cells.T)], kind="stable")[:n]
    return [(int(cells[i][0]), int(cells[i][1])) for i in order]


def _logit_lens(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.store)
    sl = _rows(args, store)
    out, figure = _outputs(args, store, "logit_lens")
    model = analysis.model_for(store, args.model, args.device)
    target = (
        analysis.single_token(model.tokenizer, args.target) if args.target is not None else None
    )
    res = analysis.logit_lens(
        store, model, list(range(sl.start, sl.stop)), args.k, target, progress=not args.json
    )
    saved = res.save(store, out) if out is not None else []
    what = f"P({args.target!r})" if target is not None else "P(next token)"
    if figure:
        tokens = store.str_tokens(res.rows[0])
        plots.heatmap(
            res.target_prob[0],
            figure,
            title=f"Logit lens, row {res.rows[0]}: {what}",
            xlabel="position (token)",
            ylabel="site",
            xticklabels=[repr(t)[1:-1] for t in tokens],
            yticklabels=res.hooks,
            colorbar_label="probability",
        )
    top1 = [
        [model.tokenizer.decode([int(t)]) for t in res.topk_tokens[0, j, :, 0]]
        for j in range(len(res.hooks))
    ]
    if not args.json:
        print(f"row {res.rows[0]}, top-1 token per site at the last 6 positions:")
        for hook, row in zip(res.hooks, top1):
            print(f"  {hook:<28} " + " | ".join(repr(t) for t in row[-6:]))
    return _finish(
        args,
        saved,
        figure,
        {
            "rows": res.rows,
            "sites": res.hooks,
            "target_prob_row0": res.target_prob[0].tolist(),
            "top1_row0": top1,
        },
    )


def _dla(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.store)
    sl = _rows(args, store)
    out, figure = _outputs(args, store, "dla")
    model = analysis.model_for(store, args.model, args.device)
    target = analysis.single_token(model.tokenizer, args.target)
    wrong = analysis.single_token(model.tokenizer, args.wrong) if args.wrong is not None else None
    res = analysis.direct_logit_attribution(
        store,
        model,
        list(range(sl.start, sl.stop)),
        target,
        wrong,
        args.pos,
        progress=not args.json,
    )
    saved = res.save(store, out) if out is not None else []
    # (layer, head), (layer,): NaN where the site is not stored
    heads, mlp = (
        res.heads.mean(0),
        res.mlp.mean(0),
    )
    what = (
        f"logit({args.target!r}) - logit({args.wrong!r})"
        if wrong is not None
        else f"logit({args.target!r})"
    )
    if figure:
        plots.heatmap(
            np.concatenate([heads, mlp[:, None]], axis=1),
            figure,
            diverging=True,
            title=f"Direct logit attribution to {what}, {len(res.rows)} rows",
            xlabel="head (last column: MLP)",
            ylabel="layer",
            xticklabels=[*map(str, range(heads.shape[1])), "MLP"],
            colorbar_label="contribution",
        )
    if not args.json:
        missing = [str(layer) for layer in range(heads.shape[0]) if np.isnan(heads[layer]).all()]
        top = _largest(heads, 5, key=np.abs)
        print(
            f"largest head contributions to {what} (mean over rows):"
            if top
            else "no head's z is cached"
        )
        for layer, head in top:
            print(f"  {layer}.{head}: {heads[layer, head]:+.4f}")
        if top and missing:
            print(
                f"  (z is not cached for layer{'s' * (len(missing) > 1)} {', '.join(missing)}: "
                "its heads are not attributed)"
            )
    return _finish(
        args,
        saved,
        figure,
        {
            "rows": res.rows,
            "positions": res.positions,
            "heads": heads.tolist(),
            "mlp": mlp.tolist(),
        },
    )
