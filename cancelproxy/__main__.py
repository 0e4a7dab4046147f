"""``python -m cancelproxy`` runs the command line."""

import sys

from cancelproxy.cli import main

sys.exit(main())
