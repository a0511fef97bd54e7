"""`python -m xdpsec ...` is the `xdpsec` command (useful where the console script is not on PATH)."""

import sys

from xdpsec.cli import main

sys.exit(main())
