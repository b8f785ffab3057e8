"""What every patching engine checks of a model before any work: that its family has an
adapter and the model is in evaluation mode, and, for the engines that run blocks
standalone over windows of positions, that actstore's block runner computes its family
exactly."""

from __future__ import annotations

from ..errors import ConfigError
from ..families import ADAPTERS, Adapter, adapter_for, architecture_of
from ..model_protocol import HookedModel

__all__ = ["check_model", "check_hand_run"]


def check_model(model: HookedModel, what: str = "Activation patching") -> type[Adapter]:
    """The adapter of ``model``'s family (a model of any other architecture is refused),
    after checking the model is in evaluation mode."""
    adapter = adapter_for(model, what)
    training = [n for n, m in model.named_modules() if m.training]
    if training:
        raise ConfigError(
            f"{what.lower()} requires the model in evaluation mode; found training mode at "
            f"{', '.join(training[:3])}. Call model.eval() first."
        )
    return adapter


def check_hand_run(model: HookedModel, what: str) -> type[Adapter]:
    """:func:`check_model`, and refuse a model whose blocks actstore's own block runner
    does not compute exactly (its family adapter says which do): ``what`` runs blocks
    standalone over windows of positions."""
    adapter = check_model(model, what)
    if not adapter.hand_run_blocks or not hasattr(model, "blocks"):
        hand = ", ".join(sorted({a.name for a in ADAPTERS.values() if a.hand_run_blocks}))
        raise ConfigError(
            f"{what} runs the blocks itself, and does so exactly for the {hand} family only (absolute position "
            f"embeddings, one key/value per head); this is a {adapter.name} model ({architecture_of(model)}). "
            "Use transformer_lens.patching for it."
        )
    return adapter
