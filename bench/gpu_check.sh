#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, install the [gpu] extra, then serve the bundled packages with
# the CUDA provider and with the CPU and compare them (bench/gpu_check.py says what it checks and prints).
#
#   bash bench/gpu_check.sh [--wheelhouse DIR] [--skip-install] [gpu_check.py options]
#
#   --wheelhouse DIR  install offline: pip --no-index --find-links DIR (DIR holds onnxruntime-gpu, the
#                     service's dependencies that are not installed yet, and setuptools for the build)
#   --skip-install    run in the Python environment as it is
#   PYTHON            the interpreter whose environment gets the install (default: python3)
#
# Exit status: gpu_check.py's (0: every model on CUDA and equal to the CPU), 1 without a GPU, 2 on bad
# arguments, 124 past 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pip_args=()
install=1
while (($#)); do
  case $1 in
    --wheelhouse)
      [[ -d ${2:-} ]] || { echo "gpu_check: --wheelhouse needs a directory" >&2; exit 2; }
      pip_args=(--no-index --find-links "$2"); shift 2 ;;
    --skip-install) install=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi failed); 'python bench/gpu_check.py --provider cpu'" \
       "dry-runs the check on the CPU" >&2
  exit 1
fi
if ((install)); then
  "$PYTHON" -m pip install -q "${pip_args[@]}" -e ".[gpu]"
  # onnxruntime and onnxruntime-gpu install the same module: keep only the GPU build.
  "$PYTHON" -m pip uninstall -q -y onnxruntime
  "$PYTHON" -m pip install -q "${pip_args[@]}" --force-reinstall --no-deps "onnxruntime-gpu>=1.27,<2"
fi
exec timeout 480 "$PYTHON" bench/gpu_check.py "$@"
