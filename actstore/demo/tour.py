"""A short tour of actstore on the demo model, offline, in a few minutes on a laptop:
each step is an `actstore` command, printed, then run; figures land in one folder.

1. cache the bundled demo corpus through `actstore-demo` (the main job) and describe it;
2. probe the residual stream for the token's position, layer by layer;
3. cache repeated random tokens and find the induction heads;
4. write held-out IOI prompt pairs and patch the residual stream and every head's output;
5. find the IOI circuit on those pairs (edge attribution patching) and draw it;
and then says how to open the explorer (`actstore app`) on what it wrote.

    actstore tour demo_out        # or: bash scripts/demo.sh, which also sets up .venv

The tour writes only its own files (OUTPUTS) and a marker file (MARKER) that says the folder
is a tour's; a later tour into that folder replaces them. It never replaces a file or store
of those names that it did not make, unless asked to with ``--overwrite``.

`actstore-demo` is a small DEMO model trained on a synthetic corpus, not GPT-2.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import resources
from ..corpus import demo_text as demo_data
from ..errors import ConfigError
from ..jsonl import write_records
from ..sites import layer_of
from ..store.typed import array_at, attrs_of, group_at
from .tour_folder import CIRCUIT_METHOD, GROUPS, MARKER, OUTPUTS, STORES, check_tour_folder

__all__ = ["TourResult", "Runner", "run_tour", "check_tour_folder", "summary", "OUTPUTS", "MARKER"]

#: runs one step: (argv of an `actstore` command, print it and its output?) -> None, raising on a failure.
#: The CLI's `actstore tour` (actstore/cli/main.py) passes its own; the demo never imports the CLI.
Runner = Callable[[Sequence[str], bool], None]

HALF_LEN = 20  # repeated-random rows: BOS + 20 tokens + the same 20
CIRCUIT_TOP = 20  # the circuit step's edges drawn (its method: tour_folder.CIRCUIT_METHOD)


@dataclass
class TourResult:
    out: str
    figures: list[str] = field(default_factory=list)
    # layer -> test accuracy of the position probe
    probe_accuracy: dict[int, float] = field(default_factory=dict)
    # ('layer.head', score), best first
    induction_heads: list[tuple[str, float]] = field(default_factory=list)
    loss_halves: tuple[float, float] | None = None  # mean loss on the first, the repeated half
    # mean clean logit difference (answer - wrong) over the pairs
    ioi_logit_diff: float = float("nan")
    ioi_accuracy: float = float("nan")  # share of pairs with a positive clean logit difference
    # 'layer.head' of the attention heads in the IOI circuit
    circuit_heads: list[str] = field(default_factory=list)
    circuit_edges: int = (
        0  # edges of the IOI circuit drawn (after pruning to paths from the input to the logits)
    )
    seconds: float = 0.0


def run_tour(
    run: Runner,
    out: str = "demo_out",
    n_rows: int = 200,
    n_rep_rows: int = 64,
    n_pairs: int = 32,
    quiet: bool = False,
    overwrite: bool = False,
) -> TourResult:
    """Run the tour's steps into ``out``, each an `actstore` command run by ``run`` (from Python:
    :func:`actstore.cli.main.run_tour`, which runs them as `actstore tour` does), replacing what an earlier tour wrote there; files of the
    tour's names (OUTPUTS) that no tour made are replaced only with ``overwrite``, see
    :func:`check_tour_folder`."""
    from ..store.results import check_writable

    check_tour_folder(out, overwrite)
    if n_rows < 2 or n_rep_rows < 1 or n_pairs < 1:
        raise ConfigError(
            f"The tour needs at least 2 rows (a training and a test row for the probe), 1 repeated row "
            f"and 1 pair; got n_rows={n_rows}, n_rep_rows={n_rep_rows}, n_pairs={n_pairs}."
        )
    check_writable(out, "the tour's stores and figures", "pass a folder you can write")
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    with open(
        os.path.join(out, MARKER), "w"
    ) as f:  # first: an interrupted tour's folder is still the tour's
        f.write(
            "Made by `actstore tour`; a later tour into this folder replaces: "
            + ", ".join(OUTPUTS)
            + "\n"
        )
    tour = _Steps(run, out, quiet)
    if tour.say:
        print(f"actstore tour -> {out}/\nmodel: {resources.DEMO_MODEL_LABEL}")
    tour.cache_and_probe(n_rows)
    tour.induction(n_rep_rows)
    tour.patching(n_pairs)
    tour.circuit()
    tour.res.seconds = time.time() - t0
    if tour.say:
        print(summary(tour.res))
    return tour.res


class _Steps:
    """The tour's steps, each a few `actstore` commands run by ``run`` into ``out``, and
    what each found, gathered in ``res``."""

    def __init__(self, run: Runner, out: str, quiet: bool):
        self.run, self.out, self.quiet, self.say = run, out, quiet, not quiet
        self.q = ["--quiet"] if quiet else []
        self.res = TourResult(out=out)
        self.main_store, self.rep_store, self.patch_out, self.circuit_out = (
            os.path.join(out, n) for n in (*STORES, *GROUPS)
        )
        self.pairs = os.path.join(out, "ioi_pairs.jsonl")

    def cache_and_probe(self, n_rows: int) -> None:
        """1. the main job: cache the demo corpus; 2. where is the position? a logistic probe per layer."""
        from ..store import ActivationStore

        run, say, q, res = self.run, self.say, self.q, self.res
        run(
            [
                "cache",
                self.main_store,
                "--model",
                resources.DEMO_MODEL,
                "--dataset",
                "actstore-demo",
                "--sites",
                "resid_post:all",
                "--seq-len",
                "128",
                "--n-rows",
                str(n_rows),
                "--batch-size",
                "16",
                "--overwrite",
                *q,
            ],
            say,
        )
        if say:
            run(["info", self.main_store], say)
        probe_png = os.path.join(self.out, "probe_position.png")
        run(
            [
                "probe",
                self.main_store,
                "--sites",
                "resid_post:all",
                "--target",
                "position",
                "--plot",
                probe_png,
                *q,
            ],
            say,
        )
        store = ActivationStore.open(self.main_store)
        for hook in store.sites:
            scores = attrs_of(
                array_at(store.group, f"results/probes/position-logistic/{hook}/weight")
            )["scores"]
            # resid_post: every hook has a layer
            res.probe_accuracy[layer_of(hook) or 0] = float(scores["test"])
        res.figures.append(probe_png)

    def induction(self, n_rep_rows: int) -> None:
        """3. induction heads on repeated random tokens: the top 3 heads, the loss of each half."""
        import zarr

        run, say, res = self.run, self.say, self.res
        ind_png = os.path.join(self.out, "induction_heads.png")
        run(
            [
                "cache",
                self.rep_store,
                "--model",
                resources.DEMO_MODEL,
                "--dataset",
                f"repeated-random:{HALF_LEN}",
                "--seq-len",
                str(2 * HALF_LEN + 1),
                "--n-rows",
                str(n_rep_rows),
                "--sites",
                "pattern:all,loss",
                "--overwrite",
                *self.q,
            ],
            say,
        )
        run(
            [
                "analyze",
                "induction",
                self.rep_store,
                "--figure",
                ind_png,
                *(["--json"] if self.quiet else []),
            ],
            say,
        )
        g = group_at(zarr.open_group(self.rep_store, mode="r"), "results/analysis/induction")
        ind = np.asarray(array_at(g, "induction")[...])
        order = np.argsort(ind.ravel())[::-1][:3]
        res.induction_heads = [
            (f"{i // ind.shape[1]}.{i % ind.shape[1]}", float(ind.ravel()[i])) for i in order
        ]
        loss = np.asarray(array_at(g, "loss_by_pos")[...])
        res.loss_halves = (float(loss[:HALF_LEN].mean()), float(loss[HALF_LEN:].mean()))
        res.figures.append(ind_png)

    def patching(self, n_pairs: int) -> None:
        """4. activation patching on held-out IOI prompts (written to the pairs file first)."""
        import zarr

        run, say, res = self.run, self.say, self.res
        if say:
            print(f"\n$ python -m actstore.demo.data ioi-pairs {self.pairs} --n {n_pairs}")
        write_records(self.pairs, demo_data.ioi_pairs(n_pairs, template=0))
        for sweep in ("resid_pre", "attn_head_out_all_pos"):
            png = os.path.join(self.out, f"ioi_patch_{sweep}.png")
            run(
                [
                    "patch",
                    "--model",
                    resources.DEMO_MODEL,
                    "--pairs",
                    self.pairs,
                    "--sweep",
                    sweep,
                    "--out",
                    self.patch_out,
                    "--figure",
                    png,
                    "--overwrite",
                    *self.q,
                ],
                say,
            )
            res.figures.append(png)
        ld = np.asarray(
            array_at(
                zarr.open_group(self.patch_out, mode="r"), "patching/resid_pre/clean_logit_diff"
            )[...]
        )
        res.ioi_logit_diff, res.ioi_accuracy = float(ld.mean()), float((ld > 0).mean())

    def circuit(self) -> None:
        """5. the circuit behind it: edge attribution patching on the same pairs, the best edges drawn."""
        res = self.res
        self.run(
            [
                "circuit",
                "--model",
                resources.DEMO_MODEL,
                "--pairs",
                self.pairs,
                "--method",
                CIRCUIT_METHOD,
                "--top",
                str(CIRCUIT_TOP),
                "--out",
                self.circuit_out,
                "--overwrite",
                *self.q,
            ],
            self.say,
        )
        stem = os.path.join(self.out, f"ioi_circuit.{CIRCUIT_METHOD}.circuit")
        with open(stem + ".json") as f:
            drawn = json.load(f)
        res.circuit_heads = [_head(n) for n in drawn["nodes"] if n.startswith("a")]
        res.circuit_edges = int(drawn["n_edges"])
        res.figures.append(stem + ".png")


def _head(node: str) -> str:
    """'a2.h3' (a circuit's node) -> '2.3' (layer.head, as the induction heads are named)."""
    layer, head = node[1:].split(".h")
    return f"{layer}.{head}"


def _app_installed() -> bool:
    """Whether `actstore app` can start: the app extra's packages are importable (scripts/setup_env.sh,
    and so scripts/demo.sh, installs them with the test extra)."""
    from importlib.util import find_spec

    return all(find_spec(m) is not None for m in ("streamlit", "plotly"))


def summary(res: TourResult) -> str:
    best = ", ".join(f"{h} ({s:.2f})" for h, s in res.induction_heads)
    acc = ", ".join(f"L{layer} {a:.1%}" for layer, a in sorted(res.probe_accuracy.items()))
    lines = [
        "",
        "=" * 78,
        f"Tour done in {res.seconds:.0f}s. Model: {resources.DEMO_MODEL_LABEL}.",
        f"  induction heads (layer.head, score): {best}",
    ]
    if res.loss_halves:
        lines.append(
            f"  loss on repeated random tokens: first half {res.loss_halves[0]:.2f}, "
            f"repeated half {res.loss_halves[1]:.2f} nats"
        )
    lines += [
        f"  position probe, test accuracy by layer (resid_post): {acc}",
        f"  held-out IOI prompts: mean logit diff (answer - wrong) {res.ioi_logit_diff:.2f}, "
        f"right on {res.ioi_accuracy:.0%} of pairs",
        f"  IOI circuit ({CIRCUIT_METHOD}, {res.circuit_edges} edges): attention heads (layer.head) "
        f"{', '.join(res.circuit_heads) or 'none'}",
        "Figures to open:",
        *[f"  {f}" for f in res.figures],
        f"Stores: {res.out}/demo.zarr (the cached corpus), {res.out}/induction.zarr, {res.out}/ioi.zarr, "
        f"{res.out}/ioi_circuit.zarr",
        "To explore them (and your own prompts) in the browser, open the explorer"
        + (
            ""
            if _app_installed()
            else ", after pip install 'actstore[app]' (its extra is missing here)"
        )
        + ":",
        f"  actstore app --model {resources.DEMO_MODEL} --store {res.out}/demo.zarr --store {res.out}/induction.zarr",
        "=" * 78,
    ]
    return "\n".join(lines)
