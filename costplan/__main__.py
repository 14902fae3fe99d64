"""``python -m costplan``: the command line."""

import sys

from costplan.cli import main

sys.exit(main())
