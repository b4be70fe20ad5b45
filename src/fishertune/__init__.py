"""fishertune: Fisher-guided robust sparse fine-tuning of vision foundation models.

Reference implementation of FisherTune (Zhao et al., CVPR 2025). The engine lives in
:mod:`fishertune.sensitivity` (Fisher estimators, feature perturbation, DR-FIM),
:mod:`fishertune.selection` (scores to masks, growth schedule) and :mod:`fishertune.optim`
(sparse AdamW). The maths as implemented is stated in the repository's ``docs/method.md``;
section numbers (§, "method.md §N") in docstrings refer to it and equation numbers to the
paper.
"""

__version__ = "0.1.0"
