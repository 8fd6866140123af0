#!/usr/bin/env bash
# `ncsrec export` files are enough to serve a model: on tiny generated data, tiny models of
# every type the reference scorer knows are trained, exported and run through `ncsrec predict`;
# export_numpy.py (h5py + numpy, no ncsrec code, written from docs/export.md) scores the same
# eval day from the export file alone and must match predict to 1e-5 (max abs) for every output.
#   ncs_esmm     ncs with ESMM heads, fixed masks from a file (ctr 15% dense: CSR; cvr 60%:
#                dense), interaction dot, a table read by three slots, mean pooling; exported
#                three times: default --csr-below, all dense (0), all CSR (1.01)
#   ncs_learned  ncs with learned masks on layer 0 only (layer 1 unmasked), BatchNorm towers
#   ncs_mmoe     MMoE whose experts are masked layers with learned masks, ESMM heads
#   mmoe         MMoE, BatchNorm and dropout in the towers, learned loss weights (not exported)
#   ple          two-level PLE with self-wise APG experts and BatchNorm
#   apg          shared-bottom, LayerNorm, group-wise APG towers with over-parameterised factors
#   single_task  one set of tables and one tower per task
#   esmm_sampled ESMM on downsampled negatives with the logit correction (a per-task logit offset)
#   history     ESMM with E-CDCTR history features (attention over two TPM snapshots) that join
#               the dot-product interaction as fields
#   mmoe_np2     the mmoe config trained by 2 ranks (when mpiexec exists): one process exports it
# Then the failures: a missing checkpoint and an --out in a missing folder exit non-zero with a
# message and leave no file; a failed export leaves an existing FILE untouched; a write that
# fails half way (file size limit) leaves neither FILE nor FILE.tmp.
#
# Needs Debian's python3-h5py and python3-numpy in /usr/bin/python3 (scripts/setup.sh installs
# them). A missing package fails the test: it never skips.
set -uo pipefail  # no -e: a failed check is counted, not fatal
ncsrec="$1"
root="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
py=/usr/bin/python3
scorer="$root/tests/e2e/export_numpy.py"
start=$SECONDS

if ! "$py" -c 'import h5py, numpy' 2>/dev/null; then
  echo "h5py/numpy missing for $py: installing with scripts/setup.sh"
  NCSREC_SKIP_BUILD=1 bash "$root/scripts/setup.sh"
  "$py" -c 'import h5py, numpy' || { echo "FAIL: $py cannot import h5py and numpy"; exit 1; }
fi

fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

cd "$work" || exit 1
"$ncsrec" gen --out gen --days 3 --rows-per-day 2000 --users 200 --items 100 >/dev/null || { echo "FAIL gen"; exit 1; }
eval_day=gen/content/day=2026-01-02

# config NAME: writes NAME.yaml from the model section on stdin.
config() {
  {
    cat <<'EOF'
run: {seed: 1, threads: 1}
data:
  train: ["gen/content/day=2026-01-01"]
  eval: ["gen/content/day=2026-01-02"]
model:
  embedding_dim: 4
  tables:
    user_id: {rows: 200}
    item_id: {rows: 100}
    ctx: {rows: 64, slots: [hour, device, position]}
    user_segment: {rows: 32}
    item_category: {rows: 64}
    item_tags: {rows: 256, pooling: mean}
  tasks:
    ctr: {label: click}
    cvr: {label: conversion, given: ctr}
EOF
    cat
    cat <<'EOF'
optimizer: {type: adam, lr: 0.01}
sparse_optimizer: {type: adagrad, lr: 0.05}
train: {batch_size: 128, epochs: 1}
EOF
  } >"$1.yaml"
}

