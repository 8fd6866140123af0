#!/usr/bin/env bash
# scripts/daily.sh end to end on small generated data (4 days): incremental days chain their
# checkpoints (each day's init_from is the previous day's final checkpoint, steps continue,
# progressive validation recorded); a rerun skips the days done; a day whose data has no _DONE
# marker stops the run with the earlier days intact, and once it is ready the rerun finishes;
# the scratch and frozen modes run; bad arguments exit 2. With --export every incremental day
# writes its full export and, from the second day on, its delta, and day D-1's full export plus
# day D's delta is day D's full export. A preempted day stops the run with 75 and the rerun
# resumes it from its checkpoint.
set -euo pipefail
ncsrec="$1"
root="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
py=/usr/bin/python3
[[ -x $py ]] || py=python3

"$ncsrec" gen --out "$work/gen" --days 4 --rows-per-day 4000 --users 400 --items 200 >/dev/null
cat >"$work/daily.yaml" <<YAML
run: {seed: 1, threads: 1}
data:
  train: ["$work/gen/content/day={day}"]
  eval: ["$work/gen/content/day={next_day}"]
model:
  type: esmm
  embedding_dim: 4
  tables: {user_id: {rows: 400}, item_id: {rows: 200}}
  tower: [8]
  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}
train: {batch_size: 256}
YAML
export NCSREC="$ncsrec"
daily="$root/scripts/daily.sh"

# Day 3's data is "still being copied": the run stops there, days 1-2 done.
mv "$work/gen/content/day=2026-01-03/_DONE" "$work/held"
set +e
"$daily" --export --config "$work/daily.yaml" --first 2026-01-01 --last 2026-01-04 --out "$work/inc" >"$work/out1" 2>&1
rc=$?
set -e
cat "$work/out1"
((rc == 1)) || fail "a day not ready should stop the run with status 1, got $rc"
grep -q "day 2026-01-03 is not ready" "$work/out1" || fail "the stop does not name the day"
[[ -f $work/inc/2026-01-02/_DONE && -d $work/inc/2026-01-02/checkpoints/final ]] || fail "day 2 not kept"
[[ ! -e $work/inc/2026-01-03 ]] || fail "day 3 started without its data"

mv "$work/held" "$work/gen/content/day=2026-01-03/_DONE"
"$daily" --export --config "$work/daily.yaml" --first 2026-01-01 --last 2026-01-04 --out "$work/inc" >"$work/out2" 2>&1 ||
  { cat "$work/out2"; fail "the rerun failed"; }
cat "$work/out2"
grep -q "2026-01-01 already done" "$work/out2" || fail "the rerun retrained day 1"
grep -q "2026-01-02 already done" "$work/out2" || fail "the rerun retrained day 2"
grep -q "2026-01-05 not ready: no next-day evaluation for 2026-01-04" "$work/out2" || fail "the last day's missing next day is not said"

"$py" - "$work" <<'PY'
import json, sys, h5py
work = sys.argv[1]
lines = [json.loads(l) for l in open(f"{work}/inc/daily.jsonl")]
days = [l["day"] for l in lines]
assert days == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"], days
steps_per_day = lines[0]["steps"]
assert steps_per_day > 0
for i, l in enumerate(lines):
    assert l["steps"] == (i + 1) * steps_per_day, ("steps continue across days", l["steps"])
    assert l["first_step"] == i * steps_per_day, l
    assert (l["progressive"] is None) == (i == 0), ("progressive validation from day 2 on", l)
    # Day 2 ran while day 3 was not ready, and day 4 is the last: no next-day eval for them.
    assert (l["next_day"] is None) == (i in (1, 3)), ("next-day eval only where the next day was ready", l)
    meta = h5py.File(f"{work}/inc/{l['day']}/checkpoints/final/rank-0.h5", "r")["meta"].attrs
    day = meta["day"].decode() if isinstance(meta["day"], bytes) else str(meta["day"])
    frm = meta["init_from"].decode() if isinstance(meta["init_from"], bytes) else str(meta["init_from"])
    assert day == l["day"], (day, l["day"])
    want = "" if i == 0 else f"{work}/inc/{days[i - 1]}/checkpoints/final"
    assert frm == want, (frm, want)
    assert l["full_export_bytes"] > 0 and l["export_seconds"] >= 0, l
    assert ("delta_export_bytes" in l) == (i > 0), ("a delta from the second day on", l)
