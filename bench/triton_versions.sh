#!/usr/bin/env bash
# One virtual environment per Triton version, for the static report over the Tritons users have
# (torch 2.8 pins Triton 3.4, 2.9 -> 3.5, 2.10/2.11 -> 3.6, 2.13 -> 3.9).
#
#   bash bench/triton_versions.sh                 # build the venvs for every supported version
#   bash bench/triton_versions.sh 3.6.0 3.9.0     # only these
#   python -m bench --suite static --triton-versions 3.4.0,3.5.1,3.6.0,3.7.1,3.8.0,installed --full
#
# Each venv is /work/venvs/triton-X (VIN_TRITON_VENVS overrides /work/venvs; outside the checkout):
# `python -m venv --system-site-packages` so it sees this environment's torch and the editable
# vin-kernels, plus `pip install --no-deps triton==X`, which shadows the installed triton. The static
# suite's --triton-versions runs its compile matrix once per venv and merges the rows into one report.
set -euo pipefail

root="${VIN_TRITON_VENVS:-/work/venvs}"
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
  versions=(3.4.0 3.5.1 3.6.0 3.7.1 3.8.0 3.9.0)
fi
python=${PYTHON:-python}
for version in "${versions[@]}"; do
  venv="$root/triton-$version"
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv --system-site-packages "$venv"
  fi
  if [ "$("$venv/bin/python" -c 'import triton; print(triton.__version__)' 2>/dev/null)" != "$version" ]; then
    "$venv/bin/pip" install --quiet --no-deps "triton==$version"
  fi
  echo "$venv: triton $("$venv/bin/python" -c 'import triton; print(triton.__version__)')"
done
