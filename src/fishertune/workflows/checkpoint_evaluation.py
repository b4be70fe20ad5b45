"""Evaluation of a trained checkpoint (``fishertune evaluate``).

:func:`evaluate_checkpoint` re-runs the trainer's evaluation on a checkpoint: the same
datasets (or others named on the command line), the same loader, protocol, class names and
precision, so that with the defaults it reproduces the run's ``results.json`` for the same
weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fishertune.data.base import LabelledImages
from fishertune.data.registry import FILE_DATASETS, dataset_class
from fishertune.data.synthetic import SyntheticSettings
from fishertune.engine.config import DataConfig
from fishertune.engine.distributed import resolve_device
from fishertune.engine.domain_sets import evaluation_set, evaluation_sets
from fishertune.engine.sharded_eval import evaluate_segmentor
from fishertune.engine.tuned_model import load_trained
from fishertune.evaluation.domains import DomainResults

__all__ = ["evaluate_checkpoint"]


def _entry_domain(
    entry: str, source: str, synthetic: SyntheticSettings, limit: int | None
) -> tuple[str, LabelledImages]:
    """The domain named by a ``data`` entry of :func:`evaluate_checkpoint` and its evaluation
    set: ``NAME=ROOT`` a data set read from files, else a domain of the run's ``source`` data
    set (the embedded benchmark's styles, generated at the ``synthetic`` settings); ValueError
    naming the entry and what is allowed."""
    domains = dataset_class(source).domains
    if "=" in entry:
        name, _, root = entry.partition("=")
        if name in FILE_DATASETS and root:
            return name, evaluation_set(name, root=root, limit=limit)
    elif entry in domains:
        return entry, evaluation_set(source, domain=entry, limit=limit, synthetic=synthetic)
    styles = f"a domain of {source!r} {domains} or " if domains else ""
    raise ValueError(
        f"data entry {entry!r}: expected {styles}NAME=ROOT with NAME one of "
        f"{sorted(FILE_DATASETS)} and ROOT its directory"
    )


def _domains(
    data: DataConfig, entries: Sequence[str], limit: int | None
) -> dict[str, LabelledImages]:
    """The evaluation sets, each limited to ``limit`` items: the run's (``entries`` empty) or
    those ``entries`` name, in order."""
    if not entries:
        return evaluation_sets(
            data.source,
            data.root,
            data.targets,
            data.roots,
            limit=limit,
            synthetic=data.synthetic,
            val_share=data.val_share,
        )
    domains: dict[str, LabelledImages] = {}
    for entry in entries:
        name, dataset = _entry_domain(entry, data.source, data.synthetic, limit)
        if name in domains:
            raise ValueError(f"data entry {entry!r}: domain {name!r} is given twice")
        domains[name] = dataset
    return domains


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: Sequence[str] = (),
    protocol: str | None = None,
    mode: str | None = None,
    eval_images: int | None = None,
    batch_size: int = 2,
    workers: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> DomainResults:
    """Evaluate a checkpoint (see :func:`~fishertune.engine.tuned_model.resolve_checkpoint`) as its
    run's trainer does.

    Args:
        checkpoint: a checkpoint's JSON file, its path without suffix, or a run directory
            (its ``best`` checkpoint, else ``last``). EMA weights are used when the run kept them.
        data: the domains, in order. Empty: those the run was evaluated on (the source's
            validation set when it has one, then ``data.targets``). Otherwise each entry is
            ``NAME=ROOT`` (a registered dataset, evaluated on its evaluation split) or, for a
            run on the synthetic benchmark, a style name (``source`` for the source style's
            validation scenes, or a target style). A malformed or unknown entry, or a domain
            named twice, raises ValueError naming it and what is allowed.
        protocol: a registered protocol name instead of the run's ``evaluation.protocol``.
        mode: ``"slide"`` or ``"whole"`` instead of the run's ``evaluation.mode``.
        eval_images: evaluate the first this many images of each domain instead of the run's
            ``data.eval_images`` (for synthetic styles: the number of scenes generated).
        batch_size: images per batch.
        workers: data-loader worker processes.
        device: ``"cpu"``, ``"cuda"``, … (default: CUDA when available). On CUDA the images
            run under bf16 autocast unless the run's ``schedule.amp`` is ``"off"``, as in
            training.
        progress: show a progress bar per domain.

    Returns:
        The per-domain metrics, labelled with the run's method name.
    """
    if eval_images is not None and eval_images < 1:
        raise ValueError(f"eval_images must be at least 1, got {eval_images}")
    target = resolve_device(device)
    model = load_trained(checkpoint, device=target)
    config = model.config
    limit = config.data.eval_images if eval_images is None else eval_images
    return evaluate_segmentor(
        model.segmentor,
        _domains(config.data, data, limit),
        model.evaluation_transform(),
        model.protocol(protocol, mode),
        num_classes=config.model.num_classes,
        device=target,
        amp=config.schedule.amp,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        method=config.method.name,
    )
