"""Train `actstore-demo`: a small GPT-2-architecture model (NOT GPT-2) on the synthetic
corpus of actstore.demo.data, with its own byte-level BPE tokenizer, and write it into
the package (actstore/data/demo-model/). Deterministic from the seed; CPU:

    python scripts/train_demo.py                       # ~20 min on 2 cores; writes actstore/data/demo-model
    python scripts/train_demo.py --out /tmp/m --steps 300    # a quick look elsewhere

Recipe. The tokenizer is a byte-level BPE trained on documents(20000, seed=SEED): every
word of the corpus becomes one token. Each step sees --text-batch rows of 128 tokens of
packed documents (text_rows(seed=SEED)) and --rep-batch rows of BOS + x + x, x random
tokens of a length drawn from HALF_LEN; the loss is the sum of the two mean losses.
AdamW, linear warmup then cosine decay to 0.1 x lr. For the first PREV_TOKEN_STEPS
steps an extra loss pulls one layer-0 head's attention to the previous token (see
PREV_TOKEN_HEAD); everything else, the induction head and IOI included, is learned from
the language-modelling loss alone.
Every --eval-every steps it prints the held-out text loss, the best induction score and
the loss on each half of BOS + x + x rows, and the logit difference on held-out IOI
prompts. The recipe, the log, the wall time and the sha256 of the weights go to
training.json next to the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actstore import demo  # noqa: E402
from actstore.demo import data as demo_data  # noqa: E402

SEED = 0
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "actstore" / "data" / "demo-model"
# nanoGPT-style config: tiny, so that the weights ship with the package (fp32, ~4 MB)
MODEL = dict(
    n_layer=4,
    n_embd=128,
    n_head=4,
    n_positions=128,  # d_head 32
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,  # plenty of synthetic data: no dropout
    tie_word_embeddings=True,
)
HALF_LEN = (5, 40)  # repeated-token rows: BOS + x + x, len(x) drawn per batch from this range
# The one nudge: for the first PREV_TOKEN_STEPS steps an extra cross-entropy pulls head
# PREV_TOKEN_HEAD's attention, on the repeated-token rows, to the previous token. A
# previous-token head is what text alone grows first in real LMs; unaided, models of this
# size sat on the induction plateau for our whole CPU budget (no head above 0.1 after
# 2,000 steps). Nothing touches any other head: the induction head, the in-context drop of
# the loss and IOI come from the language-modelling loss alone, after the nudge has ended.
PREV_TOKEN_HEAD = (0, 0)  # (layer, head)
PREV_TOKEN_STEPS = 300
EVAL_HALF_LENS = (20, 40)
TOKENIZER_DOCS = 20_000  # documents the BPE is trained on
TOKENIZER_VOCAB = 4096  # an upper bound: the BPE stops once every word of the corpus is one token


def build_tokenizer(seed: int, n_ctx: int):
    """A byte-level BPE like GPT-2's (text round-trips, spaces included), with
    <|endoftext|> as BOS, EOS and the only special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(demo_data.documents(TOKENIZER_DOCS, seed), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=n_ctx,
    )
    bad = [
        w
        for w in demo_data.single_token_words()
        if len(fast.encode(w, add_special_tokens=False)) != 1
    ]
    if bad:
        raise SystemExit(f"words that are not one token: {bad}")
    return fast