# Progressive validation of day D is day D-1's model on day D: the same as D-1's next-day eval.
for prev, cur in zip(lines, lines[1:]):
    if prev["next_day"] is None:
        continue
    a, b = prev["next_day"]["ctr"]["auc"], cur["progressive"]["ctr"]["auc"]
    assert abs(a - b) < 1e-9, ("yesterday's next-day AUC equals today's progressive AUC", a, b)
print("incremental: ok")
PY
for pair in "01 02" "02 03" "03 04"; do
  read -r a b <<<"$pair"
  "$py" "$root/tests/e2e/export_numpy.py" apply-delta "$work/inc/2026-01-$a/export/full.h5" \
    "$work/inc/2026-01-$b/export/delta.h5" "$work/inc/2026-01-$b/export/full.h5" ||
    fail "day $a's full export + day $b's delta != day $b's full export"
done

# A day whose training or export fails stops the run with that status, naming the last good
# checkpoint; the days before stay done, the failed day is not marked done, and the rerun
# retrains it. The failures come from a wrapper around the binary.
cat >"$work/failing" <<SH
#!/usr/bin/env bash
if [[ " \$* " == *" train "*"--day 2026-01-02 "* && -e "$work/fail_train" ]]; then echo "injected" >&2; exit 3; fi
if [[ \$1 == export && " \$* " == *"/2026-01-02 "* && -e "$work/fail_export" ]]; then echo "injected" >&2; exit 4; fi
exec "$ncsrec" "\$@"
SH
chmod +x "$work/failing"
for what in train export; do
  touch "$work/fail_$what"
  set +e
  NCSREC="$work/failing" "$daily" --export --config "$work/daily.yaml" --first 2026-01-01 --last 2026-01-02 \
    --out "$work/fail" >"$work/out_fail_$what" 2>&1
  rc=$?
  set -e
  rm "$work/fail_$what"
  want=3 verb=training
  [[ $what == export ]] && want=4 verb=exporting
  ((rc == want)) || { cat "$work/out_fail_$what"; fail "a failed $what should stop the run with its status $want, got $rc"; }
  grep -q "$verb day 2026-01-02 failed (exit $want); the last good checkpoint is $work/fail/2026-01-01/checkpoints/final" \
    "$work/out_fail_$what" || { cat "$work/out_fail_$what"; fail "the $what failure does not name the last good checkpoint"; }
  [[ -f $work/fail/2026-01-01/_DONE && ! -e $work/fail/2026-01-02/_DONE ]] || fail "after a failed $what: day 1 done, day 2 not"
done
"$daily" --export --config "$work/daily.yaml" --first 2026-01-01 --last 2026-01-02 --out "$work/fail" >"$work/out_fail_rerun" 2>&1 ||
  { cat "$work/out_fail_rerun"; fail "the rerun after the failures failed"; }
grep -q "2026-01-01 already done" "$work/out_fail_rerun" || fail "the rerun retrained day 1"
[[ -f $work/fail/2026-01-02/_DONE && -f $work/fail/2026-01-02/export/delta.h5 ]] || fail "the rerun did not finish day 2"

# Preemption: SIGUSR1 to daily.sh while day 1 trains reaches training, which saves a step
# checkpoint and exits 75; daily.sh stops with 75 and marks the day _PREEMPTED; the rerun
# resumes day 1 from that checkpoint (the same steps in all) and goes on to day 2.
long=(-- --set train.epochs=1000 --set train.max_steps=4000 --set train.checkpoint_every=100 --set train.batch_size=32)
"$daily" --config "$work/daily.yaml" --first 2026-01-01 --last 2026-01-02 --out "$work/pre" "${long[@]}" \
  >"$work/out_pre1" 2>&1 &
