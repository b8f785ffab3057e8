"""SAELens fed from an actstore store, against SAELens on its own, on one model, hook and
set of tokens (a GPT-2-small-shaped random model, the bundled GPT-2 tokenizer, the demo
corpus):

  training (tokens/s of SAETrainer.fit, the same StandardTrainingSAE, batch and tokens):
    (a) store  -- actstore.integrations.saelens.sae_trainer reading the store
    (b) fly    -- SAELens's ActivationsStore running the model as it trains
    (c) cached -- SAELens's ActivationsStore reading its own cached activations
  caching (time and peak RSS, each run in a fresh process, the two alternated):
    actstore.cache of 1 hook and of --hooks hooks (one pass), against SAELens's
    CacheActivationsRunner (one run per hook)

The break-even is the number of SAEs after which caching pays: cache time / (per-SAE
time on the fly - per-SAE time from the store). Where sae_lens is not installed only the
actstore side runs (tests/test_benchmarks.py smoke-runs it so). Information only.

    .venv-tl3/bin/python benchmarks/bench_saelens.py     # bash scripts/fidelity_matrix.sh tl3 builds .venv-tl3
    .venv-tl3/bin/python benchmarks/bench_saelens.py --n-rows 64 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-heads", type=int, default=12)
    p.add_argument(
        "--layer",
        type=int,
        help="the SAE's hook is blocks.LAYER.hook_resid_post (default n_layers // 2)",
    )
    p.add_argument(
        "--n-rows",
        type=int,
        default=16,
        help="rows of --seq-len tokens (the same tokens everywhere)",
    )
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument(
        "--model-batch",
        type=int,
        default=8,
        help="rows per forward pass (both caches, SAELens on the fly)",
    )
    p.add_argument("--d-sae", type=int, help="SAE width (default 2 x d_model)")
    p.add_argument("--batch-size", type=int, default=256, help="SAE training batch, tokens")
    p.add_argument("--epochs", type=int, default=4, help="SAE training epochs over the tokens")
    p.add_argument(
        "--hooks", type=int, help="hooks of the multi-hook caching comparison (default n_layers)"
    )
    p.add_argument("--repeat", type=int, default=1, help="alternated caching runs per side")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- workers: each runs in a fresh process and prints one JSON line -----------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _hooked_transformer(model_dir: str) -> Any:
    """TransformerLens 3.x's HookedTransformer with the folder's GPT-2 weights (SAELens's model class)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import AutoTokenizer, GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_ctx=c.n_positions,
        n_heads=c.n_head,
        d_head=c.n_embd // c.n_head,
        d_vocab=c.vocab_size,
        act_fn="gelu_new",
        normalization_type="LN",
        device="cpu",
    )
    model = HookedTransformer(cfg)
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    model.set_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    return model.eval()


def _tokens_dataset(job: dict[str, Any]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"tokens": np.load(job["tokens"]).tolist()})


def _sae(job: dict[str, Any]) -> Any:
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    torch.manual_seed(0)
    return StandardTrainingSAE(
        StandardTrainingSAEConfig(
            d_in=job["d_model"], d_sae=job["d_sae"], l1_coefficient=5.0, device="cpu"
        )
    )