# check NAME RUN_DIR [EXPORT_ARGS... --] [COMPARE_ARGS...]: export, predict, score, compare.
check() {
  local name="$1" run="$2" export_args=() out
  shift 2
  while [[ $# -gt 0 && "$1" != "--" ]]; do export_args+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  if ! out="$("$ncsrec" export --run-dir "$run" --out "$name.h5" "${export_args[@]}" 2>&1)"; then
    fail "$name: export: $out"
    return
  fi
  echo "$out"
  if ! out="$("$ncsrec" predict --run-dir "$run" --data "$eval_day" --out "$name.csv" 2>&1)"; then
    fail "$name: predict: $out"
    return
  fi
  "$py" "$scorer" compare "$name.h5" "$name.csv" "$eval_day" "$@" || fail "$name: numpy scorer vs predict"
}

# train NAME: trains NAME.yaml into run folder NAME.
train() {
  local out
  out="$("$ncsrec" train --config "$1.yaml" --run-dir "$1" 2>&1)" || { fail "$1: train: $out"; return 1; }
}

# ncs_esmm: input width 8 slots x 4 + 4 dense + 8 x 8 dot products = 100.
"$py" "$scorer" make-masks masks.h5 --in 100 --sizes 16,8 --density ctr=0.15,cvr=0.6 || fail "make-masks"
config ncs_esmm <<'EOF'
  type: ncs
  esmm: true
  interaction: dot
  shared: [16, 8]
  tower: [4]
  masks: {file: masks.h5}
EOF
if train ncs_esmm; then
  check ncs_esmm ncs_esmm -- --require-format csr --require-format dense
  check ncs_esmm_dense ncs_esmm --csr-below 0 -- --require-format dense
  check ncs_esmm_csr ncs_esmm --csr-below 1.01 -- --require-format csr
fi

config ncs_learned <<'EOF'
  type: ncs
  shared: [16, 8]
  tower: [8]
  layers: {norm: batch}
  masks: {find: learned, final_density: 0.25, layers: [0]}
EOF
train ncs_learned && check ncs_learned ncs_learned -- --require-format csr

config ncs_mmoe <<'EOF'
  type: mmoe
  esmm: true
  experts: {count: 2, sizes: [8, 6], masked: true}
  masks: {find: learned, final_density: 0.4}
  tower: [4]
EOF
train ncs_mmoe && check ncs_mmoe ncs_mmoe -- --require-format dense

config mmoe <<'EOF'
  type: mmoe
  experts: {count: 3, sizes: [8]}
  tower: [8]
  layers: {norm: batch, dropout: 0.1}
  loss_weighting: uncertainty
EOF
train mmoe && check mmoe mmoe

config ple <<'EOF'
  type: ple
  interaction: dot
  experts: {levels: 2, task_experts: 1, shared_experts: 2, sizes: [8]}
  tower: [4]
  layers: {norm: batch}
  apg: {in: [experts], rank: 2, hyper_hidden: [4]}
EOF
train ple && check ple ple

config apg <<'EOF'
  type: shared_bottom
  bottom: [16]
  tower: [8, 4]
  layers: {norm: layer}
  apg: {in: [towers], rank: 3, overparam: 5, hyper_hidden: [6], condition: [user_id, item_id]}
EOF
train apg && check apg apg

config single_task <<'EOF'
  type: single_task
  tower: [4]
EOF
train single_task && check single_task single_task

# ESMM trained on clicks' negatives downsampled to a quarter, logit correction: pCTR (and so
# pCTCVR) carry model/tasks/ctr.logit_offset = log 0.25, which the scorer must add.
config esmm_sampled <<'EOF'
  type: esmm
  tower: [8]
EOF
if out="$("$ncsrec" train --config esmm_sampled.yaml --run-dir esmm_sampled \
  --set data.negative_sampling.label=click --set data.negative_sampling.rate=0.25 2>&1)"; then
  check esmm_sampled esmm_sampled
  "$py" -c 'import h5py, math, sys
t = h5py.File(sys.argv[1])["model/tasks"]
sys.exit(int(abs(t["ctr"].attrs["logit_offset"] - math.log(0.25)) > 1e-12 or t["cvr"].attrs["logit_offset"] != 0))' \
    esmm_sampled.h5 || fail "esmm_sampled.h5: logit_offset is not log 0.25 for ctr and 0 for cvr"
else
  fail "esmm_sampled: train: $out"
fi

# E-CDCTR history features: two snapshots of a tiny TPM (exports of days 1 and 2), merged by
# `ncsrec history`, read with learned attention by an ESMM (and interacting with the slot
# embeddings in its dot products); the export folds the attention into
# one vector per id (history/), which the scorer adds to its input vector.
config tpm <<'EOF'
  type: esmm
  tower: [4]
EOF
if train tpm && "$ncsrec" train --config tpm.yaml --run-dir tpm2 --init-from tpm/checkpoints/final \
     --set 'data.train=["gen/content/day=2026-01-02"]' >/dev/null 2>&1; then
  for n in 1 2; do
    run=tpm; [[ $n == 2 ]] && run=tpm2
    mkdir -p "snap$n" && "$ncsrec" export --run-dir "$run" --out "snap$n/snapshot.h5" >/dev/null && touch "snap$n/_DONE"
  done
  if out="$("$ncsrec" history --snapshot snap2 --snapshot snap1 --tables user_id,item_id --out hist 2>&1)"; then
    config history <<'EOF'
  type: esmm
  tower: [8]
  interaction: dot
  history: {file: hist/features.h5, aggregate: attention, features: [user_id, item_id], interact: true}
EOF
    train history && check history history
    "$py" -c 'import h5py, sys
f = h5py.File(sys.argv[1])
sys.exit(int(sorted(f["history"]) != ["item_id", "user_id"] or "history.user_id.query" in f["dense"]))' history.h5 ||
      fail "history.h5: history/ tables missing or the query exported"
  else
    fail "history: $out"
  fi
else
  fail "tpm: training"
fi

# A checkpoint written by 2 ranks (row-wise tables: each rank file holds half the rows).
if command -v mpiexec >/dev/null; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  # shellcheck source=tests/mpi/local_env.sh
  source "$(dirname "${BASH_SOURCE[0]}")/../mpi/local_env.sh"
  if out="$(timeout 120 mpiexec -np 2 --oversubscribe "$ncsrec" train --config mmoe.yaml --run-dir mmoe_np2 2>&1)"; then
    ranks="$("$py" -c 'import h5py, sys; print(h5py.File(sys.argv[1])["meta"].attrs["world_size"])' \
      mmoe_np2/checkpoints/final/rank-0.h5)"
    [[ "$ranks" == 2 ]] || fail "mmoe_np2: the checkpoint was written by $ranks rank(s), not 2 (ncsrec without MPI?)"
    check mmoe_np2 mmoe_np2
    "$py" -c 'import h5py, sys; sys.exit(int(h5py.File(sys.argv[1])["meta"].attrs["world_size"] != 2))' mmoe_np2.h5 ||
      fail "mmoe_np2.h5: meta.world_size is not the source checkpoint's 2"
  else
    fail "mmoe_np2: 2-rank training: $out"
  fi
else
  echo "skip mmoe_np2: no mpiexec, the 2-rank checkpoint is not exported"
fi

# Hash tables over three days (ids admitted after 2 reads; 200 users in 150 rows, so the least
# recently seen are evicted; ttl_days 1, which the unit tests check): the scorer reads ids by key (zeros for ids without a row), and yesterday's
# full export + today's delta (--since yesterday's checkpoint) = today's full export.
config hash <<'EOF'
  type: esmm
  tower: [8]
EOF
sed -i 's/    user_id: {rows: 200}/    user_id: {capacity: 150, admit_after: 2, ttl_days: 1, evict_when_full: true}/; s/    item_id: {rows: 100}/    item_id: {capacity: 1000, ttl_days: 1}/' hash.yaml
day_run() {  # day_run N [ARGS...]: trains day N into hashN
  local n="$1" out
  shift
  out="$("$ncsrec" train --config hash.yaml --run-dir "hash$n" --day "2026-01-0$n" \
    --set "data.train=[\"gen/content/day=2026-01-0$n\"]" "$@" 2>&1)" || { fail "hash$n: train: $out"; return 1; }
}
if day_run 1 && day_run 2 --init-from hash1/checkpoints/final && day_run 3 --init-from hash2/checkpoints/final; then
  grep -q '"evicted_full": [1-9]' hash3/metrics.jsonl || fail "hash3: no row was evicted on day 3"
  check hash3 hash3
  "$ncsrec" export --run-dir hash2 --out hash2_full.h5 >/dev/null 2>&1 || fail "hash2: full export"
  "$ncsrec" export --run-dir hash3 --out hash3_full.h5 >/dev/null 2>&1 || fail "hash3: full export"
  if out="$("$ncsrec" export --run-dir hash3 --since hash2/checkpoints/final --out hash3_delta.h5 2>&1)"; then
    echo "$out"
    [[ "$out" =~ [1-9][0-9]*\ keys\ evicted ]] || fail "hash3: the delta evicts no key (the test means it to)"
    "$py" "$scorer" apply-delta hash2_full.h5 hash3_delta.h5 hash3_full.h5 || fail "hash: full + delta != full"
  else
    fail "hash3: delta export: $out"
  fi
  # A chain of days: day 1's full export + day 2's delta = day 2's full export.
  "$ncsrec" export --checkpoint hash1/checkpoints/final --out hash1_full.h5 >/dev/null 2>&1 || fail "hash1: full export"
  "$ncsrec" export --run-dir hash2 --since hash1/checkpoints/final --out hash2_delta.h5 >/dev/null 2>&1 ||
    fail "hash2: delta export"
  "$py" "$scorer" apply-delta hash1_full.h5 hash2_delta.h5 hash2_full.h5 || fail "hash: day 1 + delta != day 2"
  # Several checkpoints a day: day 4 (day 3's data again) saves a step checkpoint every 2 steps;
  # the delta from one of them to the day's final checkpoint (the rows updated after that step)
  # applies to the step checkpoint's full export.
  if out="$("$ncsrec" train --config hash.yaml --run-dir hash4 --day 2026-01-04 --init-from hash3/checkpoints/final \
    --set 'data.train=["gen/content/day=2026-01-03"]' --set train.checkpoint_every=2 --set train.keep_checkpoints=100 2>&1)"
  then
    mid="$(ls -d hash4/checkpoints/step-* | sort -t- -k2 -n | head -1)"
    [[ -d "$mid" ]] || fail "hash4: no step checkpoint"
    "$ncsrec" export --checkpoint "$mid" --out hash4_mid_full.h5 >/dev/null 2>&1 || fail "hash4: mid-day full export"
    "$ncsrec" export --run-dir hash4 --out hash4_full.h5 >/dev/null 2>&1 || fail "hash4: full export"
    "$ncsrec" export --run-dir hash4 --since "$mid" --out hash4_delta.h5 >/dev/null 2>&1 || fail "hash4: mid-day delta"
    "$py" "$scorer" apply-delta hash4_mid_full.h5 hash4_delta.h5 hash4_full.h5 ||
      fail "hash: $mid's full export + delta != day 4's final"
  else
    fail "hash4: train: $out"
  fi
fi

# refused ARGS...: the export must exit non-zero with a one-line message naming what is wrong
# ($want) and leave neither $target nor $target.tmp.
refused() {
  local want="$1" target="$2" rc=0 out
  shift 2
  out="$("$ncsrec" export "$@" 2>&1)" || rc=$?
  out="${out//$'\n'/ }"
  if [[ $rc -ne 0 && "$out" == *"error:"*"$want"* && ! -e "$target" && ! -e "$target.tmp" ]]; then
    echo "ok   export $* refused (exit $rc):$out"
  else
    fail "export $*: exit $rc, want non-zero, a message naming '$want' and no $target(.tmp): $out"
  fi
}
refused "no_such_run" missing.h5 --run-dir no_such_run --out missing.h5
refused "no_such_folder" no_such_folder/x.h5 --run-dir mmoe --out no_such_folder/x.h5
refused "--out" x.h5 --run-dir mmoe
# A delta against a checkpoint the exported run does not follow: its rows cannot be told apart.
[[ -d hash3 ]] && refused "export in full instead" back.h5 --run-dir hash2 --since hash3/checkpoints/final --out back.h5
# A failed export leaves the previous file as it was.
cp mmoe.h5 keep.h5
rc=0
"$ncsrec" export --checkpoint no_such_checkpoint --out keep.h5 >/dev/null 2>&1 || rc=$?
if [[ $rc -ne 0 ]] && cmp -s mmoe.h5 keep.h5 && [[ ! -e keep.h5.tmp ]]; then
  echo "ok   a failed export leaves the existing keep.h5 untouched"
else
  fail "a failed export (exit $rc) changed keep.h5 or left keep.h5.tmp"
fi
# A write that fails half way: a 16 KB file size limit (SIGXFSZ ignored: write returns EFBIG).
rc=0
out="$( (ulimit -f 16; trap '' XFSZ; "$ncsrec" export --run-dir ncs_esmm --out big.h5) 2>&1)" || rc=$?
if [[ $rc -ne 0 && "$out" == *"error:"* && ! -e big.h5 && ! -e big.h5.tmp ]]; then
  echo "ok   an export whose write fails half way exits $rc and leaves no big.h5 or big.h5.tmp:${out//$'\n'/ }"
else
  fail "export under a 16 KB file limit: exit $rc (want non-zero), files: $(ls big.h5* 2>/dev/null): $out"
fi
"$ncsrec" export --help | grep -q -- "--csr-below" || fail "export --help does not describe --csr-below"

echo "$fails check(s) failed in $((SECONDS - start)) s"
exit $((fails > 0))
