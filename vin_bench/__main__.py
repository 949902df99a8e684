"""``python -m vin_bench``: the benchmark CLI (:mod:`vin_bench.cli`)."""
import sys

from .cli import main

sys.exit(main(prog="python -m vin_bench"))