pid=$!
# shellcheck source=tests/preempt_lib.sh
source "$root/tests/preempt_lib.sh"
[[ -n "$(wait_for_step_checkpoint "$work/pre/2026-01-01" 30 "$pid")" ]] ||
  { kill "$pid"; fail "day 1 wrote no step checkpoint within 30 s"; }
kill -USR1 "$pid"
rc=0
wait "$pid" || rc=$?
((rc == 75)) || { cat "$work/out_pre1"; fail "a preempted day should stop daily.sh with 75, got $rc"; }
[[ -f $work/pre/2026-01-01/_PREEMPTED && ! -e $work/pre/2026-01-01/_DONE ]] || fail "the preempted day is not marked so"
grep -q "rerun to resume it" "$work/out_pre1" || { cat "$work/out_pre1"; fail "the stop does not say how to go on"; }
"$daily" --config "$work/daily.yaml" --first 2026-01-01 --last 2026-01-02 --out "$work/pre" "${long[@]}" \
  >"$work/out_pre2" 2>&1 || { cat "$work/out_pre2"; fail "the rerun after the preemption failed"; }
grep -q "resuming the preempted run" "$work/out_pre2" || { cat "$work/out_pre2"; fail "the rerun did not resume day 1"; }
[[ -f $work/pre/2026-01-01/_DONE && ! -e $work/pre/2026-01-01/_PREEMPTED && -f $work/pre/2026-01-02/_DONE ]] ||
  fail "after the rerun both days are done"
"$py" - "$work/pre" <<'PY'
import json, sys
d = sys.argv[1]
s1 = json.load(open(f"{d}/2026-01-01/summary.json"))
assert s1["resumed_from_step"] > 0, ("day 1 resumed from its step checkpoint", s1["resumed_from_step"])
assert s1["steps"] == 4000, ("the resumed day ran all its steps", s1["steps"])
s2 = json.load(open(f"{d}/2026-01-02/summary.json"))
assert s2["first_step"] == 4000, ("day 2 started from day 1's final checkpoint", s2["first_step"])
print("preemption: ok, day 1 resumed from step", s1["resumed_from_step"])
PY

for mode in scratch frozen; do
  "$daily" --mode "$mode" --config "$work/daily.yaml" --first 2026-01-01 --last 2026-01-03 --out "$work/$mode" \
    >"$work/out_$mode" 2>&1 || { cat "$work/out_$mode"; fail "--mode $mode failed"; }
done
"$py" - "$work" <<'PY'
import json, sys
work = sys.argv[1]
scratch = [json.loads(l) for l in open(f"{work}/scratch/daily.jsonl")]
frozen = [json.loads(l) for l in open(f"{work}/frozen/daily.jsonl")]
assert [l["first_step"] for l in scratch] == [0, 0, 0], scratch
assert all(l["progressive"] is None for l in scratch)
assert "steps" in frozen[0] and "steps" not in frozen[1], frozen
assert all(l["next_day"]["ctr"]["count"] == 4000 for l in frozen), frozen
# Day 1 is the same fresh run in both modes: the same next-day AUC, to the last digit.
assert frozen[0]["next_day"]["ctr"]["auc"] == scratch[0]["next_day"]["ctr"]["auc"], (frozen[0], scratch[0])
print("scratch, frozen: ok")
PY

set +e
"$daily" --config "$work/daily.yaml" --first 2026-01-03 --last 2026-01-01 --out "$work/bad" >/dev/null 2>&1
[[ $? -eq 2 ]] || fail "--first after --last should exit 2"
"$daily" --config "$work/daily.yaml" --first 2026-13-01 --last 2026-01-01 --out "$work/bad" >/dev/null 2>&1
[[ $? -eq 2 ]] || fail "a bad date should exit 2"
set -e
echo "daily.sh: all checks passed"
