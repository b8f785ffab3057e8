"""Train a top-k sparse autoencoder on one site of an actstore store, fed by the store's loader.

    python scripts/train_sae.py acts.zarr --site resid_post:5 --k 32 --steps 2000 --out sae.pt
    torchrun --nproc_per_node 4 scripts/train_sae.py acts.zarr --site resid_post:5 --device cuda --out sae.pt
    torchrun --nproc_per_node 2 scripts/train_sae.py acts.zarr --site resid_post:5 --device cpu   # gloo, for tests

Each process reads a disjoint share of the store's chunks (the loader splits them by rank),
with even_batches so that every rank takes the same number of steps, and DDP averages the
gradients. Activations are scaled exactly as SAELens does (sqrt(d) / mean norm, computed over
the whole store). --checkpoint saves the model, optimiser, loader state and the run's
configuration every --save-every steps; rerunning the same command resumes at the exact next
batch, and a checkpoint of another configuration (site, k, expansion, batch size, lr, seed,
number of processes, store) is refused. Prints one JSON line per --log-every steps on rank 0:
{"step", "epoch", "loss", "fvu"}.

Bad input (flags, store, site, paths, checkpoint) is refused before any step and any write,
with one line ``train_sae: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

import actstore
from actstore.errors import ActStoreError, ConfigError, StoreMismatchError
from actstore.models import check_device
from actstore.parallel import group_for
from actstore.store import ActivationStore
from actstore.store.loader import resolve_sites, token_sites

PROG = "train_sae"
CONFIG_VERSION = 1  # of the "config" entry of checkpoints and SAE files
# config key -> the flag that sets it (named in refusals)
FLAGS = {
    "hook": "--site",
    "d_in": "--site",
    "expansion": "--expansion",
    "d_sae": "--expansion",
    "k": "--k",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "seed": "--seed",
    "world_size": "torchrun --nproc_per_node",
}


class TopKSAE(nn.Module):
    """x -> z = TopK(W_enc (x - b_dec) + b_enc) -> W_dec z + b_dec (Gao et al., 2024)."""

    def __init__(self, d_in: int, d_sae: int, k: int):
        super().__init__()
        self.k = k
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae) / d_in**0.5)  # (d_in, d_sae)
        self.W_dec = nn.Parameter(self.W_enc.detach().t().clone())  # (d_sae, d_in), tied at init
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc  # (batch, d_sae)
        top = pre.topk(self.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        return z @ self.W_dec + self.b_dec, z


# --- flags -----------------------------------------------------------------------------------


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(
                f"expected a positive {'integer' if kind is int else 'number'}; got {text!r}"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**64-1; got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="example:\n  python scripts/train_sae.py acts.zarr --site resid_post:5 --k 32 "
        "--steps 2000 --checkpoint ckpt.pt --out sae.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pos_int, pos_float = _positive(int), _positive(float)
    p.add_argument("store")
    p.add_argument("--site", required=True, help="one site spec, e.g. resid_post:5")
    p.add_argument("--expansion", type=pos_int, default=8, help="d_sae = expansion * d_in")
    p.add_argument("--k", type=pos_int, default=32, help="latents kept per token (at most d_sae)")
    p.add_argument(
        "--steps",
        type=pos_int,
        default=1000,
        help="train until this step (a resumed run counts on)",
    )
    p.add_argument(
        "--batch-size", type=pos_int, default=4096, help="tokens per step on each process"
    )
    p.add_argument("--lr", type=pos_float, default=1e-3)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--log-every", type=pos_int, default=10)
    p.add_argument(
        "--checkpoint", help="save here every --save-every steps; resume from it when it exists"
    )
    p.add_argument("--save-every", type=pos_int, default=100)
    p.add_argument(
        "--out", help="save the trained SAE (state dict, site, scaling factor, configuration) here"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


# --- checks, before any step and any write ---------------------------------------------------


def check_path(path: str, flag: str, overwrite: bool | None) -> None:
    """A file this run will write: its folder exists and is writable, and it is not a
    folder; an existing file is refused unless ``overwrite`` (None: it may exist)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        example = os.path.join(path, "sae.pt" if flag == "--out" else "ckpt.pt")
        raise ConfigError(f"{flag} '{path}' is a folder; pass a file path, e.g. {flag} {example}.")
    if not os.path.isdir(folder):
        raise ConfigError(
            f"{flag} '{path}': the folder '{folder}' does not exist; create it (mkdir -p {folder}) "
            f"or pass another {flag}."
        )
    if not os.access(folder, os.W_OK):
        raise ConfigError(
            f"{flag} '{path}': the folder '{folder}' is not writable; pass another {flag}."
        )
    if overwrite is False and os.path.exists(path):
        raise ConfigError(
            f"{flag} '{path}' already exists (a previous SAE?); pass --overwrite to replace it, "
            f"or another {flag}."
        )


