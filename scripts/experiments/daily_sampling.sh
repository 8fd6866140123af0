#!/usr/bin/env bash
# Negative downsampling in the daily cycle (docs/results/daily.md, "Negative downsampling"):
# configs/daily.yaml trained incrementally over days 1-10 of data/gen-daily (as
# scripts/experiments/daily.sh), on every row and on the clicks' negatives downsampled to
# RATE (default 0.1) with each correction (logit, weight, none), 3 seeds each. Then, for the
# every-row run of seed 1, the full serving export of each day and the delta since the day
# before. Prints next-day AUC and calibration per day, rows trained, training time and export
# sizes. Not part of the test suite: about 10 minutes on 2 cores.
#   scripts/experiments/daily_sampling.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export NCSREC="${NCSREC:-build/bin/ncsrec}"
out="${DAILY_RUNS:-runs/daily_sampling}"
rate="${RATE:-0.1}"
seeds=(${DAILY_SEEDS:-1 2 3})
[[ -f data/gen-daily/generator.h5 ]] || "$NCSREC" gen --out data/gen-daily --days 11 >&2
mkdir -p "$out"
for variant in all logit weight none; do
  sampling=()
  [[ $variant != all ]] && sampling=(--set data.negative_sampling.label=click --set "data.negative_sampling.rate=$rate"
                                     --set "data.negative_sampling.correction=$variant")
  for seed in "${seeds[@]}"; do
    scripts/daily.sh --mode incremental --config configs/daily.yaml --first 2026-01-01 --last 2026-01-10 \
      --out "$out/$variant/seed-$seed" -- --set "run.seed=$seed" "${sampling[@]}" >"$out/$variant.$seed.log" 2>&1 ||
      { tail -20 "$out/$variant.$seed.log"; exit 1; }
  done
done

# Exports of the every-row run, seed 1: each day's full view, and its delta since the day before.
runs="$out/all/seed-${seeds[0]}"
exports="$out/exports"
mkdir -p "$exports"
: >"$exports/sizes.tsv"
rows_of() { sed -n 's/.* tables of \([0-9]*\) rows.*/\1/p' <<<"$1"; }
prev=
for day in $(seq -f "2026-01-%02g" 1 10); do
  msg="$("$NCSREC" export --run-dir "$runs/$day" --out "$exports/$day.h5")"
  full_rows=$(rows_of "$msg") delta_bytes=0 delta_rows=0
  if [[ -n $prev ]]; then
    msg="$("$NCSREC" export --run-dir "$runs/$day" --since "$runs/$prev/checkpoints/final" --out "$exports/$day.delta.h5")"
    delta_bytes=$(stat -c %s "$exports/$day.delta.h5") delta_rows=$(rows_of "$msg")
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$day" "$(stat -c %s "$exports/$day.h5")" "$full_rows" "$delta_bytes" "$delta_rows" \
    >>"$exports/sizes.tsv"
  prev=$day
done
python3 scripts/experiments/daily_sampling_table.py "$out"
