#!/usr/bin/env bash
# Checkpoints reshard by key onto any number of ranks (CTest reshard.mpi): a tiny ESMM with a
# row-wise hash table (ids admitted after 2 reads, some pending), a row-wise fixed table, a
# table-wise table and a replicated one, lazy Adam on every table, trained 8 steps on 1 rank.
# Its final checkpoint is resumed (`train --resume` with max_steps at the checkpoint's step:
# load, then save at once) on 2 ranks, that one on 4 and on 1. Each pair is compared by
# reshard_compare.py (h5py): the same dense state and the same rows with the same values,
# optimizer state and counters, every row on its owner rank. So 1->2, 2->4 and 2->1 move
# rows by key and lose or change nothing. Then the 2-rank copy trains on: 8 more steps on 2
# ranks, eval metrics finite.
#
# usage: reshard.sh MPIEXEC NCSREC_BINARY SOURCE_DIR
set -uo pipefail
mpiexec="$1"
ncsrec="$2"
src="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
# shellcheck source=tests/mpi/local_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/local_env.sh"
py=/usr/bin/python3
[[ -x $py ]] || py=python3
if ! "$py" -c 'import h5py, numpy' 2>/dev/null; then
  echo "FAIL: $py cannot import h5py and numpy (scripts/setup.sh installs python3-h5py, python3-numpy)"
  exit 1
fi
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

"$ncsrec" gen --out gen --days 2 --rows-per-day 2000 --users 300 --items 100 >/dev/null || { echo "FAIL gen"; exit 1; }
cat >reshard.yaml <<'YAML'
run: {seed: 3, threads: 1}
data:
  train: ["gen/content/day=2026-01-01"]
  eval: ["gen/content/day=2026-01-02"]
model:
  type: esmm
  embedding_dim: 4
  tower: [8]
  tables:
    user_id: {capacity: 1000, admit_after: 2}
    item_id: {rows: 100}
    ctx: {rows: 64, slots: [hour, device, position], placement: table_wise}
    user_segment: {rows: 32, placement: replicated}
    item_category: {rows: 64}
    item_tags: {rows: 256, pooling: mean}
  tasks:
    ctr: {label: click}
    cvr: {label: conversion, given: ctr}
optimizer: {type: adam, lr: 0.01}
sparse_optimizer: {type: adam, lr: 0.01}
train: {batch_size: 16, max_steps: 8}
YAML
placements=(user_id=row_wise item_id=row_wise ctx=table_wise user_segment=replicated item_category=row_wise
            item_tags=row_wise)

out="$("$ncsrec" train --config reshard.yaml --run-dir r1 2>&1)" || { echo "FAIL 1-rank training: $out"; exit 1; }

# reshard FROM TO NP: TO = a copy of run FROM resumed on NP ranks without a step, then compared.
reshard() {
  local from="$1" to="$2" np="$3" launch=() out
  rm -rf "$to"
  cp -r "$from" "$to"
  ((np > 1)) && launch=("$mpiexec" -np "$np" --oversubscribe -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS)
  if ! out="$(timeout 120 "${launch[@]}" "$ncsrec" train --resume --run-dir "$to" --set train.max_steps=8 2>&1)"; then
    fail "$from -> $to on $np ranks: $out"
    return 1
  fi
  "$py" "$src/tests/mpi/reshard_compare.py" "$from/checkpoints/final" "$to/checkpoints/final" "${placements[@]}" ||
    fail "$from -> $to: the checkpoints differ"
}
reshard r1 r2 2
reshard r2 r4 4
reshard r2 r2to1 1

# The resharded run trains on: 8 more steps on 2 ranks.
if out="$(timeout 120 "$mpiexec" -np 2 --oversubscribe -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
  "$ncsrec" train --resume --run-dir r2 --set train.max_steps=16 2>&1)"; then
  "$py" - r2/summary.json <<'PY' || fail "r2: training on after the reshard"
import json, math, sys
s = json.load(open(sys.argv[1]))
ok = s["steps"] == 16 and s["world_size"] == 2 and all(math.isfinite(v["auc"]) for v in s["eval"].values())
print(("ok   " if ok else "FAIL ") + f"r2 trained on to step {s['steps']} on {s['world_size']} ranks")
sys.exit(0 if ok else 1)
PY
else
  fail "r2: training on: $out"
fi

if ((fails)); then
  echo "reshard.sh: $fails check(s) failed"
  exit 1
fi
echo "reshard.sh: all checks passed"
