#!/usr/bin/env bash
# End to end: preemption and `train --resume` on one rank. A tiny config (thousands of small
# steps, a few seconds of training, checkpoints every 200 steps) is trained once without
# interruption as the reference, and once with SIGTERM sent as soon as the first
# checkpoints/step-<N> exists. The stopped run must exit 75 with checkpoints/step-<N> (N the
# step it names), no checkpoints/final, no summary.json and a "preempted" line in
# metrics.jsonl; `--resume` must finish it: exit 0, checkpoints/final, summary.json with all the
# configured steps and resumed_from_step == N, and the same eval metrics as the reference
# (every digit summary.json keeps). Misuse: --resume with a --set of a key that may not change
# exits 2 naming the key and leaves the run alone; --resume of a folder without checkpoints
# (or without config.yaml) fails naming the folder.
set -uo pipefail  # no -e: a failed check is counted, not fatal
ncsrec="$1"
work="$(mktemp -d)"
train_pid=""
# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
  if [[ -n "$train_pid" ]]; then kill -KILL "$train_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work" || exit 1
export OMP_NUM_THREADS=1

steps=10000
# shellcheck source=tests/preempt_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../preempt_lib.sh"
preempt_setup "$ncsrec" "$work" "$steps" 200 || exit 1

# ---- the reference: no interruption --------------------------------------------------------
t0=$SECONDS
"$ncsrec" train --config tiny.yaml --run-dir ref >ref.txt 2>&1 || { cat ref.txt; exit 1; }
echo "reference run: $((SECONDS - t0)) s"

# ---- preempted by SIGTERM once the first periodic checkpoint exists ------------------------
"$ncsrec" train --config tiny.yaml --run-dir run >stop.txt 2>&1 &
train_pid=$!
first="$(wait_for_step_checkpoint run 30 "$train_pid")"
[[ -n "$first" ]] || { cat stop.txt; echo "FAIL no checkpoints/step-<N> appeared within 30 s"; exit 1; }
kill -TERM "$train_pid"
rc=0
wait "$train_pid" || rc=$?
train_pid=""
cat stop.txt
[[ $rc -eq 75 ]]
check $? "SIGTERM after $first: exit status 75 (got $rc)"
n="$(grep -Eo 'preempted at step [0-9]+' stop.txt | grep -Eo '[0-9]+$' || true)"
[[ -n "$n" ]] && ((n > 0 && n < steps))
check $? "the message names the step it stopped at (N=${n:-none})"
grep -q "continue with: ncsrec train --resume --run-dir run" stop.txt
check $? "the message says how to continue"
[[ -f "run/checkpoints/step-$n/manifest" ]]
check $? "checkpoints/step-$n exists"
[[ ! -e run/checkpoints/final && ! -e run/summary.json ]]
check $? "no checkpoints/final and no summary.json"
grep -q "\"event\": \"preempted\", \"step\": $n," run/metrics.jsonl
check $? "metrics.jsonl has the preempted event at step $n"

# ---- misuse ---------------------------------------------------------------------------------
before="$(ls run/checkpoints)"
rc="$(run_status bad_set.txt "$ncsrec" train --resume --run-dir run --set 'model.tower=[8]')"
cat bad_set.txt
[[ $rc -eq 2 ]] && grep -q -- "--set model.tower: a resumed run keeps its config" bad_set.txt
check $? "--resume --set model.tower=[8]: exit 2 naming the key (got $rc)"
[[ "$(ls run/checkpoints)" == "$before" && ! -e run/summary.json ]]
check $? "the refused --resume left the run folder alone"
rc="$(run_status with_config.txt "$ncsrec" train --resume --run-dir run --config tiny.yaml)"
[[ $rc -eq 2 ]] && grep -q "drop --config" with_config.txt
check $? "--resume with --config: exit 2, says to drop --config (got $rc)"

mkdir no_checkpoints
cp run/config.yaml no_checkpoints/
rc="$(run_status no_ckpt.txt "$ncsrec" train --resume --run-dir no_checkpoints)"
cat no_ckpt.txt
[[ $rc -ne 0 ]] && grep -q "no_checkpoints/checkpoints holds no checkpoint" no_ckpt.txt
check $? "--resume of a folder without checkpoints: non-zero exit ($rc) naming the folder"
rc="$(run_status not_run.txt "$ncsrec" train --resume --run-dir gen)"
cat not_run.txt
[[ $rc -ne 0 ]] && grep -q "gen/config.yaml does not exist" not_run.txt
check $? "--resume of a folder that is no run: non-zero exit ($rc) naming the folder"

# ---- resume to the end ----------------------------------------------------------------------
t0=$SECONDS
rc="$(run_status resume.txt "$ncsrec" train --resume --run-dir run)"
cat resume.txt
echo "resumed run: $((SECONDS - t0)) s"
[[ $rc -eq 0 ]]
check $? "--resume: exit status 0 (got $rc)"
grep -q "resume: run/checkpoints/step-$n (step $n," resume.txt
check $? "--resume started from checkpoints/step-$n"
[[ -f run/checkpoints/final/manifest ]]
check $? "checkpoints/final exists"

python3 - "$steps" "$n" <<'PY' || fails=$((fails + 1))
import json, sys
steps, n = int(sys.argv[1]), int(sys.argv[2])
s = json.load(open("run/summary.json"))
ref = json.load(open("ref/summary.json"))
bad = []
def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond: bad.append(what)
check(s["steps"] == steps, f"summary.json steps {s['steps']} == {steps}")
check(s["resumed_from_step"] == n, f"summary.json resumed_from_step {s['resumed_from_step']} == {n}")
check(ref["resumed_from_step"] == -1, "the reference's resumed_from_step is -1")
for task in ("ctr", "cvr", "ctcvr"):
    for key in ("auc", "logloss", "mean_prediction"):
        a, b = s["eval"][task][key], ref["eval"][task][key]
        check(a == b, f"eval {task} {key} {a!r} == uninterrupted run's {b!r}")
events = [json.loads(l)["event"] for l in open("run/metrics.jsonl")]
check(events.count("preempted") == 1 and events.count("resume") == 1 and events[-1] == "eval",
      "metrics.jsonl: one preempted, one resume event, eval last")
sys.exit(1 if bad else 0)
PY

((fails == 0)) && echo "all checks passed" || echo "$fails failed"
exit $((fails > 0))
