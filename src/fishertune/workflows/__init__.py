"""What the command line runs: training with its report, comparisons, the demo, the study,
sensitivity maps, evaluation and prediction from checkpoints, and the demo backbone's
pretraining.

This is the top layer: it ties the engine (training, checkpoints) to reporting (plots,
report.md); nothing below imports it.
"""
