"""``python -m bench.report`` in a checkout: the same as ``python -m vin_bench.report``."""
from vin_bench.report import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m bench.report"))
