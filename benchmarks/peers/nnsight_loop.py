"""An nnsight user's caching loop, the peer of `actstore cache --engine hf` in
benchmarks/bench_nnsight.py: the plain transformers model wrapped by nnsight, each batch
traced, every block's output saved, each site written to its own Zarr array. Runs in its
own environment and imports nothing from actstore:

    python3 -m venv /tmp/nns-venv
    /tmp/nns-venv/bin/pip install "torch==2.13.0" nnsight "transformers<5.26" zarr numpy
    /tmp/nns-venv/bin/python benchmarks/peers/nnsight_loop.py MODEL_DIR tokens.npy out.zarr --batch 16

tokens.npy: int (row, pos), the rows actstore cached (its store's tokens). Writes
``out.zarr/blocks.L.hook_resid_post`` (row, pos, d_model) float32 for every layer, chunked
by batch, uncompressed (as actstore's default), then fsyncs every file (as actstore does).
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("tokens")
    p.add_argument("out")
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args()
    t0 = time.perf_counter()
    import numpy as np
    import torch
    import zarr
    from nnsight import LanguageModel

    model = LanguageModel(a.model_dir, dispatch=True, dtype=torch.float32)  # on the CPU
    model.eval()
    tokens = torch.from_numpy(np.load(a.tokens)).long()
    blocks = model.transformer.h
    n_layers, (n, seq) = len(blocks), tokens.shape
    root = zarr.open_group(a.out, mode="w")
    arrays = [
        root.create_array(
            f"blocks.{layer}.hook_resid_post",
            shape=(n, seq, model.config.n_embd),
            chunks=(a.batch, seq, model.config.n_embd),
            dtype="float32",
            compressors=None,
        )
        for layer in range(n_layers)
    ]
    for i in range(0, n, a.batch):
        saved: list = []  # made outside the trace: nnsight runs its body apart and fills what it saves
        with torch.no_grad(), model.trace(tokens[i : i + a.batch]):
            for layer in range(n_layers):
                saved.append(blocks[layer].output.save())  # a block returns its hidden states
        for arr, x in zip(arrays, saved):
            arr[i : i + a.batch] = x.float().numpy()
    for folder, _, files in os.walk(a.out):
        for f in files:
            fd = os.open(os.path.join(folder, f), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    print(f"nnsight loop: {n} rows x {seq} tokens in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
