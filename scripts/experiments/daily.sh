#!/usr/bin/env bash
# Daily-cycle experiment (docs/results/daily.md): on 11 generated days (drift in segment and
# category latents, new users and items born every day), run scripts/daily.sh over days 1-10
# in three modes, each with 3 seeds:
#   incremental  each day from yesterday's checkpoint (optimizer state carried)
#   scratch      each day a fresh model on that day alone
#   frozen       the day-1 model, never retrained
# and print the next-day AUC per day (mean ± std over seeds), wall time per day, checkpoint
# sizes and the incremental days' export sizes (full and delta). Not part of the test suite:
# about 6 minutes on 2 cores.
#   scripts/experiments/daily.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export NCSREC="${NCSREC:-build/bin/ncsrec}"
out="${DAILY_RUNS:-runs/daily}"
seeds=(${DAILY_SEEDS:-1 2 3})
[[ -f data/gen-daily/generator.h5 ]] || "$NCSREC" gen --out data/gen-daily --days 11 >&2
for mode in incremental scratch frozen; do
  export_arg=()
  [[ $mode == incremental ]] && export_arg=(--export)  # the serving exports' sizes and seconds
  for seed in "${seeds[@]}"; do
    scripts/daily.sh --mode "$mode" "${export_arg[@]}" --config configs/daily.yaml --first 2026-01-01 --last 2026-01-10 \
      --out "$out/$mode/seed-$seed" -- --set "run.seed=$seed" >"$out.$mode.$seed.log" 2>&1 ||
      { tail -20 "$out.$mode.$seed.log"; exit 1; }
  done
done
python3 scripts/experiments/daily_table.py "$out"
