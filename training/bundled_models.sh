#!/usr/bin/env bash
# Regenerate every bundled model package in models/ from the data directory (fixed seeds).
# About 2.5 hours on a 2-core CPU (the ensembles most of it); run it in the background, watch the log:
#   RNNSERVE_DATA_DIR=../shared/data nohup bash training/bundled_models.sh > runs/bundled.log 2>&1 &
# Pass preset names to train only those.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RNNSERVE_DATA_DIR:?set RNNSERVE_DATA_DIR to the data directory}"
PY=${PYTHON:-python}
presets=("$@")
if [ ${#presets[@]} -eq 0 ]; then
  mapfile -t presets < <($PY -c "from rnnserve.training.config import BUNDLED; print('\n'.join(BUNDLED))")
fi
for preset in "${presets[@]}"; do
  echo "=== $preset $(date +%T)"
  teacher=$($PY -c "from rnnserve.training.config import TEACHERS; print(TEACHERS.get('$preset', ''))")
  if [ -n "$teacher" ]; then  # distilled from its ensemble, bundled before it
    $PY -m rnnserve.training distill --teacher "models/$teacher/1" --preset "$preset" --export "$preset" \
      --models-dir models --overwrite --no-progress
  else
    $PY -m rnnserve.training train --preset "$preset" --export "$preset" --models-dir models --overwrite --no-progress
  fi
done
