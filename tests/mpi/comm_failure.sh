#!/usr/bin/env bash
# Failure test of the MPI communicator's watchdog: runs comm_probe under mpirun, where rank 1
# stops (SIGSTOP) or dies (SIGKILL) before an all-reduce the other ranks enter. Passes when the
# job exits non-zero within BOUND seconds of rank 1's failure (the watchdog's timeout, 3 s here,
# plus its listening for the other ranks and mpirun's teardown), when (for a stopped rank) the
# output names the collective and rank 1, and when no probe process is left behind. `ok` is the
# control: the same job without a failure must exit 0 (within BOUND seconds of its start) and
# leave nothing behind, so a probe that fails by itself cannot pass the failure cases.
# usage: comm_failure.sh MPIEXEC PROBE stop|kill|ok NP BOUND_SECONDS
# Registered in ctest wrapped in `timeout 90`; the traps kill what this script started.
set -u
mpiexec=$1 probe=$2 mode=$3 np=$4 bound=$5
work=$(mktemp -d)
mpirun_pid=

# A probe process still running (not merely a zombie waiting for its parent to reap it).
probe_running() {
  local pid=$1 state
  [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$probe")" ]] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

cleanup() {
  if [[ -n $mpirun_pid ]]; then kill -KILL "$mpirun_pid" 2>/dev/null; fi
  for file in "$work"/rank*.pid; do
    [[ -e $file ]] || continue
    pid=$(<"$file")
    if probe_running "$pid"; then kill -KILL "$pid" 2>/dev/null; kill -CONT "$pid" 2>/dev/null; fi
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "comm_failure.sh: interrupted"; exit 124' TERM INT

export NCSREC_PROBE_PID_DIR=$work NCSREC_COMM_TIMEOUT=3
start_ms=$(date +%s%3N)
"$mpiexec" -np "$np" --oversubscribe -x NCSREC_PROBE_PID_DIR -x NCSREC_COMM_TIMEOUT "$probe" "$mode" >"$work/out" 2>&1 &
mpirun_pid=$!
wait "$mpirun_pid"
rc=$?
mpirun_pid=
end_ms=$(date +%s%3N)
elapsed_ms=$((end_ms - start_ms))
echo "---- mpirun output (exit code $rc after ${elapsed_ms} ms) ----"
cat "$work/out"
echo "----"

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
if [[ $mode == ok ]]; then
  [[ $rc -eq 0 ]] || fail "mpirun exited $rc; the control run has no failure and must exit 0"
  ((elapsed_ms <= bound * 1000)) || fail "the job took ${elapsed_ms} ms; expected at most ${bound} s"
  [[ ! -e $work/failed_at_ms ]] || fail "the control run's rank 1 failed"
else
  [[ $rc -ne 0 ]] || fail "mpirun exited 0; expected the job to fail"
  if [[ -s $work/failed_at_ms ]]; then
    after_ms=$((end_ms - $(<"$work/failed_at_ms")))
    echo "the job ended ${after_ms} ms after rank 1's failure"
    ((after_ms <= bound * 1000)) || fail "the job ended ${after_ms} ms after rank 1's failure; expected at most ${bound} s"
  else
    fail "rank 1 did not record when it failed"
  fi
fi
if [[ $mode == stop ]]; then
  grep -q "all_reduce_sum (collective #" "$work/out" || fail "the output does not name the collective (all_reduce_sum)"
  grep -q "no answer from rank 1 " "$work/out" || fail "the output does not name the stopped rank 1"
fi
# mpirun has ended the job: no rank may be left, stopped or not (give signals a moment).
ls "$work"/rank*.pid >/dev/null 2>&1 || fail "no rank wrote its process id"
for _ in $(seq 50); do
  left=()
  for file in "$work"/rank*.pid; do
    [[ -e $file ]] || continue
    pid=$(<"$file")
    if probe_running "$pid"; then left+=("$pid"); fi
  done
  ((${#left[@]} == 0)) && break
  sleep 0.1
done
((${#left[@]} == 0)) || fail "probe processes left behind: ${left[*]} (killed now)"
((failures == 0)) && echo "PASS: $mode: exit code $rc after ${elapsed_ms} ms"
exit $((failures > 0))
