"""Site specs <-> hook names, and the shape of each site.

A *site* is one hook of the model, optionally narrowed to some heads. Users write
short specs (``resid_post:all``, ``z:5-7``, ``pattern:5.1,5.5``) or full hook names
(``blocks.5.hook_resid_post``); both are parsed once into :class:`Site` values and
checked against the model's ``hook_dict``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .errors import UnknownSiteError

__all__ = [
    "Site",
    "SiteShape",
    "SHORT_SITES",
    "parse_sites",
    "stop_layer",
    "probe_shapes",
    "hook_name",
    "layer_of",
    "SITE_DIMS",
    "KV_SITES",
    "sizes_of",
]

# short name -> hook name template; {L} is the layer
SHORT_SITES: dict[str, str] = {
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "resid_mid": "blocks.{L}.hook_resid_mid",
    "resid_post": "blocks.{L}.hook_resid_post",
    "attn_out": "blocks.{L}.hook_attn_out",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "z": "blocks.{L}.attn.hook_z",
    "q": "blocks.{L}.attn.hook_q",
    "k": "blocks.{L}.attn.hook_k",
    "v": "blocks.{L}.attn.hook_v",
    "pattern": "blocks.{L}.attn.hook_pattern",
    "attn_scores": "blocks.{L}.attn.hook_attn_scores",
    "mlp_pre": "blocks.{L}.mlp.hook_pre",
    "mlp_post": "blocks.{L}.mlp.hook_post",
}
# short names of hooks outside the blocks
GLOBAL_SITES: dict[str, str] = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "logits": "unembed.hook_out",
}
# sites computed from a hook rather than read from it: name -> the hook they need.
# loss: -log p(token[pos+1] | tokens[:pos+1]), as TransformerLens's loss_per_token, (pos = seq_len - 1)
DERIVED_SITES: dict[str, str] = {"loss": "unembed.hook_out"}
# short name -> the dimension names of one row of the site (sizes: ModelInfo.dim_sizes, pos: seq_len)
_RESID, _HEADS, _GRID = (
    ("pos", "d_model"),
    ("pos", "head", "d_head"),
    ("head", "query_pos", "key_pos"),
)
SITE_DIMS: dict[str, tuple[str, ...]] = {
    "resid_pre": _RESID,
    "resid_mid": _RESID,
    "resid_post": _RESID,
    "attn_out": _RESID,
    "mlp_out": _RESID,
    "z": _HEADS,
    "q": _HEADS,
    "k": _HEADS,
    "v": _HEADS,
    "pattern": _GRID,
    "attn_scores": _GRID,
    "mlp_pre": ("pos", "d_mlp"),
    "mlp_post": ("pos", "d_mlp"),
    "embed": _RESID,
    "pos_embed": _RESID,
    "logits": ("pos", "d_vocab"),
    "loss": ("pos",),
}
KV_SITES = frozenset({"k", "v"})  # sites whose heads are key/value heads
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")
_SELECTOR_RE = re.compile(r"^(all|\d+(-\d+)?|\d+\.\d+)$")
_EMBED_PREFIXES = ("hook_embed", "hook_pos_embed", "embed.", "pos_embed.")


@dataclass(frozen=True)
class Site:
    """One hook to capture. ``heads`` narrows a site with a head dimension."""

    hook: str
    layer: int | None  # None for hooks outside the blocks (embed, logits)
    heads: tuple[int, ...] | None = None  # None = every head

    def __str__(self) -> str:
        return (
            self.hook
            if self.heads is None
            else f"{self.hook}[heads={','.join(map(str, self.heads))}]"
        )

    @classmethod
    def of(cls, short: str, layer: int | None = None) -> Site:
        """The site of a short name at a layer: ``Site.of("z", 5).hook == "blocks.5.attn.hook_z"``;
        global sites (``embed``, ``logits``) take no layer."""
        return cls(hook_name(short, layer), layer if short in SHORT_SITES else None)

    @classmethod
    def from_hook(cls, hook: str) -> Site:
        """``Site.from_hook("blocks.5.hook_resid_post")``: the layer read off the name."""
        return cls(hook, layer_of(hook))

    @property
    def short(self) -> str | None:
        """The short name (``resid_post``, ``z``, ``embed``, ...), or None for a hook
        outside the short vocabulary. A derived site's short name is its hook (``loss``)."""
        return _SHORT_OF.get(
            self.hook if self.layer is None else self.hook.replace(f".{self.layer}.", ".{L}.", 1)
        )

    @property
    def kind(self) -> str:
        """What the site is, whatever its layer: the short name where there is one, else the
        hook name past ``blocks.L.`` (``ln1.hook_normalized``), else the hook itself."""
        if self.short is not None:
            return self.short
        return self.hook if self.layer is None else self.hook.split(".", 2)[-1]


