"""The ``fishertune`` command line: ``info``, ``params`` here; ``data check|convert`` in
:mod:`fishertune.cli.data_commands`; the run commands (``demo``, ``train``, ``sensitivity``,
``evaluate``, ``predict``, ``compare``, ``study``, ``pretrain-demo-backbone``) in
:mod:`fishertune.cli.model_commands`.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

from fishertune import __version__
from fishertune.cli.data_commands import add_data_commands
from fishertune.cli.guard import run_guarded
from fishertune.cli.model_commands import add_model_commands


def _cmd_info(_: argparse.Namespace) -> int:
    """Print the versions and devices this installation sees."""
    import timm
    import torch

    print(f"fishertune {__version__}")
    print(f"python     {platform.python_version()}")
    print(f"torch      {torch.__version__}")
    print(f"timm       {timm.__version__}")
    cuda = torch.cuda.is_available()
    devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    print(f"cuda       {'yes: ' + devices if cuda else 'no (CPU only)'}")
    print(f"threads    {torch.get_num_threads()}")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    """Trainable parameters of every method on a backbone built on the meta device."""
    import copy
    import json

    import torch

    from fishertune.models import build_segmentor
    from fishertune.tuners import available_tuners, build_tuner

    for option, value, lowest in (
        ("--img-size", args.img_size, 1),
        ("--patch-size", args.patch_size, 0),
        ("--num-classes", args.num_classes, 1),
    ):
        if value < lowest:
            raise ValueError(f"{option}: expected an integer ≥ {lowest}, got {value}")

    with torch.device("meta"):
        template = build_segmentor(
            args.backbone,
            head=args.head,
            img_size=args.img_size,
            patch_size=args.patch_size or None,
            num_classes=args.num_classes,
        )
    total = sum(p.numel() for p in template.backbone.parameters())
    methods = args.methods.split(",") if args.methods else available_tuners()
    report: dict[str, dict[str, int]] = {}
    for name in methods:
        count = build_tuner(name, copy.deepcopy(template)).count()
        report[name] = {"backbone_trainable": count.backbone, "decoder_trainable": count.decoder}
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="fishertune",
        description=(
            "Fisher-guided robust tuning of vision foundation models for domain-generalized "
            "semantic segmentation (FisherTune, CVPR 2025)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fishertune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="show versions and available devices")
    info.set_defaults(func=_cmd_info)
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
    params.add_argument("--backbone", default="vit_large_patch14_dinov2", help="timm model name")
    params.add_argument("--head", default="mask2former", choices=["linear", "mask2former"])
    params.add_argument("--img-size", type=int, default=512)
    params.add_argument("--patch-size", type=int, default=16, help="0 keeps the native patch")
    params.add_argument("--num-classes", type=int, default=19)
    params.add_argument("--methods", default="", help="comma-separated (default: all)")
    params.add_argument("--json", action="store_true", help="print one JSON object")
    params.set_defaults(func=_cmd_params)
    add_data_commands(sub)
    add_model_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fishertune`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    command = " ".join(
        part for part in (args.command, getattr(args, "data_command", None)) if part is not None
    )
    return run_guarded(command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
