"""Train a top-k sparse autoencoder on one site of an actstore store, fed by the store's loader.

    python scripts/train_sae.py acts.zarr --site resid_post:5 --k 32 --steps 2000 --out sae.pt
    torchrun --nproc_per_node 4 scripts/train_sae.py acts.zarr --site resid_post:5 --device cuda --out sae.pt
    torchrun --nproc_per_node 2 scripts/train_sae.py acts.zarr --site resid_post:5 --device cpu   # gloo, for tests

Each process reads a disjoint share of the store's chunks (the loader splits them by rank),
with even_batches so that every rank takes the same number of steps, and DDP averages the
gradients. Activations are scaled exactly as SAELens does (sqrt(d) / mean norm, computed over
the whole store). --checkpoint saves the model, optimiser and loader state every --save-every
steps; rerunning the same command resumes at the exact next batch. Prints one JSON line per
--log-every steps on rank 0: {"step", "epoch", "loss", "fvu"}.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn as nn

import actstore
from actstore.parallel import group_for


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--site", required=True, help="one site spec, e.g. resid_post:5")
    p.add_argument("--expansion", type=int, default=8, help="d_sae = expansion * d_in")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=4096, help="tokens per step on each process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint", help="save here every --save-every steps; resume from it when it exists")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--out", help="save the trained SAE (state dict, site, scaling factor) here")
    a = p.parse_args()

    group = group_for(a.device)  # a process group under torchrun (gloo on CPU, nccl on GPU)
    device = group.device or ("cuda" if a.device == "auto" and torch.cuda.is_available() else a.device)
    device = "cpu" if device == "auto" else device
    torch.manual_seed(a.seed)
    store = actstore.open(a.store)
    loader = store.loader(a.site, batch_size=a.batch_size, seed=a.seed, even_batches=True, scale=True,
                          device=device, dtype=torch.float32, progress=group.main)
    (hook,) = loader.hooks
    d_in = loader.sites[0].n_features
    sae = TopKSAE(d_in, a.expansion * d_in, a.k).to(device)
    model = torch.nn.parallel.DistributedDataParallel(sae) if group.distributed else sae
    opt = torch.optim.Adam(sae.parameters(), lr=a.lr)
    step = 0
    if a.checkpoint and os.path.exists(a.checkpoint):
        ckpt = torch.load(a.checkpoint, map_location=device)
        sae.load_state_dict(ckpt["sae"])
        opt.load_state_dict(ckpt["opt"])
        loader.load_state_dict(ckpt["loader"])  # the same batches on every rank as the interrupted run
        step = ckpt["step"]
    while step < a.steps:
        for batch in loader:
            x = batch[hook].reshape(len(batch[hook]), -1)  # (batch, d_in), scaled
            x_hat, _ = model(x)
            loss = (x_hat - x).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if group.main and (step % a.log_every == 0 or step == 1):
                fvu = (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
                print(json.dumps({"step": step, "epoch": loader.epoch, "loss": loss.item(), "fvu": fvu.item()}),
                      flush=True)
            if a.checkpoint and group.main and (step % a.save_every == 0 or step == a.steps):
                torch.save({"sae": sae.state_dict(), "opt": opt.state_dict(), "loader": loader.state_dict(),
                            "step": step}, a.checkpoint)
            if step == a.steps:
                break
    if a.out and group.main:
        torch.save({"sae": sae.state_dict(), "hook": hook, "k": a.k, "scale": loader.norm[hook].scale}, a.out)
    group.barrier("the end of training")


if __name__ == "__main__":
    main()
