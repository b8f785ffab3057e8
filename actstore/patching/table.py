"""The one table of patching sweeps: every ``get_act_patch_*`` of ``transformer_lens.patching``
as a row, read by everything that lists sweeps.

A row says what a sweep patches and reads, in one place:

* a *single* sweep (``resid_pre``, ``attn_head_out_by_pos``, ...): the TransformerLens
  activation short name it patches (a short site name of :mod:`actstore.sites`, e.g. ``z``),
  the setter of ``transformer_lens.patching`` that writes each patch, the index axes (layer
  first) and a one-line description;
* a *stack* (``block_every``, ``attn_head_*_every``): the single sweeps it runs, in order,
  their names on the leading ``patch_type`` axis, and the axis order they are stacked in;
* a *path* sweep (``direct_path``, ``direct_path_all_sources``): the clean activation it reads
  and its result axes (its functions have their own signatures).

:mod:`actstore.patching.sweeps` (the drop-in), :mod:`actstore.patching.attribution`,
:mod:`actstore.patching.job` and ``actstore patch`` build their sweeps, hook names, site
specs and choices from :data:`SWEEPS`; hook names come from :mod:`actstore.sites` only. Rows
are checked when made (:class:`SweepRow`) and as a table (:func:`check_table`): a broken
row fails at import with a :class:`~actstore.errors.ConfigError` naming the row and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from transformer_lens import patching as tl

from ..errors import ConfigError, UnknownSiteError
from ..sites import SHORT_SITES, Site, hook_name, layer_of

__all__ = [
    "SweepRow",
    "ROWS",
    "SWEEPS",
    "PATH_SWEEPS",
    "AXES",
    "AXIS_RENAMES",
    "check_table",
    "check_model_sites",
    "act_hook",
]

Setter = Callable[[torch.Tensor, Sequence[int], torch.Tensor], torch.Tensor]

#: the index axes a sweep may have, as transformer_lens.patching names them
AXES = ("layer", "pos", "head", "head_index", "dest_pos", "src_pos", "src_layer", "src_head")
#: how a part's axes are named on a stack (transformer_lens.patching's _stack_patch_types)
AXIS_RENAMES: Mapping[str, str] = MappingProxyType({"head_index": "head", "dest_pos": "pos"})


@dataclass(frozen=True)
class SweepRow:
    """One sweep; ``get_act_patch_<name>`` is its function in actstore.patching,
    actstore.patching.attribution (not path sweeps) and transformer_lens.patching."""

    name: str  # e.g. "attn_head_out_by_pos"
    what: str  # one line: what each variant patches
    activation: str | None = (
        None  # single: the short site it patches; path: the one it reads; stack: None
    )
    setter: Setter | None = None  # single: transformer_lens.patching's setter of each patch
    axes: tuple[
        str, ...
    ] = ()  # single: index axes, layer first; stack: the order parts are stacked in
    parts: tuple[SweepRow, ...] = ()  # stack: the single sweeps it runs, in order
    patch_types: tuple[str, ...] = ()  # stack: each part's name on the patch_type axis

    def __post_init__(self) -> None:
        def bad(problem: str, fix: str) -> ConfigError:
            return ConfigError(
                f"Sweep table row {self.name!r}: {problem}; {fix} (actstore/patching/table.py)."
            )

        if not self.name.isidentifier():
            raise bad("the name is not an identifier", "name it as the part after get_act_patch_")
        if not self.what.strip():
            raise bad("no description", "give `what` a line on what each variant patches")
        unknown = [a for a in self.axes if a not in AXES]
        if not self.axes or unknown or len(set(self.axes)) != len(self.axes):
            raise bad(
                f"axes {self.axes} are not distinct names of {AXES}",
                "list its index axes, layer first",
            )
        if self.activation is not None:
            try:
                site = Site.of(self.activation, 0)
            except UnknownSiteError:
                raise bad(
                    f"activation {self.activation!r} is not a short site name of actstore.sites",
                    "use one of actstore.sites.SHORT_SITES (resid_pre, z, pattern, ...)",
                ) from None
            if site.layer is None:
                raise bad(
                    f"activation {self.activation!r} is outside the blocks",
                    "patch a site of blocks.L",
                )
        if self.kind == "stack":
            if self.activation is not None or self.setter is not None:
                raise bad(
                    "a stack has parts and an activation or setter", "give it one or the other"
                )
            if len(self.patch_types) != len(self.parts):
                raise bad(
                    f"{len(self.parts)} parts but {len(self.patch_types)} patch_types",
                    "name every part once",
                )
            for part in self.parts:
                if part.kind != "single":
                    raise bad(
                        f"part {part.name!r} is not a single sweep", "stack single sweeps only"
                    )
                if sorted(AXIS_RENAMES.get(a, a) for a in part.axes) != sorted(self.axes):
                    raise bad(
                        f"part {part.name!r} has axes {part.axes}, not a reordering of {self.axes}",
                        "stack parts whose axes (head_index -> head, dest_pos -> pos) match its axes",
                    )
        elif self.activation is None:
            raise bad("no activation", "give the short site it patches (or a stack's parts)")
        elif self.kind == "single" and (self.axes[0] != "layer" or not callable(self.setter)):
            raise bad(
                "a single sweep needs a setter and axes starting with 'layer'",
                "give transformer_lens.patching's setter and its index axes",
            )

    @property
    def kind(self) -> str:
        """'single', 'stack' or 'path' (no setter: its functions are written by hand)."""
        return "stack" if self.parts else "single" if self.setter is not None else "path"

    @property
    def function(self) -> str:
        return f"get_act_patch_{self.name}"

    @property
    def result_axes(self) -> tuple[str, ...]:
        """The axes of its tensor result: a stack's start with patch_type."""
        return ("patch_type", *self.axes) if self.kind == "stack" else self.axes

    @property
    def reads(self) -> tuple[str, ...]:
        """The short sites whose clean activations the sweep reads (at every layer)."""
        shorts = (
            (self.activation,)
            if self.activation is not None
            else tuple(p.activation for p in self.parts)
        )
        return tuple(dict.fromkeys(s for s in shorts if s is not None))

    def sites(self, n_layers: int) -> list[Site]:
        """Every site the sweep reads on a model of ``n_layers`` blocks."""
        return [Site.of(short, layer) for short in self.reads for layer in range(n_layers)]

    def hooks(self, n_layers: int) -> list[str]:
        return [site.hook for site in self.sites(n_layers)]

    @property
    def site_spec(self) -> str:
        """What to cache for the sweep, as a --sites spec: ``resid_pre:all,attn_out:all``."""
        return ",".join(f"{short}:all" for short in self.reads)

    @property
    def doc(self) -> str:
        """The docstring of its drop-in function."""
        shape = ", ".join(self.axes)
        if self.kind == "stack":
            return (
                f"{self.what}, stacked on a leading patch_type axis ({', '.join(self.patch_types)}): a tensor "
                f"of shape [{len(self.parts)}, {shape}] (or a PatchingResult with a leading patch_type axis "
                "under reduce/baseline). Same as transformer_lens.patching's function of this name, vectorised."
            )
        return (
            f"Patch {self.what}, one variant per ({shape}): a tensor of shape [{shape}] (or a PatchingResult, "
            "see generic_activation_patch). Same as transformer_lens.patching's function of this name, vectorised."
        )