@dataclass(frozen=True)
class SiteShape:
    """Shape of one stored row of a site, with a dimension name per axis."""

    dims: tuple[str, ...]  # e.g. ("pos", "d_model") or ("head", "query_pos", "key_pos")
    shape: tuple[int, ...]  # per row, at the store's seq_len, heads already narrowed

    @property
    def pos_axes(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.dims) if d.endswith("pos"))

    @property
    def feature_shape(self) -> tuple[int, ...] | None:
        """Shape of the per-feature stats, or None where a site has no single
        position axis (attention patterns)."""
        if self.dims.count("pos") != 1 or len(self.pos_axes) != 1:
            return None
        return tuple(s for d, s in zip(self.dims, self.shape) if d != "pos")


_SHORT_OF: dict[str, str] = {
    **{t: n for n, t in SHORT_SITES.items()},
    **{h: n for n, h in GLOBAL_SITES.items()},
    **{n: n for n in DERIVED_SITES},
}


def layer_of(hook: str) -> int | None:
    """The block index in a hook name (``blocks.5.…`` -> 5), None outside the blocks."""
    m = _LAYER_RE.match(hook)
    return int(m.group(1)) if m else None


def hook_name(short: str, layer: int | None = None) -> str:
    """``hook_name("resid_pre", 3) == "blocks.3.hook_resid_pre"``; the one place short
    names become hook names."""
    if short in SHORT_SITES:
        if layer is None:
            raise UnknownSiteError(f"Site '{short}' needs a layer, e.g. {short}:0.")
        return SHORT_SITES[short].format(L=int(layer))
    if short in GLOBAL_SITES:
        return GLOBAL_SITES[short]
    if short in DERIVED_SITES:
        return short
    raise unknown_site(short, ())


def _parse_layers(selector: str, n_layers: int, spec: str) -> list[tuple[int, int | None]]:
    """'all' | '5' | '5-7' | '5.1' -> [(layer, head or None), ...]"""
    if selector == "all":
        return [(layer, None) for layer in range(n_layers)]
    if "." in selector:
        layer_s, head_s = selector.split(".")
        pairs: list[tuple[int, int | None]] = [(int(layer_s), int(head_s))]
    elif "-" in selector:
        lo, hi = (int(x) for x in selector.split("-"))
        if hi < lo:
            raise UnknownSiteError(
                f"Site '{spec}': layer range {lo}-{hi} is empty; write it low-high, e.g. {hi}-{lo}."
            )
        pairs = [(layer, None) for layer in range(lo, hi + 1)]
    else:
        pairs = [(int(selector), None)]
    for layer, _ in pairs:
        if not 0 <= layer < n_layers:
            raise UnknownSiteError(
                f"Site '{spec}': layer {layer} is out of range; this model has layers 0..{n_layers - 1}."
            )
    return pairs


def split_specs(spec: str | Sequence[str]) -> list[str]:
    """'resid_post:all,pattern:5.1,5.5' -> ['resid_post:all', 'pattern:5.1,5.5']"""
    tokens = [
        t.strip()
        for part in ([spec] if isinstance(spec, str) else spec)
        for t in part.split(",")
        if t.strip()
    ]
    specs: list[str] = []
    for tok in tokens:
        if specs and ":" in specs[-1] and _SELECTOR_RE.match(tok):
            specs[-1] += "," + tok  # continuation of the previous spec's selectors
        else:
            specs.append(tok)
    return specs


