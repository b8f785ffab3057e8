"""`actstore selftest --model NAME`: the checks on a model of your own (any family with an
adapter: docs/model-families.md), with the installed versions, before a long run on it:

- caching every site kind the model has equals ``run_with_cache`` (bit for bit in float32
  on CPU, else within the tolerance of :mod:`actstore.selftest_checks`);
- the logit lens decodes the final residual into the model's own logits (final norm,
  unembedding, soft-cap: the family adapter's ``logits``);
- where the family has a map of the plain model's modules, ``--engine hf``'s values are
  within float rounding of ``run_with_cache``'s (1e-5 of the spread in float32).

- activation patching (resid_pre and every head's output) equals
  ``transformer_lens.patching`` on the same model, within the engine's self-check tolerance.

What actstore refuses for the family (circuits on grouped-query models and Gemma 2, DLA
and direct paths on Gemma 2) is listed in the report, so that a refusal later is no surprise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from . import compat
from .families import adapter_for
from .models import LoadedModel, load_model
from .selftest import check_selftest_device
from .selftest_checks import Check, SelftestReport, compare_store, compare_to_reference, run_plan
from .sites import SHORT_SITES, SITE_DIMS, hook_name

__all__ = ["model_checks", "run_model_selftest"]

HF_REL = (
    1e-5  # --engine hf against run_with_cache, float32: tests/capture/test_hf_engine.py's bound
)


def _kinds(model: LoadedModel) -> list[str]:
    """Every short site kind the model exposes at layer 0."""
    hooks = model.bridge.hook_dict
    return [k for k in SHORT_SITES if k in SITE_DIMS and hook_name(k, 0) in hooks]


def _check_cache(model: LoadedModel, tmp: str, engine: str) -> Check:
    from .capture import cache

    mapped = adapter_for(model, "actstore selftest --model").hf_sites
    sites = ",".join(
        f"{k}:all" for k in _kinds(model) if engine == "bridge" or SHORT_SITES[k] in mapped
    )
    store = cache(
        out=f"{tmp}/model-{engine}.zarr",
        model=model.info.name,
        model_revision=model.info.revision,
        dataset="actstore-demo",
        sites=sites,
        seq_len=16,
        n_rows=4,
        batch_size=4,
        dtype=model.info.dtype,
        device=model.device,
        engine=engine,
        progress=False,
    )
    with torch.no_grad():
        _, ref = model.bridge.run_with_cache(
            torch.as_tensor(store.tokens().astype(np.int64), device=model.device)
        )
    exact = engine == "bridge" and model.device == "cpu" and model.info.dtype == "float32"
    check = compare_store(store, ref, exact, HF_REL if engine == "hf" else None)
    if check.passed:
        check.detail = f"{len(store.sites)} sites ({sites}): {check.detail}"
    return check


def _check_lens(model: LoadedModel) -> Check:
    adapter = adapter_for(model, "The logit lens")
    tokens = torch.randint(
        0, model.info.d_vocab, (2, 16), generator=torch.Generator().manual_seed(0)
    ).to(model.device)
    with torch.no_grad():
        logits, cache = model.bridge.run_with_cache(tokens)
        lens = adapter.logits(model.bridge, cache[hook_name("resid_post", model.info.n_layers - 1)])
    dtype = getattr(torch, model.info.dtype)
    ok, err, tol, why = compare_to_reference(lens, logits, float(logits.abs().max()), dtype, 1e-3)
    return Check(
        "",
        ok,
        f"{adapter.name}: the final residual decoded as the forward's logits ({why})",
        err,
        tol,
    )


def _check_patching(model: LoadedModel) -> Check:
    from transformer_lens import patching as tlp

    from . import patching as ap
    from .patching.self_check import tolerance

    bridge, n_vocab = model.bridge, model.info.d_vocab
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, n_vocab, (2, 12), generator=gen)
    corrupted = clean.clone()
    corrupted[:, [4, 9]] = torch.randint(0, n_vocab, (2, 2), generator=gen)
    clean, corrupted = clean.to(model.device), corrupted.to(model.device)
    metric = ap.LogitDiff(*torch.randint(0, n_vocab, (2, 2), generator=gen).tolist())
    worst, worst_tol = 0.0, 0.0
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean)
        for sweep in ("resid_pre", "attn_head_out_all_pos"):
            ours = getattr(ap, f"get_act_patch_{sweep}")(
                bridge, corrupted, cache, metric, progress=False
            )
            want = getattr(tlp, f"get_act_patch_{sweep}")(bridge, corrupted, cache, metric)
            err = float((ours - want).abs().max())
            tol = tolerance(ours, want, 0.0, getattr(torch, model.info.dtype))
            if err > tol:
                return Check(
                    "",
                    False,
                    f"{sweep}: differs from transformer_lens.patching by {err:.3g} (tolerance "
                    f"{tol:.3g})",
                    err,
                    tol,
                )
            worst, worst_tol = max(worst, err), max(worst_tol, tol)
    return Check(
        "", True, f"resid_pre and attn_head_out_all_pos: max error {worst:.2g}", worst, worst_tol
    )


def _refusals(model: LoadedModel) -> Check:
    adapter = adapter_for(model, "actstore selftest --model")
    refused = [
        what
        for what, no in (
            ("direct logit attribution, direct path patching", adapter.sublayer_output_norms),
            ("--engine hf", not adapter.hf_sites),
        )
        if no
    ]
    why = adapter.edge_graph_problem(model.bridge)
    if why:
        refused.append(f"circuit discovery and path patching ({why})")
    refused += [f"the {site} site ({why})" for site, why in adapter.absent_sites.items()]
    detail = (
        f"{adapter.name}: every engine runs"
        if not refused
        else f"{adapter.name}: refused by design, before any work: {'; '.join(refused)} (docs/model-families.md)"
    )
    return Check("", True, detail)


def model_checks(name: str, device: str, tmp: str) -> list[tuple[str, Callable[[], Check]]]:
    """The checks of ``name`` (a hub name or folder) on ``device``, in float32. A model
    of a family actstore has no adapter for is refused here, before any check."""
    model = load_model(name, "float32", device)
    adapter = adapter_for(model, "actstore selftest --model")
    plan: list[tuple[str, Callable[[], Check]]] = [
        (
            f"cache equals run_with_cache, every site kind of {name} (float32)",
            lambda: _check_cache(model, tmp, "bridge"),
        ),
        (
            "the logit lens decodes the final residual into the model's logits",
            lambda: _check_lens(model),
        ),
        ("activation patching equals transformer_lens.patching", lambda: _check_patching(model)),
        ("what actstore refuses for this family", lambda: _refusals(model)),
    ]
    if adapter.hf_sites:
        plan.insert(
            1,
            (
                "--engine hf within float rounding of run_with_cache (float32)",
                lambda: _check_cache(model, tmp, "hf"),
            ),
        )
    return plan


def run_model_selftest(name: str, device: str = "cpu", progress: bool = True) -> SelftestReport:
    """:func:`model_checks` run into a report (as :func:`actstore.selftest.run_selftest`)."""
    import tempfile

    device = check_selftest_device(device)
    report = SelftestReport(device=device, versions=compat.versions())
    with tempfile.TemporaryDirectory(prefix="actstore-selftest-") as tmp:
        run_plan(model_checks(name, device, tmp), report, progress)
    return report
