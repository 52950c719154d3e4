"""python -m poller.onboard: the `emm` command line (poller/onboard/cli.py)."""

import sys

from .cli import main

sys.exit(main())
