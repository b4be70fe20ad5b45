"""``python -m fishertune.cli`` (how ``torchrun`` launches a command on every rank)."""

import sys

from fishertune.cli import main

sys.exit(main())