def _single(
    name: str, activation: str, setter: Setter, axes: tuple[str, ...], what: str
) -> SweepRow:
    return SweepRow(name=name, what=what, activation=activation, setter=setter, axes=axes)


_LP, _LPH, _LH = ("layer", "pos"), ("layer", "pos", "head"), ("layer", "head")
_SINGLES = (
    _single(
        "resid_pre",
        "resid_pre",
        tl.layer_pos_patch_setter,
        _LP,
        "the residual stream entering each block",
    ),
    _single(
        "resid_mid",
        "resid_mid",
        tl.layer_pos_patch_setter,
        _LP,
        "the residual stream between attention and MLP",
    ),
    _single(
        "attn_out", "attn_out", tl.layer_pos_patch_setter, _LP, "each attention layer's output"
    ),
    _single("mlp_out", "mlp_out", tl.layer_pos_patch_setter, _LP, "each MLP layer's output"),
    _single(
        "attn_head_out_by_pos",
        "z",
        tl.layer_pos_head_vector_patch_setter,
        _LPH,
        "each head's output (z)",
    ),
    _single(
        "attn_head_q_by_pos",
        "q",
        tl.layer_pos_head_vector_patch_setter,
        _LPH,
        "each head's queries",
    ),
    _single(
        "attn_head_k_by_pos", "k", tl.layer_pos_head_vector_patch_setter, _LPH, "each head's keys"
    ),
    _single(
        "attn_head_v_by_pos", "v", tl.layer_pos_head_vector_patch_setter, _LPH, "each head's values"
    ),
    _single(
        "attn_head_pattern_by_pos",
        "pattern",
        tl.layer_head_pos_pattern_patch_setter,
        ("layer", "head_index", "dest_pos"),
        "each head's pattern row",
    ),
    _single(
        "attn_head_pattern_dest_src_pos",
        "pattern",
        tl.layer_head_dest_src_pos_pattern_patch_setter,
        ("layer", "head_index", "dest_pos", "src_pos"),
        "each entry of each head's pattern",
    ),
    _single(
        "attn_head_out_all_pos",
        "z",
        tl.layer_head_vector_patch_setter,
        _LH,
        "each head's output, all positions",
    ),
    _single(
        "attn_head_q_all_pos",
        "q",
        tl.layer_head_vector_patch_setter,
        _LH,
        "each head's queries, all positions",
    ),
    _single(
        "attn_head_k_all_pos",
        "k",
        tl.layer_head_vector_patch_setter,
        _LH,
        "each head's keys, all positions",
    ),
    _single(
        "attn_head_v_all_pos",
        "v",
        tl.layer_head_vector_patch_setter,
        _LH,
        "each head's values, all positions",
    ),
    _single(
        "attn_head_pattern_all_pos",
        "pattern",
        tl.layer_head_pattern_patch_setter,
        ("layer", "head_index"),
        "each head's whole pattern",
    ),
)
_S = {row.name: row for row in _SINGLES}
_HEAD_TYPES = ("out", "q", "k", "v", "pattern")


