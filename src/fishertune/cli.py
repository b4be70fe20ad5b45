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
