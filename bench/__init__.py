"""The checkout's ``bench`` folder: results (``bench/results/``), ``gpu_check.sh``, pytest-benchmark
micro-benchmarks, and ``python -m bench`` / ``python -m bench.report`` as short names, inside a
checkout, for the installed harness :mod:`vin_bench` (not installed: no top-level ``bench`` module
can clash with another package's)."""
