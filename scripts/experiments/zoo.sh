#!/usr/bin/env bash
# Multi-gate zoo on generated data (docs/results/zoo.md): for each task-conflict level,
# generate the default data set with that conflict, then train single-task, shared-bottom,
# MMoE, PLE, NCS (IMP masks), NCS + MMoE (masked experts) and two APG variants with SEEDS
# seeds each (default 3): days 1-6 train, day 7 validation (IMP's mask choice), day 8
# evaluation. Prints one markdown table per level with the cost columns. Not part of the test
# suite: about 35 minutes per level and 3 seeds on 2 cores.
#   [SEEDS=N] scripts/experiments/zoo.sh [levels...]     (default: 0 0.9)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
ncsrec="${NCSREC:-build/bin/ncsrec}"
levels=("$@")
((${#levels[@]})) || levels=(0 0.9)
for c in "${levels[@]}"; do
  data="data/gen-conflict-$c"
  [[ -f "$data/generator.h5" ]] || "$ncsrec" gen --out "$data" --conflict "$c" >&2
  echo "### conflict $c"
  echo
  python3 scripts/compare_models.py --ncsrec "$ncsrec" --seeds "${SEEDS:-3}" \
    --config single-task=configs/single_task.yaml --config shared-bottom=configs/shared_bottom.yaml \
    --config MMoE=configs/mmoe.yaml --config PLE=configs/ple.yaml \
    --config "NCS (imp)=configs/ncs.yaml" --config "NCS+MMoE (imp)=configs/ncs_mmoe.yaml" \
    --config "APG self-wise=configs/apg.yaml" --config "APG group-wise=configs/apg_group.yaml" \
    --set "data.train=[\"$data/content/day=2026-01-0[1-6]\"]" \
    --set "data.valid=[\"$data/content/day=2026-01-07\"]" \
    --set "data.eval=[\"$data/content/day=2026-01-08\"]"
  echo
done
