#!/usr/bin/env bash
# DMMP experiment on generated data (docs/results/dmmp.md): for each task-conflict level, with
# 3 seeds each, train the teacher (configs/dmmp_teacher.yaml: CGC + ESMM heads) on days 1-7,
# then six students on the same days (configs/dmmp_student.yaml and variants):
#   two-tower        CTR only (one item tower)
#   three-tower      click and conversion item towers, fixed even mix (no gate)
#   three-tower+gate the user-preference gate mixes the two scores
# each with and without distillation from that seed's teacher, and evaluate retrieval on day 8
# (`ncsrec eval --retrieval`: 2000 requests x every item, against the generator's truth).
# Prints one markdown table per level. Not part of the test suite: about 10 minutes per level
# on 2 cores (two levels run side by side).
#   scripts/experiments/dmmp.sh [levels...]     (default: 0.5 0.9)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
ncsrec="${NCSREC:-build/bin/ncsrec}"
out="${DMMP_RUNS:-runs/dmmp}"
seeds=(${DMMP_SEEDS:-1 2 3})
levels=("$@")
((${#levels[@]})) || levels=(0.5 0.9)

run_level() {
  local c="$1" data="data/gen-conflict-$1"
  [[ -f "$data/generator.h5" ]] || "$ncsrec" gen --out "$data" --conflict "$c" >&2
  local days=(--set "data.train=[\"$data/content/day=2026-01-0[1-7]\"]" --set "data.eval=[\"$data/content/day=2026-01-08\"]")
  for seed in "${seeds[@]}"; do
    local base="$out/conflict-$c/seed-$seed"
    rm -rf "$base/teacher"  # a rerun replaces this experiment's runs (train refuses a used run folder)
    "$ncsrec" train --config configs/dmmp_teacher.yaml --run-dir "$base/teacher" "${days[@]}" --set "run.seed=$seed" >/dev/null
    local teacher="$base/teacher/checkpoints/final"
    for variant in two-tower three-tower three-tower+gate; do
      for kd in none distill; do
        local sets=("${days[@]}" --set "run.seed=$seed")
        [[ $kd == distill ]] && sets+=(--set "model.distill.teacher=$teacher") || sets+=(--set 'model.distill.teacher=""')
        local config=configs/dmmp_student.yaml
        case $variant in
          two-tower) config=configs/dmmp_two_tower.yaml ;;
          three-tower) sets+=(--set model.gate.enabled=false) ;;
        esac
        local dir="$base/$variant-$kd"
        rm -rf "$dir"
        "$ncsrec" train --config "$config" --run-dir "$dir" "${sets[@]}" >/dev/null
        "$ncsrec" eval --run-dir "$dir" --retrieval "$data/generator.h5" --queries 2000 >/dev/null
      done
    done
  done
}

pids=()
for c in "${levels[@]}"; do run_level "$c" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
for c in "${levels[@]}"; do
  echo "### conflict $c"
  echo
  python3 scripts/experiments/dmmp_table.py "$out/conflict-$c"
  echo
done
