#!/usr/bin/env bash
# Run `python -m engine predict` and `evaluate` with every shipped weight on the real folders in
# ../shared/data, and on the data each model is meant for.
# Usage: weights/check_shipped.sh [OUT]   (default OUT=bench/results/shipped; JSON + CSV per run)
# Needs ../shared/data beside the checkout (SEGWB_SHARED_DATA to change); CPU is enough (~10 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export SEGWB_WORKSPACE=${SEGWB_WORKSPACE:-$PWD/.workspace}
DATA=${SEGWB_SHARED_DATA:-../shared/data}
OUT=${1:-bench/results/shipped}
PRED=$(mktemp -d)
trap 'rm -rf "$PRED"' EXIT
mkdir -p "$OUT"

run() {  # run NAME DATASET TAG [evaluate options...]
  local name=$1 data=$2 tag=$3; shift 3
  echo "== $name on $data ($tag)"
  $PY -m engine predict "$data" --weights "$name" --out "$PRED/$name-$tag" --device cpu
  for policy in kaggle exclude; do
    $PY -m engine evaluate "$data" --weights "$name" --device cpu --empty-policy "$policy" \
      --json "$OUT/$name--$tag--$policy.json" "$@"
  done
}

# the models' own held-out validation fold (grouped by patient / scan sequence)
run lung-cxr "$DATA/montgomery-lung" holdout --holdout --labels lung
run nerve-vessel-us "$DATA/usgra-nerve-vessel" holdout --holdout --labels nerve,vessel --group-regex '^(\d{3})\d$'
# another hospital, another device: the Kaggle nerve sample (brachial plexus; nerve only)
run nerve-vessel-us "$DATA/kaggle-nerve-sample" kaggle-sample
# the demo models on the real samples of the layouts they were built for (synthetic-trained: expect poor Dice)
run demo-nerve-phantom "$DATA/kaggle-nerve-sample" kaggle-sample
run demo-ptx-phantom "$DATA/siim-sample" siim-sample
echo "results in $OUT"