def store_identity(store: ActivationStore) -> dict[str, Any]:
    """What makes two stores hold the same activations: the model's weights, the corpus, the layout."""
    m = store.meta
    return {
        "model": m.model.name,
        "fingerprint": m.model.fingerprint,
        "corpus": m.corpus.to_dict(),
        "layout": m.layout.to_dict(),
    }


def run_config(
    a: argparse.Namespace, store: ActivationStore, hook: str, d_in: int, world: int
) -> dict[str, Any]:
    """What a checkpoint records and a resume must match (FLAGS, then the store)."""
    return {
        "version": CONFIG_VERSION,
        "hook": hook,
        "d_in": d_in,
        "expansion": a.expansion,
        "d_sae": a.expansion * d_in,
        "k": a.k,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "seed": a.seed,
        "world_size": world,
        "store": store_identity(store),
    }


def _store_diff(saved: dict[str, Any], mine: dict[str, Any]) -> str | None:
    """How the checkpoint's store differs from this one, in words (None: the same)."""
    if saved.get("fingerprint") != mine["fingerprint"]:
        return (
            f"its model is {saved.get('model')!r} (weights {str(saved.get('fingerprint'))[:16]}), this store's "
            f"is {mine['model']!r} (weights {mine['fingerprint'][:16]})"
        )
    for part in ("corpus", "layout"):
        theirs, ours = saved.get(part) or {}, mine[part]
        for key in sorted(set(theirs) | set(ours)):
            if theirs.get(key) != ours.get(key):
                return f"its {part} {key} is {theirs.get(key)!r}, this store's is {ours.get(key)!r}"
    return None


def check_checkpoint(
    path: str, ckpt: Any, mine: dict[str, Any], store_path: str, steps: int
) -> None:
    """Refuse to resume ``ckpt`` (read from ``path``) with another configuration, naming both values."""
    fix = "pass the same flags as the run that made it, or a new --checkpoint path to start over"
    kinds = {"sae": dict, "opt": dict, "loader": dict, "step": int}
    if (
        not isinstance(ckpt, dict)
        or not all(isinstance(ckpt.get(k), t) for k, t in kinds.items())
        or ckpt["step"] < 0
    ):
        raise ConfigError(
            f"--checkpoint '{path}' is not a train_sae checkpoint; pass a new --checkpoint path "
            "(the file is left as it is)."
        )
    saved = ckpt.get("config")
    if not isinstance(saved, dict) or saved.get("version") != CONFIG_VERSION:
        raise StoreMismatchError(
            f"--checkpoint '{path}' was made by an earlier train_sae that did not record its "
            "configuration (site, k, store), so resuming it cannot be checked; pass a new "
            "--checkpoint path to start over (the file is left as it is)."
        )
    diff = _store_diff(saved.get("store") or {}, mine["store"])
    if diff is not None:
        raise StoreMismatchError(
            f"Checkpoint '{path}' was made on another store than '{store_path}': {diff}. Pass "
            "the store it was made on, or a new --checkpoint path to start over."
        )
    for key, flag in FLAGS.items():
        if saved.get(key) == mine[key]:
            continue
        if key == "world_size":
            n = saved.get(key)
            raise StoreMismatchError(
                f"Checkpoint '{path}' was made by {n!r} process{'' if n == 1 else 'es'}; this "
                f"run has {mine[key]}: run as many as it was made by (torchrun --nproc_per_node "
                f"{n!r}; the loader's order depends on it), or pass a new --checkpoint path to "
                "start over."
            )
        raise StoreMismatchError(
            f"Checkpoint '{path}' was made with {flag} {_flag_value(key, saved)}; this run has "
            f"{flag} {_flag_value(key, mine)}: {fix}."
        )
    if ckpt["step"] > steps:
        raise ConfigError(
            f"Checkpoint '{path}' is at step {ckpt['step']!r}, past --steps {steps}; pass --steps "
            f"{ckpt['step']} or more to train on from it, or a new --checkpoint path."
        )


