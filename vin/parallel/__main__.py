"""``python -m vin.parallel``: see :mod:`vin.parallel.cli`."""

import sys

from .cli import main

if __name__ == "__main__":  # spawned ranks import this module under another name
    sys.exit(main())
