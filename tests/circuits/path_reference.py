"""Path patching written with hooks, the classic three-step recipe of Wang et al. 2022,
independent of actstore's graph: the reference of tests/circuits/test_paths.py.

1. Run the base and the other input, caching every head's z, every MLP's output and the
   embeddings.
2. Run the base input with the senders' outputs set to the other run's (z per head,
   mlp_out, embed + pos_embed) and every other head and MLP frozen at its base value, but
   the intermediates, which are recomputed (an intermediate named by one input, e.g.
   ``a2.h1<v>``, has its other projections frozen at base); record the residual each
   receiver reads (resid_pre of its layer for a head, resid_mid for an MLP, the last
   resid_post for the logits). Without the direct paths, subtract the senders' own
   change from it.
3. Compute each receiver's q, k, v or mlp_out from its recorded residual by running the
   model with that residual put in place, and run the base input with those values
   patched in, everything else computed normally; the metric of that run (the logits
   of the recorded final residual, for a logits receiver)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

Hooks = list[tuple[str, Callable[[torch.Tensor, Any], torch.Tensor]]]


def node(name: str) -> tuple:
    if name == "input":
        return ("input",)
    if m := re.fullmatch(r"a(\d+)\.h(\d+)", name):
        return ("head", int(m[1]), int(m[2]))
    m = re.fullmatch(r"m(\d+)", name)
    assert m, name
    return ("mlp", int(m[1]))


def inputs(name: str) -> list[tuple]:
    """('head', L, H, c), ('mlp', L) or ('logits',) for each input a name stands for."""
    if name == "logits":
        return [("logits",)]
    if m := re.fullmatch(r"a(\d+)\.h(\d+)<([qkv])>", name):
        return [("head", int(m[1]), int(m[2]), m[3])]
    n = node(name)
    return [n + (c,) for c in "qkv"] if n[0] == "head" else [n]


def _set(
    value: torch.Tensor, head: int | None = None
) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
        if head is None:
            return value.clone()
        act[:, :, head] = value[:, :, head]
        return act

    return fn


def _keep(store: dict, key: Any) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
        store[key] = act.detach().clone()
        return act

    return fn


def _write(n: tuple, bridge: Any, cache: Any) -> torch.Tensor:
    """Node n's output in a cached run: z @ W_O (no b_O), mlp_out, embed + pos_embed."""
    if n[0] == "head":
        return cache[f"blocks.{n[1]}.attn.hook_z"][:, :, n[2]] @ bridge.blocks[n[1]].attn.W_O[n[2]]
    if n[0] == "mlp":
        return cache[f"blocks.{n[1]}.hook_mlp_out"]
    return cache["hook_embed"] + cache["hook_pos_embed"]


def _before(n: tuple, r: tuple) -> bool:
    """Does receiver input r read node n?"""
    if n[0] == "input" or r[0] == "logits":
        return True
    if r[0] == "mlp":
        return n[1] < r[1] or (n[1] == r[1] and n[0] == "head")
    return n[1] < r[1]


def _resid(r: tuple, n_layers: int) -> str:
    """The hook holding the residual that receiver input r reads."""
    if r[0] == "logits":
        return f"blocks.{n_layers - 1}.hook_resid_post"
    return f"blocks.{r[1]}.hook_resid_pre" if r[0] == "head" else f"blocks.{r[1]}.hook_resid_mid"


def path_patch_by_hooks(
    bridge: Any,
    base: torch.Tensor,
    other: torch.Tensor,
    metric: Callable,
    senders: Sequence[str],
    receivers: Sequence[str],
    through: Sequence[str] = (),
    direct: bool | None = None,
    caches: tuple[Any, Any] | None = None,
) -> torch.Tensor:
    """The metric with the paths patched; ``caches``: the base and other runs' caches, if at hand."""
    direct = not through if direct is None else direct
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    S = {node(s) for s in senders}
    T_in = [i for t in through for i in inputs(t)]
    T = {i[:3] if i[0] == "head" else i for i in T_in}
    R = [i for r in receivers for i in inputs(r)]
    with torch.no_grad():
        bc, oc = caches or (bridge.run_with_cache(base)[1], bridge.run_with_cache(other)[1])

        # step 2: senders from the other run, everything else frozen at base but the intermediates
        hooks: Hooks = []
        if ("input",) in S:
            hooks += [
                ("hook_embed", _set(oc["hook_embed"])),
                ("hook_pos_embed", _set(oc["hook_pos_embed"])),
            ]
        for layer in range(n_layers):
            z = f"blocks.{layer}.attn.hook_z"
            for h in range(n_heads):
                if ("head", layer, h) in S:
                    hooks.append((z, _set(oc[z], h)))
                elif ("head", layer, h) not in T:
                    hooks.append((z, _set(bc[z], h)))
                else:  # an intermediate named by some inputs only: the others read the base residual
                    hooks += [
                        (
                            f"blocks.{layer}.attn.hook_{c}",
                            _set(bc[f"blocks.{layer}.attn.hook_{c}"], h),
                        )
                        for c in "qkv"
                        if ("head", layer, h, c) not in T_in
                    ]
            mlp = f"blocks.{layer}.hook_mlp_out"
            if ("mlp", layer) in S:
                hooks.append((mlp, _set(oc[mlp])))
            elif ("mlp", layer) not in T:
                hooks.append((mlp, _set(bc[mlp])))
        resid = {r: _resid(r, n_layers) for r in R}
        seen: dict[str, torch.Tensor] = {}
        bridge.run_with_hooks(
            base, fwd_hooks=hooks + [(name, _keep(seen, name)) for name in set(resid.values())]
        )
        # only the paths through intermediates: take the senders' own change back out
        if not direct:
            for r in {
                name: r for r, name in resid.items()
            }.values():  # one input per recorded residual
                for s in S:
                    if _before(s, r):
                        seen[resid[r]] = seen[resid[r]] - (
                            _write(s, bridge, oc) - _write(s, bridge, bc)
                        )

        # step 3: receivers' values from the recorded residuals, patched into the base run
        if ("logits",) in R:  # the logits of the recorded final residual, whatever else is patched
            name = resid[("logits",)]
            return metric(
                bridge.run_with_hooks(base, fwd_hooks=[(name, _set(seen[name]))])
            ).detach()
        patch: Hooks = []
        for r in R:
            got: dict[str, torch.Tensor] = {}
            out = (
                f"blocks.{r[1]}.attn.hook_{r[3]}"
                if r[0] == "head"
                else f"blocks.{r[1]}.hook_mlp_out"
            )
            bridge.run_with_hooks(
                base, fwd_hooks=[(resid[r], _set(seen[resid[r]])), (out, _keep(got, out))]
            )
            patch.append((out, _set(got[out], r[2] if r[0] == "head" else None)))
        return metric(bridge.run_with_hooks(base, fwd_hooks=patch)).detach()
