"""What the package offers and what a configuration resolves to: ``params`` (the trainable
parameters of every method, the paper's Table 1 column), ``list`` (methods, data sets,
backbones, protocols) and ``config show`` (a configuration resolved and validated, without
running it)."""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

from fishertune.cli.run_arguments import config_arguments, parse_methods, run_config

__all__ = ["add_catalog_commands", "trainable_counts"]

PAPER_BACKBONE = "vit_large_patch14_dinov2"
"""The backbone of the paper's main table (DINOv2-L), the default of ``params`` and ``list``."""


def trainable_counts(
    backbone: str, head: str, img_size: int, patch_size: int, num_classes: int, methods: list[str]
) -> tuple[int, dict[str, dict[str, int]]]:
    """The backbone's parameter count and, per method, its trainable backbone and decoder
    parameters, with the segmentor built on the meta device (no weights, no memory)."""
    import torch

    from fishertune.models import build_segmentor
    from fishertune.tuners import build_tuner

    for option, value, lowest in (
        ("--img-size", img_size, 1),
        ("--patch-size", patch_size, 0),
        ("--num-classes", num_classes, 1),
    ):
        if value < lowest:
            raise ValueError(f"{option}: expected an integer ≥ {lowest}, got {value}")
    with torch.device("meta"):
        template = build_segmentor(
            backbone,
            head=head,
            img_size=img_size,
            patch_size=patch_size or None,
            num_classes=num_classes,
        )
    total = sum(p.numel() for p in template.backbone.parameters())
    report: dict[str, dict[str, int]] = {}
    for name in methods:
        count = build_tuner(name, copy.deepcopy(template)).count()
        report[name] = {"backbone_trainable": count.backbone, "decoder_trainable": count.decoder}
    return total, report


def _cmd_params(args: argparse.Namespace) -> int:
    """Trainable parameters of every method on a backbone built on the meta device."""
    from fishertune.tuners import available_tuners

    total, report = trainable_counts(
        args.backbone,
        args.head,
        args.img_size,
        args.patch_size,
        args.num_classes,
        parse_methods(args.methods, default=available_tuners()),
    )
    if args.json:
        print(json.dumps({"backbone": args.backbone, "backbone_total": total, "methods": report}))
        return 0
    print(
        f"{args.backbone} ({args.img_size}px, patch {args.patch_size or 'native'}, "
        f"{args.head} head): {total / 1e6:.2f}M backbone parameters"
    )
    print(f"{'method':14s} {'backbone':>12s} {'decoder':>12s}")
    for name, counts in report.items():
        print(
            f"{name:14s} {counts['backbone_trainable'] / 1e6:11.2f}M "
            f"{counts['decoder_trainable'] / 1e6:11.2f}M"
        )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    """Methods (with their trainable backbone share), data sets, backbones and protocols."""
    from fishertune.data.registry import DATASETS
    from fishertune.evaluation.protocols import PROTOCOLS
    from fishertune.models.backbone import FAMILIES
    from fishertune.tuners import available_tuners

    methods = available_tuners()
    total, report = trainable_counts(args.backbone, "mask2former", 512, 16, 19, methods)
    print(f"methods (trainable backbone parameters on {args.backbone}, 512 px, patch 16):")
    for name in methods:
        trainable = report[name]["backbone_trainable"]
        print(f"  {name:14s} {trainable / 1e6:8.2f}M  ({trainable / total:.2%})")
    print("data sets (splits, the default first; training split; evaluation split):")
    for name, cls in DATASETS.items():
        train = cls.train_split or "none (evaluation only)"
        print(f"  {name:18s} {', '.join(cls.splits):24s} train: {train:24s} eval: {cls.eval_split}")
    print("backbones (timm names; any timm ViT of these families):")
    for family, names in FAMILIES.items():
        print(f"  {family:8s} {names}")
    print("evaluation protocols:")
    for name, protocol in PROTOCOLS.items():
        width, height = protocol.default_size
        print(f"  {name:10s} {protocol.mode} inference, default test size {width}x{height}")
    return 0


def _yaml_text(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


def _cmd_config_show(args: argparse.Namespace) -> int:
    """The configuration as a run would use it: defaults filled in, overrides applied,
    every key and value checked."""
    print(_yaml_text(run_config(args).to_dict()), end="")
    return 0


def add_catalog_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``params``, ``list`` and ``config show`` on the top-level sub-parser."""
    params = sub.add_parser(
        "params",
        help="trainable parameters of every method (the paper's Table 1 column)",
        description=(
            "Builds the segmentor on the meta device (no weights, no memory) and prints the "
            "trainable backbone and decoder parameters of each tuning method. The defaults are "
            "the paper's (Rein's) setting: 512 px input, patch embedding resampled to 16, "
            "Mask2Former head, 19 classes."
        ),
    )
    params.add_argument("--backbone", default=PAPER_BACKBONE, help="timm model name")
    params.add_argument(
        "--head", default="mask2former", choices=["linear", "mask2former"], help="decoder"
    )
    params.add_argument("--img-size", type=int, default=512, help="input size in pixels")
    params.add_argument("--patch-size", type=int, default=16, help="0 keeps the native patch")
    params.add_argument("--num-classes", type=int, default=19, help="segmentation classes")
    params.add_argument("--methods", default="", help="comma-separated (default: all)")
    params.add_argument("--json", action="store_true", help="print one JSON object")
    params.set_defaults(func=_cmd_params)

    listing = sub.add_parser(
        "list",
        help="methods, data sets, backbones and evaluation protocols",
        description=(
            "Prints every tuning method with its trainable share of the backbone (built on the "
            "meta device), every data set with its splits, the backbone families and the "
            "evaluation protocols."
        ),
    )
    listing.add_argument(
        "--backbone", default=PAPER_BACKBONE, help="timm model name for the methods' sizes"
    )
    listing.set_defaults(func=_cmd_list)

    config = sub.add_parser("config", help="show a run configuration resolved and validated")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print CONFIG with its defaults and overrides, checked, without running it",
        description=(
            "Reads CONFIG, applies every --set, checks every key and value as a run would "
            "(one line naming the key on an error, exit 2) and prints the result as YAML."
        ),
    )
    config_arguments(show, out=False)
    show.set_defaults(func=_cmd_config_show)
