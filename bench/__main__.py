"""``python -m bench`` in a checkout: the same as ``python -m vin_bench`` (or ``vin-bench``)."""
import sys

from vin_bench.cli import main

sys.exit(main(prog="python -m bench"))
