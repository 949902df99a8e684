#!/usr/bin/env bash
# The GPU evidence from one command, in one short window (at most 8 minutes), on a fresh GPU machine
# with this source tree and no network: build the extension, check every kernel against sdpa at the
# paper shape (bf16, fp16, fp32, fwd + bwd), time chunk_attention beside dense SDPA (flash, cuDNN) and
# FlexAttention, check awkward sizes, compute-sanitizer memcheck; all into OUT_DIR/gpu_check.json
# (+ gpu_check.log). Each step is time-boxed and the JSON is kept current, so a cut-short run still
# returns what it measured. --dry-run: the same steps on the CPU with tiny shapes.
#
#   bash bench/gpu_check.sh [OUT_DIR] [STEP ...] [--dry-run] [--budget S] [--step-timeout S] [--workers N]
#
# OUT_DIR defaults to $OUT (the device tool's folder) or ./gpu_check_out. STEPs (default: build
# correct_paper perf correct_awkward memcheck; also racecheck, sanitize = memcheck racecheck, tests,
# alltests, bench) and the JSON format: vin_bench/gpu_check.py. Python: $PYTHON, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m vin_bench.gpu_check "$@"