def _flag_value(key: str, config: dict[str, Any]) -> str:
    if key in ("hook", "d_in"):
        return f"{config.get('hook')} (d_in {config.get('d_in')})"
    if key in ("expansion", "d_sae"):
        return f"{config.get('expansion')} (d_sae {config.get('d_sae')})"
    return repr(config.get(key))


def read_checkpoint(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip or torch errors of a file that is not a checkpoint
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"--checkpoint '{path}' cannot be read as a checkpoint ({why}); pass a new --checkpoint "
            "path (the file is left as it is)."
        ) from None


def min_rank_tokens(unit_tokens: Sequence[int], world: int) -> int:
    """Tokens the poorest rank is sure of in any epoch: each rank reads at least
    n // world of the units, so at least the n // world smallest ones."""
    return int(sum(sorted(int(t) for t in unit_tokens)[: len(unit_tokens) // world]))


def check_batches(loader: Any, batch_size: int, world: int, store_path: str) -> None:
    """Refuse a batch size that some epoch could not fill once on some rank (an epoch of 0 steps)."""
    sure = min_rank_tokens(loader.unit_tokens, world)
    if sure < batch_size:
        procs = f"each of the {world} processes is sure to get" if world > 1 else "the store gives"
        raise ConfigError(
            f"--batch-size {batch_size} is more than the {sure} tokens {procs} per epoch of "
            f"{loader.hooks[0]} in '{store_path}', so no step could be taken; pass --batch-size "
            f"{sure} or less{' (or run fewer processes)' if world > 1 else ''}, or cache more rows."
        )


# --- the run ---------------------------------------------------------------------------------


def save(obj: dict[str, Any], path: str) -> None:
    """Write ``path`` whole or not at all (a crash mid-save leaves the previous file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resume(
    ckpt: dict[str, Any], path: str, loader: Any, sae: nn.Module, opt: torch.optim.Optimizer
) -> int:
    """Load a checked checkpoint; return its step. Its parts that do not fit (a damaged
    file whose configuration matched) are refused before any step."""
    try:
        # the same batches on every rank as the interrupted run
        loader.load_state_dict(ckpt["loader"])
        sae.load_state_dict(ckpt["sae"])
        opt.load_state_dict(ckpt["opt"])
    except ActStoreError:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ConfigError(
            f"--checkpoint '{path}' does not fit its own recorded configuration "
            f"({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__}); it is "
            "damaged: pass a new --checkpoint path (the file is left as it is)."
        ) from None
    return ckpt["step"]


def train(a: argparse.Namespace) -> None:
    check_device(a.device)
    if a.out and a.checkpoint and os.path.realpath(a.out) == os.path.realpath(a.checkpoint):
        raise ConfigError(
            f"--out and --checkpoint are the same file '{a.out}'; the SAE would replace the "
            "checkpoint. Pass two paths."
        )
    if a.out:
        check_path(a.out, "--out", a.overwrite)
    if a.checkpoint:
        check_path(a.checkpoint, "--checkpoint", None)
    store = actstore.open(a.store)
    hooks = resolve_sites(store, a.site)
    if not hooks:
        raise ConfigError(
            f"--site {a.site!r} names no site; pass one of the store's, e.g. --site {store.sites[0]}."
        )
    if len(hooks) != 1:
        raise ConfigError(
            f"--site '{a.site}' names {len(hooks)} sites ({', '.join(hooks)}); train_sae trains one "
            f"SAE on one site: pass one, e.g. --site {hooks[0]}."
        )
    site = token_sites(store, hooks)[0]
    d_in = site.n_features
    if a.k > a.expansion * d_in:
        raise ConfigError(
            f"--k {a.k} is more than the SAE's {a.expansion * d_in} latents (--expansion {a.expansion} "
            f"x d_in {d_in} of {site.hook}); pass --k {a.expansion * d_in} or less, or a larger "
            "--expansion."
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))  # what the process group will have
    config = run_config(a, store, site.hook, d_in, world)
    ckpt = None
    if a.checkpoint and os.path.exists(a.checkpoint):
        ckpt = read_checkpoint(a.checkpoint)
        check_checkpoint(a.checkpoint, ckpt, config, a.store, a.steps)

    group = group_for(a.device)  # a process group under torchrun (gloo on CPU, nccl on GPU)
    device = group.device or (
        "cuda" if a.device == "auto" and torch.cuda.is_available() else a.device
    )
    device = "cpu" if device == "auto" else device
    torch.manual_seed(a.seed)
    options = dict(
        batch_size=a.batch_size, seed=a.seed, even_batches=True, device=device, dtype=torch.float32
    )
    # counts tokens only
    check_batches(store.loader(site.hook, **options), a.batch_size, group.world, a.store)
    # reads the store for the scale
    loader = store.loader(site.hook, **options, scale=True, progress=group.main)
    sae = TopKSAE(d_in, a.expansion * d_in, a.k).to(device)
    model = torch.nn.parallel.DistributedDataParallel(sae) if group.distributed else sae
    opt = torch.optim.Adam(sae.parameters(), lr=a.lr)
    step = 0 if ckpt is None else resume(ckpt, a.checkpoint, loader, sae, opt)
    while step < a.steps:
        taken = step
        for batch in loader:
            x = batch[site.hook].reshape(len(batch[site.hook]), -1)  # (batch, d_in), scaled
            x_hat, _ = model(x)
            loss = (x_hat - x).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if group.main and (step % a.log_every == 0 or step == 1):
                fvu = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
                print(
                    json.dumps(
                        {
                            "step": step,
                            "epoch": loader.epoch,
                            "loss": loss.item(),
                            "fvu": fvu.item(),
                        }
                    ),
                    flush=True,
                )
            if a.checkpoint and group.main and (step % a.save_every == 0 or step == a.steps):
                save(
                    {
                        "sae": sae.state_dict(),
                        "opt": opt.state_dict(),
                        "loader": loader.state_dict(),
                        "step": step,
                        "config": config,
                    },
                    a.checkpoint,
                )
            if step == a.steps:
                break
        # never spin on epochs without a batch (check_batches should make this unreachable)
        if step == taken:
            raise ConfigError(
                f"Epoch {loader.epoch} of {site.hook} gave no batch of {a.batch_size} tokens; pass a "
                "smaller --batch-size."
            )
    if a.out and group.main:
        save(
            {
                "sae": sae.state_dict(),
                "hook": site.hook,
                "k": a.k,
                "scale": loader.norm[site.hook].scale,
                "config": {**config, "steps": step},
            },
            a.out,
        )
    group.barrier("the end of training")


def main(argv: Sequence[str] | None = None) -> int:
    """Run train_sae with ``argv`` (default: sys.argv); 0 when trained, 2 after a one-line
    error of ours (argparse's usage errors exit 2 by SystemExit)."""
    a = parser().parse_args(argv)
    try:
        train(a)
    except ActStoreError as e:
        # under torchrun every process says it (torchrun may stop the others before rank 0 could)
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
