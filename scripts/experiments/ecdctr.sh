#!/usr/bin/env bash
# The E-CDCTR experiment (docs/results/ecdctr.md). Generated two-domain data, 21 days, ads 25x
# sparser than content (500k content and 20k ads impressions a day, shared users and items).
# Days 1-6 are content only for the models: the ads model launches on day 7 (the cold start
# E-CDCTR is for) and is then updated daily through day 20 (14 days), in four variants, 3
# seeds each:
#   alone    A-CTR from scratch on ads
#   cpm      A-CTR initialised from CPM (content days 4-6, the ads architecture)
#   tpm      A-CTR with the TPM's historical features (K = 3 snapshots, mean, joining the dot products)
#   both     CPM (trained with the features) initialisation + the features
# The TPM trains daily on content days 1-20 (one per seed, shared by the variants). Each day's
# model is scored on the next ads day: AUC and GAUC (by user), and the forgetting measure: AUC
# over the next day's rows whose user had no ads impression in the 7 days before (eval days
# 15-21). Not part of the test suite: about 20 minutes on 2 cores.
#   scripts/experiments/ecdctr.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export NCSREC="${NCSREC:-build/bin/ncsrec}"
out="${ECDCTR_RUNS:-runs/ecdctr}"
seeds=(${ECDCTR_SEEDS:-1 2 3})
data=data/gen-ecdctr
[[ -f $data/generator.h5 ]] || "$NCSREC" gen --out "$data" --days 21 --ads-fraction 0.04 >&2
e=scripts/ecdctr.sh
for seed in "${seeds[@]}"; do
  o="$out/seed-$seed"
  mkdir -p "$o"
  s=(-- --set "run.seed=$seed")
  log="$o/pipeline.log"
  {
    $e tpm --out "$o" --config configs/ecdctr/tpm.yaml --first 2026-01-01 --last 2026-01-20 "${s[@]}"
    $e cpm --out "$o" --config configs/ecdctr/ads.yaml --data "$data/content/day={day}" --day 2026-01-06 --window 3 \
      --name cpm "${s[@]}"
    $e cpm --out "$o" --config configs/ecdctr/ads.yaml --data "$data/content/day={day}" --day 2026-01-06 --window 3 \
      --history 3 --name cpm_tpm "${s[@]}"
    $e actr --out "$o" --config configs/ecdctr/ads.yaml --first 2026-01-07 --last 2026-01-20 --name actr-alone "${s[@]}"
    $e actr --out "$o" --config configs/ecdctr/ads.yaml --first 2026-01-07 --last 2026-01-20 --cpm cpm --name actr-cpm "${s[@]}"
    $e actr --out "$o" --config configs/ecdctr/ads.yaml --first 2026-01-07 --last 2026-01-20 --history 3 --name actr-tpm \
      "${s[@]}"
    $e actr --out "$o" --config configs/ecdctr/ads.yaml --first 2026-01-07 --last 2026-01-20 --history 3 --cpm cpm_tpm \
      --name actr-both "${s[@]}"
  } >"$log" 2>&1 || { tail -30 "$log"; exit 1; }
  # Predictions of each model on its next ads day, for the forgetting measure.
  for variant in alone cpm tpm both; do
    for d in $(seq -f "2026-01-%02g" 14 20); do
      next=$(date -d "$d + 1 day" +%F)
      p="$o/actr-$variant/$d/next_day.csv"
      [[ -f $p ]] || "$NCSREC" predict --run-dir "$o/actr-$variant/$d" --data "$data/ads/day=$next" --out "$p" >/dev/null
    done
  done
done
/usr/bin/python3 scripts/experiments/ecdctr_table.py "$out" "$data"
