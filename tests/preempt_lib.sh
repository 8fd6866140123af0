# Shared by the preemption tests (tests/e2e/preempt.sh, tests/mpi/preempt_resume.sh,
# tests/slurm/sbatch_preempt.sh); sourced, not run.
# shellcheck shell=bash

# preempt_setup NCSREC DIR STEPS CHECKPOINT_EVERY: generates DIR/gen (two small days) and writes
# DIR/tiny.yaml: small tables and batches, so thousands of steps take a few seconds and a
# checkpoint is a few hundred KB. Prints the generator's output and returns non-zero if it fails.
preempt_setup() {
  local ncsrec="$1" dir="$2" steps="$3" every="$4"
  timeout 60 "$ncsrec" gen --out "$dir/gen" --days 2 --rows-per-day 5000 --users 2000 --items 500 \
    >"$dir/gen.txt" 2>&1 || { cat "$dir/gen.txt"; return 1; }
  cat >"$dir/tiny.yaml" <<YAML
run: {seed: 1, threads: 1}
data:
  train: ["$dir/gen/content/day=2026-01-01"]
  eval: ["$dir/gen/content/day=2026-01-02"]
model:
  type: esmm
  embedding_dim: 8
  interaction: dot
  tables:
    user_id: {rows: 2000}
    item_id: {rows: 500}
    user_segment: {rows: 64}
    item_category: {rows: 64}
    hour: {rows: 24}
    device: {rows: 8}
    position: {rows: 16}
    item_tags: {rows: 256, pooling: mean}
  tower: [32, 16]
  tasks:
    ctr: {label: click}
    cvr: {label: conversion, given: ctr}
optimizer: {type: adam, lr: 0.003}
sparse_optimizer: {type: adagrad, lr: 0.05}
train:
  batch_size: 50
  epochs: 1000
  max_steps: $steps
  checkpoint_every: $every
  log_every: 1000
YAML
}

fails=0
check() {  # check CONDITION_STATUS WHAT: counts a failed check in $fails
  if [[ "$1" -eq 0 ]]; then echo "ok   $2"; else echo "FAIL $2"; fails=$((fails + 1)); fi
}

# first_step_checkpoint RUN: the name of a complete checkpoints/step-<N> of RUN (none: empty).
first_step_checkpoint() {
  local d
  for d in "$1"/checkpoints/step-*; do
    [[ "${d##*/}" =~ ^step-[0-9]+$ ]] && { echo "${d##*/}"; return; }
  done
}

# wait_for_step_checkpoint RUN SECONDS [PID]: polls every 0.05 s until RUN has a complete
# checkpoints/step-<N> (or SECONDS pass, or process PID ends); prints its name (none: empty).
wait_for_step_checkpoint() {
  local run="$1" polls=$(($2 * 20)) pid="${3:-}" first="" i
  for ((i = 0; i < polls; ++i)); do
    first="$(first_step_checkpoint "$run")"
    [[ -n "$first" ]] && break
    [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null && break
    sleep 0.05
  done
  echo "$first"
}

run_status() {  # run_status OUTPUT_FILE COMMAND...: runs it, prints its exit status
  local out="$1" rc=0
  shift
  "$@" >"$out" 2>&1 || rc=$?
  echo "$rc"
}
