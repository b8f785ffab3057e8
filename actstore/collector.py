"""What a capture forward does with each site's activation as its hook fires
(:class:`Collector`), whichever runs the hooks: the bridge's hook points
(:meth:`actstore.models.LoadedModel.capture`) or the plain model's modules
(:class:`actstore.families.hf.HFCapture`); and :class:`CaptureDone`, which abandons the
rest of a forward once every hook wanted has fired."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .errors import UnknownSiteError
from .sites import Site

__all__ = ["Collector", "CaptureDone"]


class Collector:
    """What a capture forward does with each site's activation as its hook fires, whatever
    runs the hooks (the bridge, or the plain model's modules: ``--engine hf``): derive it
    (loss from logits), narrow its heads, hand it to ``sink`` or keep it; after the last
    site, raise :class:`CaptureDone` to abandon the rest of the forward."""

    def __init__(
        self,
        sites: Sequence[Site],
        tokens: torch.Tensor,
        keep: bool,
        sink: Callable[[str, torch.Tensor], None] | None,
    ):
        self.tokens, self.keep, self.sink = tokens, keep, sink
        self.wanted = {site.hook for site in sites}
        self.fired: set[str] = set()
        self.got: dict[str, torch.Tensor] = {}

    def __call__(self, site: Site, act: torch.Tensor) -> None:
        self.fired.add(site.hook)
        if self.keep or self.sink is not None:
            derive = _DERIVE.get(site.hook)
            value = act.detach() if derive is None else derive(act, self.tokens)
            if site.heads is not None:
                value = value.index_select(
                    _head_axis(site.hook), torch.tensor(site.heads, device=value.device)
                )
            if self.sink is not None:
                self.sink(site.hook, value)
            else:
                self.got[site.hook] = value
        if len(self.fired) == len(self.wanted):
            raise CaptureDone

    def result(self) -> dict[str, torch.Tensor]:
        missing = self.wanted - self.fired
        if missing:
            raise UnknownSiteError(
                f"Hooks {sorted(missing)} did not fire during the forward; they cannot be cached."
            )
        return self.got


def _loss_per_token(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(row, pos - 1): the formula of TransformerLens's lm_cross_entropy_loss."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -log_probs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


_DERIVE = {"loss": _loss_per_token}


class CaptureDone(Exception):
    """Raised by the last capture hook to abandon the rest of the forward."""


def _head_axis(hook: str) -> int:
    # (row, head, query_pos, key_pos) for patterns/scores, (row, pos, head, d_head) for q k v z
    return 1 if hook.endswith(("hook_pattern", "hook_attn_scores")) else 2
