"""``fishertune data check|convert``: validate dataset trees and convert their labels."""

from __future__ import annotations

import argparse


def _cmd_data_help(args: argparse.Namespace) -> int:
    """``fishertune data`` without an action: print the group's help."""
    parser: argparse.ArgumentParser = args.data_parser
    parser.print_help()
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    """Validate a dataset tree: exit 0 when clean, 1 with problems, 2 for usage errors."""
    from fishertune.data.tools import UsageError, check_dataset

    if args.max_problems < 0:
        raise UsageError(f"--max-problems: expected a count ≥ 0, got {args.max_problems}")
    report = check_dataset(args.name, args.root, args.split)
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
    from fishertune.data.tools import convert_dataset

    report = convert_dataset(args.name, args.root, workers=args.workers)
    print(f"{args.name}: {report.written} written, {report.skipped} skipped (already complete)")
    if not report.failed:
        return 0
    print(f"{len(report.failed)} failed:")
    for failure in report.failed:
        print(f"  - {failure}")
    return 1


def add_data_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
