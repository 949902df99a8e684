"""vin-kernels benchmark harness: ``vin-bench`` / ``python -m vin_bench`` (``python -m bench`` in a checkout).

Suites (:mod:`vin_bench.suites`): ``flops`` (FLOPs of VIN vs full attention, analytic and counted),
``kernels`` (each op against full attention and the strongest baselines), ``model`` (a denoising
step, VIN vs full attention), ``parallel`` (what chunk-parallel sampling moves and gains),
``static`` (the compiled GPU code, without a GPU) and the opt-in ``quality`` and ``diffusers``.
The default run measures the headline slice of each; ``--full`` everything. Every run writes one
JSON result (environment, load, ceilings, raw timings), a markdown table and PNG plots under a name
of its own, and prints a short summary.
"""
