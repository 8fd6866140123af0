#!/usr/bin/env bash
# Preemption and `train --resume` of a 2-rank job under mpirun (CTest resume.mpi.np2).
#   1. The tiny config of tests/e2e/preempt.sh on 2 ranks, uninterrupted: the reference.
#   2. The same, with SIGUSR1 sent to mpirun as soon as the first checkpoints/step-<N> exists:
#      OpenMPI's mpirun passes SIGUSR1 (and SIGUSR2) on to every rank; both ranks stop at the
#      same step and exit 75, and mpirun exits 75 too (it reports the first non-zero exit
#      status of a rank). step-<N> holds both ranks' files; no final, no summary.json.
#   3. Resumed on 2 ranks: exit 0, all the configured steps, resumed_from_step == N, the
#      reference's eval metrics (every digit summary.json keeps).
#   4. The same checkpoint resumed on 1 rank (no mpirun): works, because a 2-rank data
#      position is a multiple of 2 x batch, hence of the 1-rank global batch. Steps after the
#      resume are 1-rank steps (half the samples each); max_steps still counts steps.
#   5. The other way round is refused: a 1-rank run's final checkpoint at step 333 (data
#      position 33 x 50 = 1650 of its epoch) resumed on 2 ranks (global batch 100) exits
#      non-zero with a message naming the position and the global batch.
# (SIGTERM to mpirun is no way to preempt: mpirun ends the job itself, SIGTERM to the ranks a
# second later and SIGKILL a second after that, and exits 1.)
#
# usage: preempt_resume.sh MPIEXEC NCSREC_BINARY
set -uo pipefail  # no -e: a failed check is counted, not fatal
mpiexec="$1"
ncsrec="$2"
work="$(mktemp -d)"
mpirun_pid=""
# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
  if [[ -n "$mpirun_pid" ]]; then
    # mpirun ends its ranks on SIGTERM (within about 2 s); KILL if it does not.
    kill -TERM "$mpirun_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$mpirun_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$mpirun_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "preempt_resume.sh: interrupted"; exit 124' TERM INT
cd "$work" || exit 1
# shellcheck source=tests/mpi/local_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/local_env.sh"
mpi=("$mpiexec" -np 2 --oversubscribe -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS)

steps=6000
# shellcheck source=tests/preempt_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../preempt_lib.sh"
preempt_setup "$ncsrec" "$work" "$steps" 200 || exit 1
# summary_checks RUN REF STEPS RESUMED_FROM WORLD [same]: summary.json of RUN; `same`: its eval
# metrics equal REF's.
summary_checks() {
  python3 - "$@" <<'PY'
import json, sys
run, ref, steps, resumed, world = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
same = len(sys.argv) > 6 and sys.argv[6] == "same"
s = json.load(open(f"{run}/summary.json"))
bad = []
def check(cond, what):
    print(("ok   " if cond else "FAIL ") + f"{run}: " + what)
    if not cond: bad.append(what)
check(s["steps"] == steps, f"summary.json steps {s['steps']} == {steps}")
check(s["resumed_from_step"] == resumed, f"summary.json resumed_from_step {s['resumed_from_step']} == {resumed}")
check(s["world_size"] == world, f"summary.json world_size {s['world_size']} == {world}")
if same:
    r = json.load(open(f"{ref}/summary.json"))
    for task in ("ctr", "cvr", "ctcvr"):
        for key in ("auc", "logloss"):
            a, b = s["eval"][task][key], r["eval"][task][key]
            check(a == b, f"eval {task} {key} {a!r} == uninterrupted run's {b!r}")
sys.exit(1 if bad else 0)
PY
}

# ---- 1. the reference ------------------------------------------------------------------------
t0=$SECONDS
rc="$(run_status ref.txt "${mpi[@]}" "$ncsrec" train --config tiny.yaml --run-dir ref)"
[[ $rc -eq 0 ]] || { cat ref.txt; echo "FAIL the uninterrupted 2-rank run exited $rc"; exit 1; }
echo "reference 2-rank run: $((SECONDS - t0)) s"

