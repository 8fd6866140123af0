#!/usr/bin/env bash
# The two further NCS rows of docs/results/ncs.md on the data of ncs_conflict.sh (run that first):
# NCS with learned masks, and the control: the same masked block with all-ones masks (so the
# masks' effect is separated from the architecture's).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
ncsrec="${NCSREC:-build/bin/ncsrec}"
levels=("$@")
((${#levels[@]})) || levels=(0 0.5 0.9)
for c in "${levels[@]}"; do
  data="data/gen-conflict-$c"
  echo "### conflict $c"
  echo
  python3 scripts/compare_models.py --ncsrec "$ncsrec" \
    --config "NCS (learned)=configs/ncs_learned.yaml" \
    --set "data.train=[\"$data/content/day=2026-01-0[1-6]\"]" \
    --set "data.valid=[\"$data/content/day=2026-01-07\"]" \
    --set "data.eval=[\"$data/content/day=2026-01-08\"]"
  python3 scripts/compare_models.py --ncsrec "$ncsrec" \
    --config "same block, all-ones masks=configs/ncs.yaml" --set model.masks.find=none \
    --set "data.train=[\"$data/content/day=2026-01-0[1-6]\"]" \
    --set "data.valid=[\"$data/content/day=2026-01-07\"]" \
    --set "data.eval=[\"$data/content/day=2026-01-08\"]" | tail -n +3
  echo
done
# Masks on the baselines' architecture: the masked block has the towers' shape (64-32) and
# the heads are linear, so each task's path is the shape of its single-task tower; all-ones
# masks make it one tower shared by both tasks (hard sharing).
if [[ "${NCS_TOWER_SHAPE:-1}" == 1 ]]; then
  for c in "${levels[@]}"; do
    data="data/gen-conflict-$c"
    echo "### conflict $c, masked block 64-32"
    echo
    for run in learned,alternating none,alternating learned,joint none,joint; do
      find=${run%,*} schedule=${run#*,}
      python3 scripts/compare_models.py --ncsrec "$ncsrec" \
        --config "NCS 64-32 ($find masks, $schedule)=configs/ncs_learned.yaml" --set "model.masks.find=$find" \
        --set "model.shared=[64, 32]" --set "train.schedule=$schedule" \
        --set "data.train=[\"$data/content/day=2026-01-0[1-6]\"]" \
        --set "data.valid=[\"$data/content/day=2026-01-07\"]" \
        --set "data.eval=[\"$data/content/day=2026-01-08\"]" | sed -n 3p
    done
    echo
  done
fi
