#!/usr/bin/env bash
# Checkpoints are readable without ncsrec: on tiny generated data, an ncs model finds its masks
# by IMP, a second run trains through those masks loaded from the mask file, and
# checkpoint_h5py.py (h5py + numpy only) checks that run's checkpoint against the layout of
# train/checkpoint.h and against `ncsrec inspect`: manifest sizes and CRC32C, meta, dense/ and
# optim/, bit-packed masks, embedding/. Then a truncated and a corrupted copy of the checkpoint
# must be refused by `ncsrec inspect` and `ncsrec eval --checkpoint` (exit 1, a message naming
# rank-0.h5) and by the Python manifest check.
#
# Needs Debian's python3-h5py, python3-numpy and python3-yaml (installed into /usr/bin/python3,
# not the pyenv python3 on PATH); scripts/setup.sh installs them. A missing package fails the
# test: it never skips.
set -euo pipefail
ncsrec="$1"
root="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
py=/usr/bin/python3
check_script="$root/tests/e2e/checkpoint_h5py.py"

if ! "$py" -c 'import h5py, numpy, yaml' 2>/dev/null; then
  echo "h5py/numpy/yaml missing for $py: installing with scripts/setup.sh"
  NCSREC_SKIP_BUILD=1 bash "$root/scripts/setup.sh"
  "$py" -c 'import h5py, numpy, yaml' || { echo "FAIL: $py cannot import h5py, numpy and yaml"; exit 1; }
fi

cd "$work"
"$ncsrec" gen --out gen --days 2 --rows-per-day 2000 --users 200 --items 100 >/dev/null
# shared [15, 7]: rows·cols of both masked layers (100·15, 15·7) is not a multiple of 8, so the
# packed masks end in padding bits.
cat > ncs.yaml <<'EOF'
run: {seed: 1, threads: 1}
data:
  train: ["gen/content/day=2026-01-01"]
  valid: ["gen/content/day=2026-01-02"]
  eval: ["gen/content/day=2026-01-02"]
model:
  type: ncs
  embedding_dim: 4
  interaction: dot
  tables:
    user_id: {rows: 200}
    item_id: {rows: 100}
    user_segment: {rows: 32}
    item_category: {rows: 64}
    hour: {rows: 24}
    device: {rows: 8}
    position: {rows: 16}
    item_tags: {rows: 256, pooling: mean}
  shared: [15, 7]
  tower: []
  masks: {find: imp, final_density: 0.3, rounds: 2}
  tasks:
    ctr: {label: click}
    cvr: {label: conversion, given: ctr}
optimizer: {type: adam, lr: 0.003}
sparse_optimizer: {type: adagrad, lr: 0.05}
train: {batch_size: 256, epochs: 1, schedule: alternating}
EOF
"$ncsrec" train --config ncs.yaml --run-dir imp >/dev/null 2>&1
"$ncsrec" train --config ncs.yaml --run-dir run --set model.masks.find=none \
  --set model.masks.file=imp/masks/chosen.h5 >/dev/null 2>&1
ckpt=run/checkpoints/final
"$ncsrec" inspect "$ckpt" > inspect.txt
"$ncsrec" inspect imp/masks/chosen.h5 > mask_inspect.txt
cat inspect.txt
"$py" "$check_script" check "$ckpt" --inspect inspect.txt --summary run/summary.json \
  --mask-file imp/masks/chosen.h5 --mask-inspect mask_inspect.txt

fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
# $1: a checkpoint copy whose rank-0.h5 is damaged; $2: what the message must also say.
refused() {
  local copy="$1" says="$2" rc out
  for cmd in "inspect $copy" "eval --checkpoint $copy --out $work/eval.json"; do
    rc=0
    out="$("$ncsrec" $cmd 2>&1)" || rc=$?
    out="${out//$'\n'/ }"
    if [[ $rc -eq 1 && "$out" == *"rank-0.h5"* && "$out" == *"$says"* ]]; then
      echo "ok   ncsrec ${cmd%% *} refuses $copy (exit 1): $out"
    else
      fail "ncsrec ${cmd%% *} on $copy: exit $rc (want 1), message naming rank-0.h5 and '$says': $out"
    fi
  done
  rc=0
  out="$("$py" "$check_script" manifest "$copy")" || rc=$?
  if [[ $rc -ne 0 && "$out" == *"rank-0.h5"* ]]; then
    echo "ok   the h5py-side manifest check refuses $copy too: $out"
  else
    fail "checkpoint_h5py.py manifest accepted $copy (exit $rc): $out"
  fi
}
cp -r "$ckpt" truncated
truncate -s $(($(stat -c %s truncated/rank-0.h5) / 2)) truncated/rank-0.h5
refused truncated "truncated"
# Same size, one byte flipped in the middle: only the CRC32C can tell.
cp -r "$ckpt" corrupt
"$py" -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0x40; open(p, "wb").write(b)' \
  corrupt/rank-0.h5
refused corrupt "CRC32C"

echo "$fails damaged-checkpoint check(s) failed"
exit $((fails > 0))
