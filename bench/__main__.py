"""``python -m bench``: see :mod:`bench.cli`."""

import sys

from .cli import main

if __name__ == "__main__":  # a spawned client process imports this module as __mp_main__
    sys.exit(main())
