"""Vectorised activation patching, a drop-in for ``transformer_lens.patching``
(:mod:`~actstore.patching.sweeps`, with generic and stack), with its metrics
(:mod:`~actstore.patching.metrics`), the engine behind it (engine with corrupted, hand_run,
projections, clean, kv_prefix, self_check), direct path patching (path, forked_path),
attribution patching (:mod:`actstore.patching.attribution` with grad_pass), prompt-pair tasks
(:mod:`actstore.patching.tasks`) and `actstore patch`'s job (job, pairs, figures)::

    from actstore import patching          # was: from transformer_lens import patching
    patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)
"""

from . import attribution, tasks  # noqa: F401  (actstore.patching.attribution and .tasks after `import actstore`)
from .sweeps import *  # noqa: F401,F403  (the drop-in's names: every get_act_patch_*, the setters, ...)
from .sweeps import __all__ as _sweeps_all

__all__ = list(_sweeps_all)