def _sl_activations_store(job: dict[str, Any], **where: Any) -> Any:
    from sae_lens.training.activations_store import ActivationsStore

    # LanguageModelSAERunnerConfig's default 20, or more where a train batch would not fit the mixing buffer
    n_batches_in_buffer = max(20, -(-job["batch_size"] // job["seq_len"]))
    return ActivationsStore(
        hook_name=job["hook"],
        hook_head_index=None,
        context_size=job["seq_len"],
        d_in=job["d_model"],
        n_batches_in_buffer=n_batches_in_buffer,
        total_training_tokens=job["train_tokens"],
        store_batch_size_prompts=job["model_batch"],
        train_batch_size_tokens=job["batch_size"],
        prepend_bos=False,
        streaming=False,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
        **where,
    )


def worker(name: str, job: dict[str, Any]) -> dict[str, Any]:
    """One measured run: seconds of the work itself (after imports), the process's peak RSS."""
    out: dict[str, Any] = {}
    if name == "cache-actstore":
        import actstore

        t0 = time.perf_counter()
        actstore.cache(
            out=job["out"],
            model=job["model_dir"],
            dataset="actstore-demo",
            sites=job["sites"],
            n_rows=job["n_rows"],
            seq_len=job["seq_len"],
            batch_size=job["model_batch"],
            rows_per_chunk=job["model_batch"],
            dtype="float32",
            storage_dtype="float32",
            device="cpu",
            progress=False,
            check_disk=False,
        )
    elif name == "cache-saelens":
        import sae_lens.cache_activations_runner as car
        from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig

        t0 = time.perf_counter()
        model = _hooked_transformer(job["model_dir"])
        # the folder's model, not a hub download (also timed: as actstore's)
        car.load_model = lambda **_: model
        ds = _tokens_dataset(job)
        for hook in job["hook_names"]:  # SAELens caches one hook per run
            # one buffer
            cfg = CacheActivationsRunnerConfig(
                dataset_path="actstore-demo",
                model_name="random-gpt2",
                model_batch_size=job["model_batch"],
                hook_name=hook,
                d_in=job["d_model"],
                training_tokens=job["n_rows"] * job["seq_len"],
                context_size=job["seq_len"],
                new_cached_activations_path=str(Path(job["out"]) / hook),
                dtype="float32",
                device="cpu",
                prepend_bos=False,
                streaming=False,
                buffer_size_gb=(job["n_rows"] * job["seq_len"] + 0.5) * job["d_model"] * 4 / 1e9,
            )
            CacheActivationsRunner(cfg, override_dataset=ds).run()
    else:  # training from one of three sources
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        import actstore
        from actstore.integrations.saelens import sae_trainer

        # imports done: each source is timed from opening its data to the trained SAE
        t0 = time.perf_counter()
        sae = _sae(job)
        if name == "train-store":
            trainer = sae_trainer(
                actstore.open(job["store"]),
                job["hook"],
                sae,
                training_tokens=job["train_tokens"],
                batch_size=job["batch_size"],
            )
        else:
            if name == "train-fly":
                where = dict(
                    model=_hooked_transformer(job["model_dir"]), dataset=_tokens_dataset(job)
                )
            else:
                where = dict(model=None, dataset=None, cached_activations_path=job["sl_cache"])
            cfg = SAETrainerConfig(
                total_training_samples=job["train_tokens"],
                train_batch_size_samples=job["batch_size"],
                lr_end=3e-5,
                device="cpu",
            )
            trainer = SAETrainer(
                cfg=cfg, sae=sae, data_provider=_sl_activations_store(job, **where)
            )
        trainer.fit()
        out["tokens"] = trainer.n_training_samples
    out.update(seconds=time.perf_counter() - t0, rss_mb=_peak_rss_mb())
    return out


def run_worker(name: str, job: dict[str, Any], tmp: Path) -> dict[str, Any]:
    path = tmp / f"job_{name}.json"
    path.write_text(json.dumps(job))
    env = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
    r = subprocess.run(
        [sys.executable, __file__, "--worker", name, "--job", str(path)],
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode:
        raise RuntimeError(f"worker {name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- the comparison -------------------------------------------------------------------------
def main() -> None:
    a = parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, json.loads(Path(a.job).read_text()))))
        return
    import importlib.util

    from transformers.utils import logging as hf_logging

    import actstore
    from actstore.compat import describe
    from actstore.demo import build_random_gpt2

    hf_logging.disable_progress_bar()
    have_sl = importlib.util.find_spec("sae_lens") is not None
    layer = a.n_layers // 2 if a.layer is None else a.layer
    n_hooks = a.hooks or a.n_layers
    print("bench_saelens: SAELens training fed from an actstore store vs SAELens alone")
    pkgs = ("torch", "transformer-lens", "sae-lens") if have_sl else ("torch", "transformer-lens")
    print(f"  {describe(pkgs)}, threads {torch.get_num_threads()}, {platform.platform()}")
    print(
        f"  model: random GPT-2 {a.n_layers} layers x d_model {a.d_model}; hook blocks.{layer}.hook_resid_post; "
        f"{a.n_rows} rows x {a.seq_len} tokens"
    )
    with tempfile.TemporaryDirectory(prefix="bench_saelens_") as tmp_s:
        tmp = Path(tmp_s)
        folder = build_random_gpt2(
            tmp / "model",
            seed=0,
            n_layer=a.n_layers,
            n_embd=a.d_model,
            n_head=a.n_heads,
            n_positions=max(1024, a.seq_len),
        )
        hook = f"blocks.{layer}.hook_resid_post"
        job = dict(
            model_dir=str(folder),
            n_rows=a.n_rows,
            seq_len=a.seq_len,
            model_batch=a.model_batch,
            d_model=a.d_model,
            d_sae=a.d_sae or 2 * a.d_model,
            batch_size=a.batch_size,
            hook=hook,
            tokens=str(tmp / "tokens.npy"),
        )
        hook_sets = {
            1: [hook],
            n_hooks: [f"blocks.{(layer + i) % a.n_layers}.hook_resid_post" for i in range(n_hooks)],
        }

        # caching, alternated: actstore (one pass for every hook) vs CacheActivationsRunner (a run per hook)
        cache: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for k, hooks in hook_sets.items():
            for rep in range(a.repeat):
                sides = ["actstore", "saelens"] if have_sl else ["actstore"]
                for side in sides if rep % 2 == 0 else sides[::-1]:
                    out = str(tmp / f"{side}_{k}_{rep}")
                    if side == "saelens":
                        got = run_worker(
                            "cache-saelens", {**job, "out": out, "hook_names": hooks}, tmp
                        )
                    else:
                        got = run_worker(
                            "cache-actstore", {**job, "out": out + ".zarr", "sites": hooks}, tmp
                        )
                        if not Path(job["tokens"]).exists():  # SAELens caches the very same tokens
                            np.save(
                                job["tokens"],
                                np.asarray(actstore.open(out + ".zarr")["tokens"]).astype(np.int64),
                            )
                    cache.setdefault((side, k), []).append(got)
        store_path = str(tmp / "actstore_1_0.zarr")
        store = actstore.open(store_path)
        n_tokens = store.loader(hook, a.batch_size).n_tokens  # one epoch of whole batches
        job.update(
            store=store_path,
            sl_cache=str(tmp / "saelens_1_0" / hook),
            train_tokens=a.epochs * (n_tokens // a.batch_size * a.batch_size),
        )

        print()
        print(
            f"  caching {'hooks':>5}  {'actstore s':>10} {'MB':>7}  {'SAELens s':>10} {'MB':>7}  {'time ratio':>10}"
        )
        for k in hook_sets:
            act, sl = (
                min(cache.get((side, k), [{}]), key=lambda r: r.get("seconds", 0))
                for side in ("actstore", "saelens")
            )
            sl_cols = (
                f"{sl['seconds']:>10.1f} {sl['rss_mb']:>7.0f}  {sl['seconds'] / act['seconds']:>9.2f}x"
                if sl
                else "  (no sae_lens)"
            )
            print(f"  {'':8}{k:>5}  {act['seconds']:>10.1f} {act['rss_mb']:>7.0f}  {sl_cols}")
        print(
            "  (seconds include loading the model; MB is the process's peak RSS; ratio = SAELens / actstore)"
        )

        if not have_sl:  # the actstore side of training: the data provider alone
            from actstore.integrations.saelens import data_provider

            t0 = time.perf_counter()
            n = sum(len(b) for b in data_provider(store, hook, a.batch_size, epochs=1))
            print(
                f"\n  data_provider alone: {n / (time.perf_counter() - t0):,.0f} tokens/s "
                "(sae_lens is not installed: no SAELens training figures)"
            )
            return
        train = {name: run_worker(f"train-{name}", job, tmp) for name in ("store", "fly", "cached")}
        print()
        print(
            f"  training {job['train_tokens']} tokens, SAE {a.d_model} -> {job['d_sae']}, batch {a.batch_size}"
        )
        print(f"  {'source':<44}{'seconds':>9}{'tokens/s':>10}{'vs fly':>9}")
        labels = {
            "store": "actstore store (integrations.saelens)",
            "fly": "SAELens ActivationsStore, model on the fly",
            "cached": "SAELens ActivationsStore, its cached acts",
        }
        for name, got in train.items():
            assert got["tokens"] == job["train_tokens"], got
            s = got["seconds"]
            print(
                f"  {labels[name]:<44}{s:>9.1f}{got['tokens'] / s:>10,.0f}{train['fly']['seconds'] / s:>8.2f}x"
            )
        saving = train["fly"]["seconds"] - train["store"]["seconds"]
        print()
        for k in hook_sets:  # caching k hooks in one pass, then SAEs on each: the cost per hook
            cost = min(r["seconds"] for r in cache[("actstore", k)]) / k
            even = (
                f"{cost / saving:.1f} SAEs"
                if saving > 0
                else "never (training from the store is not faster here)"
            )
            print(
                f"  break-even, {k:>2} hook(s) cached in one pass: {cost:.1f} s of caching per hook, each SAE "
                f"trained from the store saves {saving:.1f} s -> precomputing pays after {even} per hook"
            )


if __name__ == "__main__":
    main()
