"""`actstore analyze induction | logit-lens | dla STORE`: one command per standard
analysis; results go under the store's results/analysis/, figures beside the store."""

from __future__ import annotations

import argparse
import json

import numpy as np

from .. import analysis, plots
from ..errors import ConfigError
from ..location import figure_path
from ..store import ActivationStore

EXAMPLES = """examples:
  actstore cache rep.zarr --model gpt2 --dataset repeated-random:50 --seq-len 101 --n-rows 64 --sites pattern:all,loss
  actstore analyze induction rep.zarr
  actstore cache acts.zarr --model gpt2 --dataset prompts.jsonl --packing document --seq-len 32 \\
      --sites resid_post:all,z:all,mlp_out:all
  actstore analyze logit-lens acts.zarr --rows 0:2
  actstore analyze dla acts.zarr --rows 0:16 --target " Mary" --wrong " John"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="induction scores, logit lens, direct logit attribution over a store",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_subparsers(dest="analysis", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("store", help="the store to analyse (a folder or URL)")
    common.add_argument("--rows", default=None, help="rows to read: 'A:B' or 'N' (default: see each analysis)")
    common.add_argument("--figure", help="PNG path (default: beside the store, <store>.<analysis>.png)")
    common.add_argument("--json", action="store_true", help="print the numbers as JSON")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", help="the store's model, if its recorded name no longer loads (weights are checked)")
    model.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu, cuda, cuda:N, ...")

    i = which.add_parser("induction", parents=[common], help="induction, previous- and duplicate-token scores per head")
    i.add_argument("--half-len", type=int, help="length of the repeated half (default: from a repeated-random corpus)")
    i.set_defaults(run=_induction, default_rows=None)
    lens = which.add_parser("logit-lens", parents=[common, model], help="decode stored residuals through ln_final + unembed")
    lens.add_argument("--k", type=int, default=5, help="top-k tokens kept per position")
    lens.add_argument("--target", help="track this token (default: each position's next token)")
    lens.set_defaults(run=_logit_lens, default_rows="0:1")
    d = which.add_parser("dla", parents=[common, model], help="direct logit attribution per head and MLP layer")
    d.add_argument("--target", required=True, help="answer token, e.g. ' Mary'")
    d.add_argument("--wrong", help="wrong-answer token: attribute the logit difference")
    d.add_argument("--pos", type=int, help="position read (default: the last real token of each row)")
    d.set_defaults(run=_dla, default_rows=None)


def _rows(args: argparse.Namespace, store: ActivationStore) -> slice:
    text = args.rows if args.rows is not None else args.default_rows
    if text is None:
        return slice(0, store.n_rows)
    try:
        a, _, b = text.partition(":")
        sl = slice(int(a or 0), int(b) if b else store.n_rows) if ":" in text else slice(int(a), int(a) + 1)
    except ValueError:
        raise ConfigError(f"--rows '{text}': expected 'A:B' or 'N'.") from None
    if not 0 <= sl.start < sl.stop <= store.n_rows:
        raise ConfigError(f"--rows '{text}' is outside the store's rows 0..{store.n_rows - 1}.")
    return sl


def _figure(args: argparse.Namespace, store: ActivationStore, name: str) -> str:
    return args.figure or figure_path(store.path, f".{name}.png")


def _finish(args: argparse.Namespace, saved: list[str], figure: str, numbers: dict) -> int:
    if args.json:
        print(json.dumps({**numbers, "results": saved, "figure": figure}, indent=2))
    else:
        print(f"results: {', '.join(saved)}\nfigure: {figure}")
    return 0


def _induction(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.store)
    res = analysis.induction_scores(store, _rows(args, store), args.half_len, progress=not args.json)
    saved = res.save(store)
    fig = plots.heatmap(res.induction, _figure(args, store, "induction"), title=f"Induction score (half length {res.half_len}, {res.n_rows} rows)",
                        xlabel="head", ylabel="layer", colorbar_label="mean attention to the token after the previous occurrence")
    order = np.argsort(np.nan_to_num(res.induction, nan=-1).ravel())[::-1][:5]
    top = [(int(i // res.induction.shape[1]), int(i % res.induction.shape[1])) for i in order]
    if not args.json:
        print("top induction heads (layer.head: induction / prev-token / duplicate):")
        for layer, head in top:
            print(f"  {layer}.{head}: {res.induction[layer, head]:.3f} / {res.prev_token[layer, head]:.3f} / {res.duplicate[layer, head]:.3f}")
        if res.loss_halves:
            print("mean loss, first half {:.3f}, repeated half {:.3f}".format(*res.loss_halves))
    return _finish(args, saved, fig, {"top_induction_heads": [f"{l}.{h}" for l, h in top],
                                      "induction": res.induction.tolist(), "loss_halves": res.loss_halves})


def _logit_lens(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.store)
    model = analysis.model_for(store, args.model, args.device)
    target = analysis.single_token(model.tokenizer, args.target) if args.target else None
    sl = _rows(args, store)
    res = analysis.logit_lens(store, model, list(range(sl.start, sl.stop)), args.k, target, progress=not args.json)
    saved = res.save(store)
    tokens = store.str_tokens(res.rows[0])
    what = f"P({args.target!r})" if args.target else "P(next token)"
    fig = plots.heatmap(res.target_prob[0], _figure(args, store, "logit-lens"), title=f"Logit lens, row {res.rows[0]}: {what}",
                        xlabel="position (token)", ylabel="site", xticklabels=[repr(t)[1:-1] for t in tokens],
                        yticklabels=res.hooks, colorbar_label="probability")
    top1 = [[model.tokenizer.decode([int(t)]) for t in res.topk_tokens[0, j, :, 0]] for j in range(len(res.hooks))]
    if not args.json:
        print(f"row {res.rows[0]}, top-1 token per site at the last 6 positions:")
        for hook, row in zip(res.hooks, top1):
            print(f"  {hook:<28} " + " | ".join(repr(t) for t in row[-6:]))
    return _finish(args, saved, fig, {"sites": res.hooks, "target_prob_row0": res.target_prob[0].tolist(), "top1_row0": top1})


def _dla(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.store)
    model = analysis.model_for(store, args.model, args.device)
    target = analysis.single_token(model.tokenizer, args.target)
    wrong = analysis.single_token(model.tokenizer, args.wrong) if args.wrong else None
    sl = _rows(args, store)
    res = analysis.direct_logit_attribution(store, model, list(range(sl.start, sl.stop)), target, wrong, args.pos,
                                            progress=not args.json)
    saved = res.save(store)
    heads, mlp = np.nanmean(res.heads, axis=0), np.nanmean(res.mlp, axis=0)  # (layer, head), (layer,)
    grid = np.concatenate([heads, mlp[:, None]], axis=1)
    what = f"logit({args.target!r}) - logit({args.wrong!r})" if wrong is not None else f"logit({args.target!r})"
    fig = plots.heatmap(grid, _figure(args, store, "dla"), title=f"Direct logit attribution to {what}, {len(res.rows)} rows",
                        xlabel="head (last column: MLP)", ylabel="layer", diverging=True,
                        xticklabels=[*map(str, range(heads.shape[1])), "MLP"], colorbar_label="contribution")
    if not args.json:
        flat = np.nan_to_num(np.abs(heads), nan=-1).ravel()
        print(f"largest head contributions to {what} (mean over rows):")
        for i in np.argsort(flat)[::-1][:5]:
            layer, head = divmod(int(i), heads.shape[1])
            print(f"  {layer}.{head}: {heads[layer, head]:+.4f}")
    return _finish(args, saved, fig, {"heads": heads.tolist(), "mlp": mlp.tolist()})
