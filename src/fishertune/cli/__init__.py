"""The ``fishertune`` command line: ``info`` here; ``params``, ``list`` and ``config show`` in
:mod:`fishertune.cli.catalog_commands`; ``data check|convert`` in
:mod:`fishertune.cli.data_commands`; the run commands (``demo``, ``train``, ``sensitivity``,
``evaluate``, ``predict``, ``export``, ``compare``, ``study``, ``pretrain-demo-backbone``) in
:mod:`fishertune.cli.model_commands`; the arguments they share in
:mod:`fishertune.cli.run_arguments`.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

from fishertune import __version__
from fishertune.cli.catalog_commands import add_catalog_commands
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
    from fishertune.optim import fused_kernel_status

    print(f"SparseAdamW CPU kernel: {fused_kernel_status()}")
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
    add_catalog_commands(sub)
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
    actions = (getattr(args, "data_command", None), getattr(args, "config_command", None))
    command = " ".join(part for part in (args.command, *actions) if part is not None)
    return run_guarded(command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
