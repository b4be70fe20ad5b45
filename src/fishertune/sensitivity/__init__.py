"""Parameter sensitivity: Fisher estimators, simulated domain shift and DR-FIM (method.md §3–§6).

Everything here works on any ``nn.Module`` and any subset of its parameters.
"""

from fishertune.sensitivity.diagonal import diagonal_fisher
from fishertune.sensitivity.dr_fim import dr_fim, shift_coefficient, stable_dr_fim
from fishertune.sensitivity.losses import per_image_loss, sample_labels
from fishertune.sensitivity.perturbation import FeaturePerturbation
from fishertune.sensitivity.variational import (
    gaussian_kl,
    variational_fisher,
    variational_precision,
)

__all__ = [
    "FeaturePerturbation",
    "diagonal_fisher",
    "dr_fim",
    "gaussian_kl",
    "per_image_loss",
    "sample_labels",
    "shift_coefficient",
    "stable_dr_fim",
    "variational_fisher",
    "variational_precision",
]
