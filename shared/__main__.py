"""``python -m shared COMMAND ...``: the operator commands of :mod:`shared.cli.commands`."""

import sys

from shared.cli.commands import main

sys.exit(main())