# ---- 2. SIGUSR1 to mpirun ----------------------------------------------------------------------
"${mpi[@]}" "$ncsrec" train --config tiny.yaml --run-dir run >stop.txt 2>&1 &
mpirun_pid=$!
first="$(wait_for_step_checkpoint run 30 "$mpirun_pid")"
[[ -n "$first" ]] || { cat stop.txt; echo "FAIL no checkpoints/step-<N> appeared within 30 s"; exit 1; }
kill -USR1 "$mpirun_pid"
rc=0
wait "$mpirun_pid" || rc=$?
mpirun_pid=""
cat stop.txt
[[ $rc -eq 75 ]]
check $? "SIGUSR1 to mpirun after $first: mpirun exit status 75 (got $rc)"
n="$(grep -Eo 'preempted at step [0-9]+' stop.txt | grep -Eo '[0-9]+$' || true)"
[[ -n "$n" ]] && ((n > 0 && n < steps))
check $? "rank 0 names the step it stopped at (N=${n:-none})"
[[ "$(grep -c 'Exit code: *75' stop.txt)" -ge 1 ]]
check $? "mpirun reports a rank's exit code 75"
[[ -f "run/checkpoints/step-$n/manifest" && -f "run/checkpoints/step-$n/rank-0.h5" &&
   -f "run/checkpoints/step-$n/rank-1.h5" ]]
check $? "checkpoints/step-$n holds the manifest and both ranks' files"
[[ ! -e run/checkpoints/final && ! -e run/summary.json ]]
check $? "no checkpoints/final and no summary.json"
grep -q "\"event\": \"preempted\", \"step\": $n," run/metrics.jsonl
check $? "metrics.jsonl has the preempted event at step $n"
cp -r run run_on_1

# ---- 3. resumed on 2 ranks ---------------------------------------------------------------------
t0=$SECONDS
rc="$(run_status resume2.txt "${mpi[@]}" "$ncsrec" train --resume --run-dir run)"
echo "resume on 2 ranks: $((SECONDS - t0)) s"
[[ $rc -eq 0 ]]
check $? "--resume on 2 ranks: exit status 0 (got $rc)"
((rc == 0)) || cat resume2.txt
grep -q "resume: run/checkpoints/step-$n (step $n, .* written by 2 ranks)" resume2.txt
check $? "--resume on 2 ranks started from checkpoints/step-$n"
[[ -f run/checkpoints/final/manifest ]]
check $? "checkpoints/final exists"
summary_checks run ref "$steps" "$n" 2 same || fails=$((fails + 1))

# ---- 4. the 2-rank checkpoint resumed on 1 rank ------------------------------------------------
t0=$SECONDS
rc="$(run_status resume1.txt "$ncsrec" train --resume --run-dir run_on_1)"
echo "resume on 1 rank: $((SECONDS - t0)) s"
[[ $rc -eq 0 ]]
check $? "the 2-rank checkpoint resumed on 1 rank: exit status 0 (got $rc)"
((rc == 0)) || cat resume1.txt
grep -q "resume: run_on_1/checkpoints/step-$n (step $n, .* written by 2 ranks)" resume1.txt
check $? "--resume on 1 rank started from the 2-rank checkpoints/step-$n"
[[ -f run_on_1/checkpoints/final/manifest ]]
check $? "checkpoints/final exists"
summary_checks run_on_1 ref "$steps" "$n" 1 || fails=$((fails + 1))

# ---- 5. 1 rank -> 2 ranks at a position that 2 x batch does not divide -------------------------
"$ncsrec" train --config tiny.yaml --run-dir one --set train.max_steps=333 >one.txt 2>&1 ||
  { cat one.txt; echo "FAIL the 333-step 1-rank run failed"; exit 1; }
before="$(ls -l one/checkpoints)"
rc="$(run_status one_on_2.txt "${mpi[@]}" "$ncsrec" train --resume --run-dir one --set train.max_steps=400)"
[[ $rc -ne 0 ]] &&
  grep -q "data position 1650 of epoch 3, which is not a multiple of the global batch 100" one_on_2.txt
check $? "a 1-rank checkpoint at data position 1650 resumed on 2 ranks: refused (exit $rc) naming position and global batch"
((rc != 0)) || cat one_on_2.txt
[[ "$(ls -l one/checkpoints)" == "$before" ]]
check $? "the refused resume left the checkpoints alone"

((fails == 0)) && echo "all checks passed" || echo "$fails failed"
exit $((fails > 0))
