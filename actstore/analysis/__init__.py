"""Standard analyses over a store: induction-head scores (Olsson et al. 2022), the
logit lens (nostalgebraist 2020) and direct logit attribution (Elhage et al. 2021).
Each streams over rows, so it works on stores larger than memory, and writes its
arrays under results/analysis/<name>/ with named dimensions.
"""

from .common import model_for, result_writer, single_token
from .dla import DirectLogitAttribution, direct_logit_attribution
from .induction import InductionScores, induction_scores
from .logit_lens import LogitLens, logit_lens

__all__ = [
    "InductionScores",
    "induction_scores",
    "LogitLens",
    "logit_lens",
    "DirectLogitAttribution",
    "direct_logit_attribution",
    "model_for",
    "result_writer",
    "single_token",
]