def unknown_site(name: str, hook_names: Iterable[str]) -> UnknownSiteError:
    """The error for a site ``name`` that is neither a short spec nor one of ``hook_names``, with close matches."""
    vocab = sorted(set(SHORT_SITES) | set(GLOBAL_SITES) | set(DERIVED_SITES) | set(hook_names))
    close = difflib.get_close_matches(name, vocab, n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return UnknownSiteError(
        f"Unknown site '{name}'.{hint} Use a short spec ({', '.join(SHORT_SITES)}, "
        f"{', '.join([*GLOBAL_SITES, *DERIVED_SITES])}) with layers, e.g. 'resid_post:all', 'z:5-7', 'pattern:5.1', "
        "or any hook name the model exposes."
    )


def parse_sites(
    spec: str | Sequence[str | Site],
    hook_names: Iterable[str],
    n_layers: int,
    n_heads: int,
    n_kv_heads: int | None = None,
) -> list[Site]:
    """Expand site specs (strings or Site values) to a sorted list of Sites, one per
    hook (head selections of one hook are merged). Raises UnknownSiteError naming
    close matches. A key or value site's heads are the ``n_kv_heads`` key/value heads
    where the model groups its queries (grouped-query attention)."""
    hook_names = set(hook_names)
    wanted: dict[str, set[int] | None] = {}  # hook -> heads (None = all)

    def add(hook: str, head: int | None, spec_text: str) -> None:
        if hook not in hook_names and hook not in DERIVED_SITES:
            raise unknown_site(hook, hook_names)
        kv = n_kv_heads is not None and Site.from_hook(hook).short in KV_SITES
        limit = n_kv_heads if kv and n_kv_heads is not None else n_heads
        if head is not None and not 0 <= head < limit:
            raise UnknownSiteError(
                f"Site '{spec_text}': head {head} is out of range; this model has "
                f"{'key/value heads' if kv else 'heads'} 0..{limit - 1}."
            )
        if hook in wanted and wanted[hook] is None:
            return
        if head is None:
            wanted[hook] = None
        else:
            wanted.setdefault(hook, set()).add(head)  # type: ignore[union-attr]

    given = [spec] if isinstance(spec, str) else list(spec)
    for site in (x for x in given if isinstance(x, Site)):
        for head in site.heads if site.heads is not None else (None,):
            add(site.hook, head, str(site))
    specs = split_specs([x for x in given if isinstance(x, str)])
    if not specs and not wanted:
        raise UnknownSiteError("No sites given; pass e.g. --sites resid_post:all")
    for s in specs:
        name, _, selectors = s.partition(":")
        if name in GLOBAL_SITES and not selectors:
            add(GLOBAL_SITES[name], None, s)
        elif name in DERIVED_SITES and not selectors:
            add(name, None, s)
        elif name in SHORT_SITES:
            if not selectors:
                raise UnknownSiteError(
                    f"Site '{s}' needs layers, e.g. '{name}:all', '{name}:5' or '{name}:5-7'."
                )
            for sel in selectors.split(","):
                if not _SELECTOR_RE.match(sel):
                    raise UnknownSiteError(
                        f"Site '{s}': cannot read layers '{sel}'; expected 'all', 'L', 'L1-L2' or 'L.H'."
                    )
                for layer, head in _parse_layers(sel, n_layers, s):
                    if head is not None and name not in {
                        "z",
                        "q",
                        "k",
                        "v",
                        "pattern",
                        "attn_scores",
                    }:
                        raise UnknownSiteError(
                            f"Site '{s}': '{name}' has no head dimension, so 'L.H' does not apply."
                        )
                    add(SHORT_SITES[name].format(L=layer), head, s)
        elif not selectors:
            add(name, None, s)
        else:
            raise unknown_site(name, hook_names)

    def order(hook: str) -> tuple[int, str]:
        layer = layer_of(hook)
        return (-1 if hook.startswith(_EMBED_PREFIXES) else 10**6 if layer is None else layer, hook)

    return [
        Site(hook, layer_of(hook), None if heads is None else tuple(sorted(heads)))
        for hook, heads in sorted(wanted.items(), key=lambda kv: order(kv[0]))
    ]


def stop_layer(sites: Sequence[Site]) -> int | None:
    """Layer to stop the forward at (exclusive): the blocks after the last needed
    one are not run. None means the whole model (a site past the blocks)."""
    needed = 1  # TransformerBridge treats stop_at_layer=0 as "no stop"
    for site in sites:
        if site.layer is not None:
            needed = max(needed, site.layer + 1)
        elif not site.hook.startswith(_EMBED_PREFIXES):
            return None
    return needed


def _site_dims(
    site: Site, shape: Sequence[int], pos_axes: set[int], sizes: Mapping[str, int]
) -> tuple[str, ...]:
    """The site's own dimension names (SITE_DIMS), checked against the measured shape; a
    hook outside the short vocabulary is named from its shape."""
    dims = SITE_DIMS.get(site.short or "")
    if dims is None:
        return _name_dims(shape, pos_axes, sizes)
    sizes = sizes_of(site.short, sizes)
    if (
        len(dims) != len(shape)
        or {i for i, d in enumerate(dims) if d.endswith("pos")} != pos_axes
        or any(d in sizes and sizes[d] != n for d, n in zip(dims, shape))
    ):
        raise UnknownSiteError(
            f"Site {site.hook} has shape {tuple(shape)} (positions on axes {sorted(pos_axes)}) at 2 tokens, not the "
            f"({', '.join(dims)}) of a '{site.short}' site with {dict(sizes)}; this model names its hooks "
            "differently: cache the hook by another name, or report the model."
        )
    return dims


def sizes_of(short: str | None, sizes: Mapping[str, int]) -> Mapping[str, int]:
    """The sizes of a site's dimensions: in a key or value site the heads are the
    key/value heads (``kv_head``: grouped-query attention), elsewhere the query heads."""
    if short in KV_SITES and "kv_head" in sizes:
        return {**sizes, "head": sizes["kv_head"]}
    return sizes


def _name_dims(
    shape: Sequence[int], pos_axes: set[int], sizes: Mapping[str, int]
) -> tuple[str, ...]:
    """Dimension names of a hook outside the vocabulary: positions where the shape moved
    with the sequence length, else the first unused size that matches (dimN if none)."""
    names: list[str] = []
    pos_names = iter(["pos"] if len(pos_axes) == 1 else ["query_pos", "key_pos"])
    for axis, size in enumerate(shape):
        if axis in pos_axes:
            names.append(next(pos_names))
            continue
        name = next((n for n, s in sizes.items() if s == size and n not in names), f"dim{axis}")
        names.append(name)
    return tuple(names)


ForwardFn = Callable[[torch.Tensor, Sequence[Site]], Mapping[str, torch.Tensor]]


def probe_shapes(
    forward: ForwardFn, sites: Sequence[Site], seq_len: int, sizes: Mapping[str, int]
) -> dict[str, SiteShape]:
    """Find each site's per-row shape and dimension names by running the capture
    forward on one row at two lengths: the axes that change are positions.
    ``sizes`` maps dimension names (head, d_head, d_model, ...) to sizes."""
    full = [Site(s.hook, s.layer) for s in sites]  # name dims before narrowing heads
    a = forward(torch.zeros(1, 2, dtype=torch.long), full)
    b = forward(torch.zeros(1, 3, dtype=torch.long), full)
    shapes: dict[str, SiteShape] = {}
    for site in sites:
        sa, sb = tuple(a[site.hook].shape[1:]), tuple(b[site.hook].shape[1:])
        pos_axes = {i for i, (x, y) in enumerate(zip(sa, sb)) if x != y}
        dims = _site_dims(site, sa, pos_axes, sizes)
        # loss: seq_len - 1
        shape = tuple(seq_len + s - 2 if i in pos_axes else s for i, s in enumerate(sa))
        if site.heads is not None:
            if "head" not in dims:
                raise UnknownSiteError(
                    f"Site '{site}' selects heads, but {site.hook} has no head dimension."
                )
            axis = dims.index("head")
            shape = shape[:axis] + (len(site.heads),) + shape[axis + 1 :]
        shapes[site.hook] = SiteShape(dims, shape)
    return shapes