def prev_token_loss(attentions: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """-log attention of PREV_TOKEN_HEAD from every query after BOS to the token before it."""
    layer, head = PREV_TOKEN_HEAD
    q = torch.arange(1, attentions[layer].shape[-1])
    return -(attentions[layer][:, head, q, q - 1] + 1e-6).log().mean()


@torch.no_grad()
def evaluate(model, tokenizer, val_rows: torch.Tensor, pairs: list[dict]) -> dict:
    """Held-out text loss, induction scores and loss halves on BOS + x + x rows, and the
    IOI logit difference, all straight from the Hugging Face model."""
    model.eval()
    model.set_attn_implementation("eager")  # sdpa returns no attention patterns
    out: dict = {"text_loss": float(model(val_rows, labels=val_rows).loss)}
    for half in EVAL_HALF_LENS:
        rep = torch.from_numpy(demo.repeated_tokens(tokenizer, 64, half, seed=1)).long()
        res = model(rep, output_attentions=True)
        q = torch.arange(half + 1, 2 * half + 1)
        # (layer, head)
        ind = torch.stack([a[:, :, q, q - half + 1].mean(dim=(0, 2)) for a in res.attentions])
        # (row, pos)
        logp = torch.log_softmax(res.logits[:, :-1].float(), -1).gather(-1, rep[:, 1:, None])[
            ..., 0
        ]
        best = int(ind.argmax())
        out[f"h{half}"] = {
            "induction_max": round(float(ind.max()), 4),
            "head": f"{best // ind.shape[1]}.{best % ind.shape[1]}",
            "loss_halves": [
                round(float(-logp[:, :half].mean()), 3),
                round(float(-logp[:, half:].mean()), 3),
            ],
        }
    ld = demo.ioi_logit_diffs(model, tokenizer, pairs)
    out.update(ioi_logit_diff_mean=float(ld.mean()), ioi_accuracy=float((ld > 0).mean()))
    model.set_attn_implementation("sdpa")
    model.train()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--steps", type=int, default=3500)
    p.add_argument("--text-batch", type=int, default=24, help="rows of 128 tokens of text per step")
    p.add_argument(
        "--rep-batch", type=int, default=32, help="rows of repeated random tokens per step"
    )
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--prev-token-steps",
        type=int,
        default=PREV_TOKEN_STEPS,
        help="steps of the previous-token warm start (0: none)",
    )
    a = p.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    t_start = time.time()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    seq_len = MODEL["n_positions"]
    tokenizer = build_tokenizer(a.seed, seq_len)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **MODEL,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(t.numel() for t in model.parameters())
    text = torch.from_numpy(demo_data.text_rows(tokenizer, a.steps * a.text_batch, seq_len, a.seed))
    val = torch.from_numpy(demo_data.text_rows(tokenizer, 64, seq_len, a.seed + 1000))
    rng = np.random.default_rng([a.seed, 1])  # the repeated-token rows, drawn as training goes
    pairs = demo_data.ioi_pairs(256)
    print(
        f"tokenizer: {len(tokenizer)} tokens; model: {n_params:,} parameters; text: {tuple(text.shape)} "
        f"({time.time() - t_start:.0f}s)",
        flush=True,
    )

    opt = torch.optim.AdamW(
        model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=a.weight_decay
    )

    def lr_at(s: int) -> float:  # linear warm-up, then cosine down to a tenth
        if s < a.warmup:
            return a.lr * (s + 1) / a.warmup
        return a.lr * (
            0.1 + 0.45 * (1 + math.cos(math.pi * (s - a.warmup) / max(1, a.steps - a.warmup)))
        )

    model.train()
    losses, log = [], []
    t_train = time.time()
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        tb = text[step * a.text_batch : (step + 1) * a.text_batch]
        half = int(rng.integers(HALF_LEN[0], HALF_LEN[1] + 1))
        rb = torch.from_numpy(demo_data.repeated_batch(tokenizer, rng, a.rep_batch, half))
        loss_text = model(tb, labels=tb).loss
        if step < a.prev_token_steps:
            model.set_attn_implementation("eager")  # attention patterns with gradients
            out = model(rb, labels=rb, output_attentions=True)
            model.set_attn_implementation("sdpa")
            loss_rep = out.loss + prev_token_loss(out.attentions)
        else:
            loss_rep = model(rb, labels=rb).loss
        loss = loss_text + loss_rep
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append((loss_text.item(), loss_rep.item()))
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            recent = np.mean(losses[-50:], axis=0)
            m = {
                "step": step + 1,
                "train_text_loss": round(float(recent[0]), 4),
                "train_rep_loss": round(float(recent[1]), 4),
                **evaluate(model, tokenizer, val, pairs),
                "seconds": round(time.time() - t_train, 1),
            }
            log.append(m)
            print(json.dumps(m), flush=True)
    train_s = time.time() - t_train

    tmp = a.out.with_name(a.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # model.safetensors (fp32) + config.json
    tokenizer.save_pretrained(tmp)
    cfg_path = tmp / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = (
        "PreTrainedTokenizerFast"  # the same class name in transformers 4 and 5
    )
    cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n")
    for junk in ("generation_config.json",):
        (tmp / junk).unlink(missing_ok=True)
    final = log[-1]
    from actstore.models import load_model

    loaded = load_model(str(tmp), "float32", "cpu")
    record = {
        "model": "actstore-demo",
        "what": demo.DEMO_MODEL_LABEL,
        "seed": a.seed,
        "command": "python scripts/train_demo.py " + " ".join(sys.argv[1:]),
        "config": {**MODEL, "vocab_size": len(tokenizer), "n_params": n_params},
        "tokenizer": {
            "kind": "byte-level BPE (HF tokenizers)",
            "vocab_size": len(tokenizer),
            "trained_on": f"actstore.demo.data.documents({TOKENIZER_DOCS}, seed={a.seed})",
            "special": "<|endoftext|> (BOS, EOS)",
        },
        "data": {
            "text": f"actstore.demo.data.text_rows(tokenizer, {a.steps * a.text_batch}, {seq_len}, seed={a.seed})",
            "text_batch": a.text_batch,
            "sentence_mix": demo_data.RECIPE,
            "repeated": f"per step, actstore.demo.data.repeated_batch(tokenizer, rng, {a.rep_batch}, half_len) "
            f"with rng = numpy.random.default_rng([{a.seed}, 1]) and half_len = "
            f"rng.integers({HALF_LEN[0]}, {HALF_LEN[1] + 1})",
            "rep_batch": a.rep_batch,
            "loss": "mean text loss + mean repeated-token loss (+ the previous-token warm start early on)",
        },
        "previous_token_warm_start": {
            "head": f"{PREV_TOKEN_HEAD[0]}.{PREV_TOKEN_HEAD[1]}",
            "weight": 1.0,
            "steps": f"the first {a.prev_token_steps} of {a.steps}",
            "what": "on the repeated-token rows only: -log attention of this one layer-0 head from every query to "
            "the previous token; then switched off. No other head, and no induction or IOI target, is "
            "ever given: those are learned from the language-modelling loss",
        },
        "optimizer": {
            "kind": "AdamW",
            "lr": a.lr,
            "betas": [0.9, 0.95],
            "weight_decay": a.weight_decay,
            "warmup": a.warmup,
            "schedule": "linear warmup, cosine to 0.1 x lr",
            "grad_clip": 1.0,
            "steps": a.steps,
        },
        "final": {k: v for k, v in final.items() if k not in ("step", "seconds")},
        "eval_definitions": {
            "text_loss": "mean next-token loss on text_rows(seed=SEED+1000), 64 rows of 128 tokens",
            "hN": "on 64 rows of BOS + N random tokens twice (actstore.demo.repeated_tokens, seed 1): the best head's "
            "mean attention from each second-half query q to q - N + 1, and the mean loss on each half",
            "ioi": "logit(IO) - logit(S) after 256 held-out prompts, actstore.demo.data.ioi_pairs(256)",
        },
        "log": log,
        "wall_time_s": {"total": round(time.time() - t_start, 1), "training": round(train_s, 1)},
        "machine": {
            "threads": a.threads,
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "weights_sha256": hashlib.sha256((tmp / "model.safetensors").read_bytes()).hexdigest(),
        "fingerprint": loaded.info.fingerprint,
    }
    (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(a.out, ignore_errors=True)
    os.replace(tmp, a.out)
    size = sum(f.stat().st_size for f in a.out.iterdir())
    print(f"wrote {a.out} ({size / 1e6:.2f} MB) in {record['wall_time_s']['total']:.0f}s")


if __name__ == "__main__":
    main()
