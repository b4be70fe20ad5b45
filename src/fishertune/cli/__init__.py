"""The ``fishertune`` command line."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

from fishertune import __version__


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


def _usage_error(command: str, message: str) -> int:
    """Print a one-line usage error for ``fishertune data COMMAND`` and return exit status 2."""
    print(f"fishertune data {command}: error: {message}", file=sys.stderr)
    return 2


def _cmd_data_help(args: argparse.Namespace) -> int:
    """``fishertune data`` without an action: print the group's help."""
    parser: argparse.ArgumentParser = args.data_parser
    parser.print_help()
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    """Validate a dataset tree: exit 0 when clean, 1 with problems, 2 for usage errors."""
    from fishertune.data.tools import UsageError, check_dataset

    try:
        report = check_dataset(args.name, args.root, args.split)
    except UsageError as error:
        return _usage_error("check", str(error))
    print(f"{report.name} at {report.root}")
    for split, count in report.counts.items():
        print(f"  {split}: {count} images")
    if not report.problems:
        print("no problems found")
        return 0
    print(f"{len(report.problems)} problem(s):")
    for problem in report.problems[: args.max_problems]:
        print(f"  - {problem}")
    hidden = len(report.problems) - args.max_problems
    if hidden > 0:
        print(f"  ... and {hidden} more")
    return 1


def _cmd_data_convert(args: argparse.Namespace) -> int:
    """Write train-id label PNGs: exit 0 when done, 1 when files failed, 2 for usage errors."""
    from fishertune.data.tools import UsageError, convert_dataset

    try:
        report = convert_dataset(args.name, args.root, workers=args.workers)
    except UsageError as error:
        return _usage_error("convert", str(error))
    print(f"{args.name}: {report.written} written, {report.skipped} skipped (already complete)")
    if not report.failed:
        return 0
    print(f"{len(report.failed)} failed:")
    for failure in report.failed:
        print(f"  - {failure}")
    return 1


def _add_data_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``data`` group: ``data check`` and ``data convert``."""
    data = sub.add_parser("data", help="validate dataset trees and convert their labels")
    data.set_defaults(func=_cmd_data_help, data_parser=data)
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate a dataset tree",
        description=(
            "Reads every sample of every split present under ROOT (or --split) through the "
            "dataset's loader and reports missing labels, unreadable files, image/label size "
            "mismatches and label values outside the id table. Exit status: 0 clean, "
            "1 problems found, 2 usage error."
        ),
    )
    check.add_argument("name", metavar="NAME", help="a registered dataset (gtav, cityscapes, ...)")
    check.add_argument("root", metavar="ROOT", help="the dataset root directory")
    check.add_argument("--split", default=None, help="check only this split")
    check.add_argument(
        "--max-problems", type=int, default=20, metavar="N", help="list at most N problems"
    )
    check.set_defaults(func=_cmd_data_check)
    convert = actions.add_parser(
        "convert",
        help="write *_labelTrainIds.png label files",
        description=(
            "Writes 8-bit train-id PNGs (0-18, 255 = ignore) next to the native labels: "
            "GTAV labels/*_labelTrainIds.png, Mapillary {split}/labels/*_labelTrainIds.png, "
            "Synthia GT/LABELS/*_labelTrainIds.png. Resumable: complete outputs are skipped."
        ),
    )
    convert.add_argument("name", metavar="NAME", help="gtav, mapillary or synthia")
    convert.add_argument("root", metavar="ROOT", help="the dataset root directory")
    convert.add_argument(
        "--workers", type=int, default=None, metavar="N", help="processes (default: min(4, CPUs))"
    )
    convert.set_defaults(func=_cmd_data_convert)


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
    _add_data_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fishertune`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
