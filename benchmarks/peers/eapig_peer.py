"""The EAP-IG reference (hannamw/EAP-IG, `eap.attribute.attribute`) on a GPT-2-shaped model
saved in a folder, for benchmarks/bench_eap.py. Runs in its own environment (EAP-IG needs
TransformerLens 3.x's HookedTransformer), imports nothing from actstore:

    python3 -m venv /tmp/eapig-venv
    /tmp/eapig-venv/bin/pip install "torch==2.13.0" "transformer-lens<4"
    git clone https://github.com/hannamw/EAP-IG /tmp/EAP-IG        # read, not installed
    /tmp/eapig-venv/bin/python benchmarks/peers/eapig_peer.py job.json out.json --src /tmp/EAP-IG/src

job.json: {"model_dir", "pairs": [[clean, corrupted, answer_id, wrong_id], ...], "batch",
"runs": [[method, steps], ...], "names": [edge names in actstore's order], "threads"}.
out.json: {"versions", "runs": [{"method", "steps", "seconds", "scores": [...]}]}: scores
in the order of "names". EAP-IG hard-codes device='cuda' for its score matrices; on a CPU
machine they are made on the CPU instead (its module's `torch.zeros` is wrapped here, its
code unchanged). Its metric: the sum over the batch of logit[answer] - logit[wrong] at each
prompt's last position (it divides the scores by the number of pairs: the mean).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("job")
    p.add_argument("out")
    p.add_argument("--src", required=True, help="EAP-IG's src folder (holds the eap package)")
    args = p.parse_args()
    sys.path.insert(0, args.src)
    job = json.load(open(args.job))

    from importlib.metadata import version

    import eap.attribute as eap_attribute
    import torch
    from eap.graph import Graph
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import AutoTokenizer, GPT2LMHeadModel

    torch.set_num_threads(int(job.get("threads", torch.get_num_threads())))
    if not torch.cuda.is_available():

        class _CpuZeros:  # the score matrices EAP-IG makes with device='cuda'
            def __getattr__(self, name: str):
                return getattr(torch, name)

            @staticmethod
            def zeros(*a, device=None, **k):
                return torch.zeros(*a, **k)

        eap_attribute.torch = _CpuZeros()

    hf = GPT2LMHeadModel.from_pretrained(job["model_dir"]).eval()
    c = hf.config  # GPT-2: d_mlp = 4 d_model and LayerNorm eps 1e-5 are the config's defaults
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
    model.set_tokenizer(AutoTokenizer.from_pretrained(job["model_dir"]))
    model.eval()
    model.cfg.use_attn_result = model.cfg.use_split_qkv_input = model.cfg.use_hook_mlp_in = True
    model.setup()  # the hooks those flags add

    pairs, batch = job["pairs"], int(job["batch"])
    loader = [
        (
            [q[0] for q in pairs[i : i + batch]],
            [q[1] for q in pairs[i : i + batch]],
            torch.tensor([[q[2], q[3]] for q in pairs[i : i + batch]]),
        )
        for i in range(0, len(pairs), batch)
    ]

    def metric(logits, clean_logits, input_lengths, labels):
        b = torch.arange(len(labels))
        last = logits[b, input_lengths - 1]
        return (last[b, labels[:, 0]] - last[b, labels[:, 1]]).sum()

    out = {
        "versions": {"torch": torch.__version__, "transformer_lens": version("transformer-lens")},
        "runs": [],
    }
    for method, steps in job["runs"]:
        graph = Graph.from_model(model)
        t = time.perf_counter()
        eap_attribute.attribute(
            model, graph, loader, metric, method=method, ig_steps=steps, quiet=True
        )
        seconds = time.perf_counter() - t
        out["runs"].append(
            {
                "method": method,
                "steps": steps,
                "seconds": seconds,
                "scores": [float(graph.edges[n].score) for n in job["names"]],
            }
        )
    json.dump(out, open(args.out, "w"))


if __name__ == "__main__":
    main()
