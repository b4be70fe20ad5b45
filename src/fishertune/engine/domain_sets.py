"""The run's data sets: the source's training and validation sets and each evaluated domain.

Every function takes the names, roots and counts it uses and opens the data sets through
:func:`~fishertune.data.registry.open_dataset`, on the splits each data set declares; a missing
root raises ValueError naming the configuration key that gives it. Items are untransformed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch.utils.data import Subset

from fishertune.data.base import LabelledImages, TreeDataset
from fishertune.data.registry import FILE_DATASETS, dataset_class, open_dataset
from fishertune.data.synthetic import SyntheticSettings
from fishertune.evaluation.domains import SOURCE_DOMAIN

__all__ = [
    "UNKNOWN_LABEL_WARNING",
    "evaluation_set",
    "evaluation_sets",
    "held_out_count",
    "source_train_set",
    "source_val_set",
    "target_sets",
    "unknown_label_notice",
]

UNKNOWN_LABEL_WARNING = 0.01
"""The share of sampled label pixels with ids outside the id table above which a training set
is warned about (they train as ignored: wrong label files, or labels not yet converted)."""


def _checked_root(name: str, root: str | None, key: str, role: str) -> str | None:
    """``root``, which must be given when the data set ``name`` is read from files; the
    ValueError names the configuration ``key`` that gives it."""
    if root is None and name in FILE_DATASETS:
        leave = ", or leave it out of data.targets (e.g. --set 'data.targets=[...]')"
        raise ValueError(
            f"{key}: the {role} dataset {name!r} needs its root directory "
            f"(e.g. --set {key}=/data/{name}){leave if role == 'target' else ''}"
        )
    return root


def held_out_count(size: int, share: float) -> int:
    """How many of a source's ``size`` training items a ``share`` holds out as its validation
    set (at least one when the share is positive; none when it is 0)."""
    if share <= 0.0:
        return 0
    count = max(1, math.ceil(size * share))
    if count >= size:
        raise ValueError(
            f"data.val_share: {share} of {size} training images leaves none to train on"
        )
    return count


def _first(dataset: LabelledImages, items: range, limit: int | None) -> LabelledImages:
    chosen = items if limit is None else items[:limit]
    return Subset(dataset, chosen)


def source_train_set(
    source: str,
    root: str | None,
    *,
    limit: int | None,
    synthetic: SyntheticSettings,
    val_share: float = 0.0,
) -> LabelledImages:
    """The training split of the data set ``source`` (at ``root``, ``data.root``): its first
    ``limit`` items, in its training domain; without the last ``val_share`` of it when the
    source declares no validation split (:func:`source_val_set` holds those out)."""
    split = dataset_class(source).train_split
    if split is None:
        raise ValueError(f"data.source: {source!r} has no training split (evaluation only)")
    checked = _checked_root(source, root, "data.root", "source")
    if val_share <= 0.0 or dataset_class(source).has_validation_split():
        return open_dataset(source, split, root=checked, limit=limit, synthetic=synthetic)
    whole = open_dataset(source, split, root=checked, synthetic=synthetic)
    size = len(whole)  # type: ignore[arg-type]
    return _first(whole, range(size - held_out_count(size, val_share)), limit)


def source_val_set(
    source: str,
    root: str | None,
    *,
    limit: int | None,
    synthetic: SyntheticSettings,
    val_share: float = 0.0,
) -> LabelledImages | None:
    """The evaluation split of the data set ``source`` (its first ``limit`` items, in its
    training domain); for a source that declares none (GTAV, SYNTHIA), the last ``val_share``
    of its training split, or ``None`` without opening it when the share is 0."""
    cls = dataset_class(source)
    own = cls.has_validation_split()
    if not own and val_share <= 0.0:
        return None
    checked = _checked_root(source, root, "data.root", "source")
    if own:
        return open_dataset(source, cls.eval_split, root=checked, limit=limit, synthetic=synthetic)
    assert cls.train_split is not None
    whole = open_dataset(source, cls.train_split, root=checked, synthetic=synthetic)
    size = len(whole)  # type: ignore[arg-type]
    return _first(whole, range(size - held_out_count(size, val_share), size), limit)


def evaluation_set(
    name: str,
    *,
    root: str | None = None,
    domain: str | None = None,
    limit: int | None = None,
    synthetic: SyntheticSettings | None = None,
) -> LabelledImages:
    """The first ``limit`` items of the evaluation split of the data set ``name`` (at ``root``),
    in ``domain`` for a data set of several domains (see
    :func:`~fishertune.data.registry.open_dataset`)."""
    split = dataset_class(name).eval_split
    return open_dataset(name, split, root=root, domain=domain, limit=limit, synthetic=synthetic)


def target_sets(
    source: str,
    targets: Sequence[str],
    roots: Mapping[str, str],
    *,
    limit: int | None,
    synthetic: SyntheticSettings,
) -> dict[str, LabelledImages]:
    """Each target's evaluation set, in ``targets`` order: for a source of several domains (the
    embedded benchmark) the targets are its domains, otherwise data sets at ``roots[name]``
    (``data.roots``)."""
    if dataset_class(source).domains:
        return {
            domain: evaluation_set(source, domain=domain, limit=limit, synthetic=synthetic)
            for domain in targets
        }
    return {
        name: evaluation_set(
            name,
            root=_checked_root(name, roots.get(name), f"data.roots.{name}", "target"),
            limit=limit,
            synthetic=synthetic,
        )
        for name in targets
    }


def evaluation_sets(
    source: str,
    root: str | None,
    targets: Sequence[str],
    roots: Mapping[str, str],
    *,
    limit: int | None,
    synthetic: SyntheticSettings,
    val_share: float = 0.0,
) -> dict[str, LabelledImages]:
    """Every domain a run is evaluated on: the source's validation set as
    :data:`SOURCE_DOMAIN` when it has one (:func:`source_val_set`, ``val_share`` for a source
    without one), then the targets (:func:`target_sets`), each limited to ``limit`` items."""
    sets: dict[str, LabelledImages] = {}
    source_val = source_val_set(source, root, limit=limit, synthetic=synthetic, val_share=val_share)
    if source_val is not None:
        sets[SOURCE_DOMAIN] = source_val
    sets.update(target_sets(source, targets, roots, limit=limit, synthetic=synthetic))
    return sets


def unknown_label_notice(dataset: LabelledImages, name: str) -> str | None:
    """A warning when the training set's labels hold many ids its id table does not define
    (checked on a sample of label files; None for the generated benchmark or clean labels)."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if not isinstance(base, TreeDataset):
        return None
    share = base.unknown_label_share()
    if share <= UNKNOWN_LABEL_WARNING:
        return None
    return (
        f"{share:.1%} of the label pixels in a sample of {name}'s training labels hold ids "
        f"outside the {name} id table; they train as ignored (check the tree with "
        f"`fishertune data check {name} ROOT`)"
    )
