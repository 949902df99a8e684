"""vin-kernels benchmark harness: ``python -m bench`` (or ``vin-bench``).

Suites: ``flops`` (anywhere: analytic and counted FLOPs of VIN vs full attention), ``kernels``
(GPU: each op against PyTorch SDPA backends, the naive composite, flash-attn and xformers) and
``model`` (GPU: a denoising step and a full sample, VIN vs full attention). Every run writes one
JSON result (environment, ceilings, raw timings), a markdown table and PNG plots.
"""
