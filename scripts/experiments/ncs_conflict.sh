#!/usr/bin/env bash
# NCS experiment on generated data (docs/results/ncs.md): for each task-conflict level,
# generate the default data set with that conflict, then train single-task, shared-bottom,
# ESMM and NCS (IMP masks) with 3 seeds each: days 1-6 train, day 7 validation (IMP's mask
# choice), day 8 evaluation. Prints one markdown table per level. Not part of the test suite:
# about 15 minutes per level on 2 cores.
#   scripts/experiments/ncs_conflict.sh [levels...]     (default: 0 0.5 0.9)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
ncsrec="${NCSREC:-build/bin/ncsrec}"
levels=("$@")
((${#levels[@]})) || levels=(0 0.5 0.9)
for c in "${levels[@]}"; do
  data="data/gen-conflict-$c"
  [[ -f "$data/generator.h5" ]] || "$ncsrec" gen --out "$data" --conflict "$c" >&2
  echo "### conflict $c"
  echo
  python3 scripts/compare_models.py --ncsrec "$ncsrec" \
    --config single-task=configs/single_task.yaml --config shared-bottom=configs/shared_bottom.yaml \
    --config ESMM=configs/quickstart.yaml --config "NCS (imp)=configs/ncs.yaml" \
    --set "data.train=[\"$data/content/day=2026-01-0[1-6]\"]" \
    --set "data.valid=[\"$data/content/day=2026-01-07\"]" \
    --set "data.eval=[\"$data/content/day=2026-01-08\"]"
  echo
done