def _stack(
    name: str, parts: Iterable[str], patch_types: Sequence[str], axes: tuple[str, ...], what: str
) -> SweepRow:
    return SweepRow(
        name=name,
        what=what,
        axes=axes,
        parts=tuple(_S[p] for p in parts),
        patch_types=tuple(patch_types),
    )


ROWS: tuple[SweepRow, ...] = (
    *_SINGLES,
    _stack(
        "attn_head_all_pos_every",
        (f"attn_head_{t}_all_pos" for t in _HEAD_TYPES),
        _HEAD_TYPES,
        _LH,
        "Every head across all positions for out, q, k, v and pattern",
    ),
    _stack(
        "attn_head_by_pos_every",
        (f"attn_head_{t}_by_pos" for t in _HEAD_TYPES),
        _HEAD_TYPES,
        _LPH,
        "Every head by position for out, q, k, v and pattern",
    ),
    _stack(
        "block_every",
        ("resid_pre", "attn_out", "mlp_out"),
        ("resid_pre", "attn_out", "mlp_out"),
        _LP,
        "resid_pre, attn_out and mlp_out by position",
    ),
    SweepRow(
        "direct_path",
        "the edge from one head into each later head's q, k or v input",
        activation="z",
        axes=_LH,
    ),
    SweepRow(
        "direct_path_all_sources",
        "every edge from a head into a later head's q, k or v input",
        activation="z",
        axes=("src_layer", "src_head", "layer", "head"),
    ),
)


def check_table(rows: Sequence[SweepRow]) -> dict[str, SweepRow]:
    """The rows by name, after the checks across rows: names unique, every stack's parts
    rows of the same table."""
    by_name: dict[str, SweepRow] = {}
    for row in rows:
        if row.name in by_name:
            raise ConfigError(
                f"Sweep table: two rows named {row.name!r}; give each sweep one row "
                "(actstore/patching/table.py)."
            )
        by_name[row.name] = row
    for row in rows:
        for part in row.parts:
            if by_name.get(part.name) is not part:
                raise ConfigError(
                    f"Sweep table row {row.name!r}: part {part.name!r} is not a row of the table; "
                    "add it, or stack rows of the table (actstore/patching/table.py)."
                )
    return by_name


_ALL = check_table(ROWS)
#: every sweep taking (model, corrupted_tokens, clean_cache, metric, **options), by name: what
#: actstore.patching.attribution and `actstore patch` accept (single sweeps and stacks)
SWEEPS: Mapping[str, SweepRow] = MappingProxyType(
    {n: r for n, r in _ALL.items() if r.kind != "path"}
)
#: direct path patching's rows (its functions take a source head and a corrupted cache as well)
PATH_SWEEPS: Mapping[str, SweepRow] = MappingProxyType(
    {n: r for n, r in _ALL.items() if r.kind == "path"}
)


def check_model_sites(rows: Iterable[SweepRow], hook_names: Iterable[str], n_layers: int) -> None:
    """Every site the rows read is a hook of the model (``hook_names``: its hook_dict)."""
    have = set(hook_names)
    for row in rows:
        missing = [h for h in row.hooks(n_layers) if h not in have]
        if missing:
            raise ConfigError(
                f"Sweep table row {row.name!r} reads {missing[0]}, which this model does not have "
                f"(layer {layer_of(missing[0])}); fix the row's activation (actstore/patching/table.py)."
            )


def act_hook(activation_name: str) -> Callable[[int], str]:
    """layer -> hook name of a transformer_lens activation name: a short site name through
    actstore.sites, any other name of transformer_lens's vocabulary (aliases such as
    'attn' or 'pre', layer norms' 'scale') as transformer_lens.utilities.get_act_name reads it."""
    if activation_name in SHORT_SITES:
        return lambda layer: hook_name(activation_name, layer)
    from transformer_lens.utilities import get_act_name

    return lambda layer: get_act_name(activation_name, layer=layer)
