#!/usr/bin/env bash
# IMP mask search on 2 ranks (CTest imp.mpi.np2): the NCS model's IMP search (2 rounds) run by
# `mpirun -np 2` with 64 rows a rank, and by one process with 128 rows, on the same data. The
# 2-rank run must finish (the replicas' CRC check at every log line includes the masks, so ranks
# that disagreed on a mask would stop it), keep every round's masks at the formula's densities
# exactly, and find the same masks as the one process: data parallelism changes the sums only in
# their rounding, so only connections at the pruning threshold could differ (allowed: 0.5% of
# each mask's bits; measured: none).
#
# usage: imp_np2.sh MPIEXEC NCSREC_BINARY
set -uo pipefail
mpiexec="$1"
ncsrec="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
# shellcheck source=tests/mpi/local_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/local_env.sh"
py=/usr/bin/python3
[[ -x $py ]] || py=python3
"$ncsrec" gen --out gen --days 3 --rows-per-day 4000 --users 300 --items 100 >/dev/null || { echo "FAIL gen"; exit 1; }
cat >imp.yaml <<'YAML'
run: {seed: 5, threads: 1}
data:
  train: ["gen/content/day=2026-01-01"]
  valid: ["gen/content/day=2026-01-02"]
  eval: ["gen/content/day=2026-01-03"]
model:
  type: ncs
  embedding_dim: 4
  interaction: dot
  shared: [32, 16]
  tower: []
  tables: {user_id: {rows: 300}, item_id: {rows: 100}, user_segment: {rows: 32}, item_category: {rows: 64}}
  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}
  masks: {find: imp, final_density: 0.36, rounds: 2}
optimizer: {type: sgd, lr: 0.05}
sparse_optimizer: {type: sgd, lr: 0.05}
train: {batch_size: 128, log_every: 5}
YAML
if ! out="$("$ncsrec" train --config imp.yaml --run-dir one 2>&1)"; then echo "FAIL one process: $out"; exit 1; fi
if ! out="$(timeout 300 "$mpiexec" -np 2 --oversubscribe -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
    "$ncsrec" train --config imp.yaml --run-dir two --set train.batch_size=64 2>&1)"; then
  echo "FAIL 2 ranks: $out"
  exit 1
fi
"$py" - one two <<'PY'
import json, sys
import h5py, numpy as np
one, two = sys.argv[1], sys.argv[2]
bad = 0
def check(cond, what):
    global bad
    print(("ok   " if cond else "FAIL ") + what)
    bad += not cond
s = json.load(open(f"{two}/summary.json"))
check(s["world_size"] == 2, f"the 2-rank run ran on {s['world_size']} ranks")
for rnd in (1, 2):
    a, b = h5py.File(f"{one}/masks/round-{rnd}.h5", "r"), h5py.File(f"{two}/masks/round-{rnd}.h5", "r")
    names = []
    a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    total = {}
    for n in names:
        size = int(a[n].attrs["rows"]) * int(a[n].attrs["cols"])
        ba = np.unpackbits(a[n][()], bitorder="little")[:size]
        bb = np.unpackbits(b[n][()], bitorder="little")[:size]
        task = n.split("/")[1]
        t = total.setdefault(task, [0, 0, 0])
        t[0] += int(ba.sum()); t[1] += int(bb.sum()); t[2] += size
        differ = int((ba != bb).sum())
        check(differ <= 0.005 * size, f"round {rnd} {n}: {differ} of {size} bits differ between 1 and 2 ranks")
    want = 0.6 if rnd == 1 else 0.36  # p = 1 - 0.36^(1/2) = 0.4 pruned per round
    for task, (ones_a, ones_b, size) in total.items():
        check(ones_a == ones_b == round(want * size), f"round {rnd} task {task}: {ones_b} of {size} kept on 2 ranks, {ones_a} on one (formula {round(want * size)})")
sys.exit(1 if bad else 0)
PY
