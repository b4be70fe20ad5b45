"""Parameter sensitivity: Fisher estimators, simulated domain shift and DR-FIM (method.md §3–§6).

Everything here works on any ``nn.Module`` and any subset of its parameters.
"""

from fishertune.sensitivity._common import LABEL_MODES
from fishertune.sensitivity.diagonal import diagonal_fisher
from fishertune.sensitivity.dr_fim import (
    COMBINES,
    VARIANTS,
    dr_fim,
    median_floor,
    quantiles,
    relative_shift,
    shift_coefficient,
    stable_dr_fim,
)
from fishertune.sensitivity.losses import ModelOutputError, per_image_loss, sample_labels
from fishertune.sensitivity.model_inputs import LABEL_KEY
from fishertune.sensitivity.perturbation import (
    DSU_TRAINING_PROBABILITY,
    FeaturePerturbation,
    TokenEntry,
    entry_perturbation,
)
from fishertune.sensitivity.quality import (
    Agreement,
    DomainTerm,
    EstimateQuality,
    score_agreement,
    spearman,
    split_batches,
    topk_overlap,
)
from fishertune.sensitivity.variational import (
    CURVATURES,
    FLOOR_QUANTILE,
    TAU_SCALE,
    VariationalFit,
    check_fit_options,
    fit_variational,
    merge_fits,
    prior_scales,
)

__all__ = [
    "COMBINES",
    "CURVATURES",
    "DSU_TRAINING_PROBABILITY",
    "FLOOR_QUANTILE",
    "LABEL_KEY",
    "LABEL_MODES",
    "TAU_SCALE",
    "VARIANTS",
    "Agreement",
    "DomainTerm",
    "EstimateQuality",
    "FeaturePerturbation",
    "ModelOutputError",
    "TokenEntry",
    "VariationalFit",
    "check_fit_options",
    "diagonal_fisher",
    "dr_fim",
    "entry_perturbation",
    "fit_variational",
    "median_floor",
    "merge_fits",
    "per_image_loss",
    "prior_scales",
    "quantiles",
    "relative_shift",
    "sample_labels",
    "score_agreement",
    "shift_coefficient",
    "spearman",
    "split_batches",
    "stable_dr_fim",
    "topk_overlap",
]
