#!/usr/bin/env bash
# The whole GPU evidence from one command, on a fresh GPU machine with this source tree and no network:
# build the extension, run the gpu tests, compute-sanitizer (memcheck, racecheck) on a small case of
# every kernel, then the benchmark suites; everything lands under one output folder.
#
#   bash bench/gpu_check.sh [OUT_DIR] [STEP ...]
#
# OUT_DIR defaults to $OUT (the device tool's folder) or ./gpu_check_out. STEPs (default, in order:
# build tests sanitize bench): build the extension; tests = the gpu-marked tests; alltests = every
# kernel and model test on the GPU (bf16 included; autotuning off, VIN_KERNELS_AUTOTUNE=0);
# sanitize = compute-sanitizer memcheck + racecheck; bench = python -m bench (all suites). Each
# step's log is OUT_DIR/<step>.log; OUT_DIR/summary.txt says what passed; benchmark results go to
# OUT_DIR/results (copy them to bench/results to commit). A device call is limited to 10 minutes:
# run the steps in separate calls when they do not fit one.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
shift $(( $# > 0 ? 1 : 0 ))
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build tests sanitize bench)
mkdir -p "$out"
python=${PYTHON:-python3}
status=0
export PYTHONUNBUFFERED=1

say() { echo "== $*" | tee -a "$out/summary.txt"; }
run() {  # run NAME CMD...: log to OUT/NAME.log, record pass/fail
  local name=$1; shift
  say "$name: $*"
  local start=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then say "$name: ok ($((SECONDS - start)) s)"; else say "$name: FAILED, exit $? ($((SECONDS - start)) s); see $name.log"; status=1; fi
}
sanitizer() {
  for candidate in compute-sanitizer /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    command -v "$candidate" >/dev/null 2>&1 && { echo "$candidate"; return; }
  done
  ls /opt/nvidia/*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1
}

say "gpu_check on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
for step in "${steps[@]}"; do
  case $step in
    build) run build env VIN_KERNELS_CUDA=1 "$python" -m pip install --no-build-isolation --no-deps -e . ;;
    tests) run tests "$python" -m pytest -m gpu -q -p no:cacheprovider tests ;;
    alltests) run alltests env VIN_KERNELS_AUTOTUNE=0 "$python" -m pytest -q -p no:cacheprovider tests/kernels tests/model ;;
    sanitize)
      tool=$(sanitizer)
      if [ -z "$tool" ]; then say "sanitize: compute-sanitizer not found"; status=1; continue; fi
      run memcheck "$tool" --tool memcheck --error-exitcode 3 "$python" -m vin_bench.sanitize
      run racecheck "$tool" --tool racecheck --error-exitcode 3 "$python" -m vin_bench.sanitize ;;
    bench) run bench "$python" -m bench --out "$out/results" ;;
    *) say "unknown step $step (build, tests, alltests, sanitize, bench)"; status=1 ;;
  esac
done
say "done: $([ $status -eq 0 ] && echo 'all steps passed' || echo 'some steps FAILED')"
exit $status
