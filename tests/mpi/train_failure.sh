#!/usr/bin/env bash
# The watchdog in a real training job (CTest comm.mpi.train_stopped_rank, train_killed_rank):
# `ncsrec train` on 2 ranks under mpirun with a 3 s communication timeout; once training is
# under way (its first checkpoints/step-<N> exists), rank 1 is stopped (SIGSTOP) or killed
# (SIGKILL). Passes when the job exits non-zero within BOUND seconds of that, when (stopped)
# the output names a collective and rank 1 as the one that did not answer, and when no rank is
# left behind.
# usage: train_failure.sh MPIEXEC NCSREC_BINARY stop|kill BOUND_SECONDS
set -u
mpiexec=$1 ncsrec=$2 mode=$3 bound=$4
work=$(mktemp -d)
mpirun_pid=
ranks=()

cleanup() {
  if [[ -n $mpirun_pid ]]; then kill -KILL "$mpirun_pid" 2>/dev/null; fi
  local pid
  for pid in "${ranks[@]}"; do kill -KILL "$pid" 2>/dev/null; kill -CONT "$pid" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "train_failure.sh: interrupted"; exit 124' TERM INT

# shellcheck source=tests/mpi/local_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/local_env.sh"
# shellcheck source=tests/preempt_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../preempt_lib.sh"
preempt_setup "$ncsrec" "$work" 100000 200 || exit 1

# A rank's process: an ncsrec process whose environment names its rank (OpenMPI sets it).
rank_of() { tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | sed -n 's/^OMPI_COMM_WORLD_RANK=//p'; }
running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

export NCSREC_COMM_TIMEOUT=3
"$mpiexec" -np 2 --oversubscribe -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS -x NCSREC_COMM_TIMEOUT \
  "$ncsrec" train --config "$work/tiny.yaml" --run-dir "$work/run" >"$work/out" 2>&1 &
mpirun_pid=$!
[[ -n "$(wait_for_step_checkpoint "$work/run" 30 "$mpirun_pid")" ]] || { cat "$work/out"; echo "FAIL: no step checkpoint within 30 s"; exit 1; }
victim=
for pid in $(pgrep -f -- "--run-dir $work/run"); do
  [[ $(readlink -f "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$ncsrec")" ]] || continue
  ranks+=("$pid")
  [[ $(rank_of "$pid") == 1 ]] && victim=$pid
done
[[ -n $victim ]] || { echo "FAIL: rank 1's process not found among ${ranks[*]:-none}"; exit 1; }
signal=STOP
[[ $mode == kill ]] && signal=KILL
failed_at_ms=$(date +%s%3N)
kill -"$signal" "$victim"
wait "$mpirun_pid"
rc=$?
mpirun_pid=
after_ms=$(($(date +%s%3N) - failed_at_ms))
echo "---- mpirun output (exit code $rc, ${after_ms} ms after SIG$signal to rank 1) ----"
tail -n 30 "$work/out"
echo "----"

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
[[ $rc -ne 0 ]] || fail "mpirun exited 0; expected the job to fail"
((after_ms <= bound * 1000)) || fail "the job ended ${after_ms} ms after rank 1's SIG$signal; expected at most ${bound} s"
if [[ $mode == stop ]]; then
  grep -Eq "\(collective #[0-9]+, " "$work/out" || fail "the output does not name the collective it waited in"
  grep -q "no answer from rank 1 " "$work/out" || fail "the output does not name the stopped rank 1"
fi
for _ in $(seq 50); do
  left=()
  for pid in "${ranks[@]}"; do running "$pid" && left+=("$pid"); done
  ((${#left[@]} == 0)) && break
  sleep 0.1
done
((${#left[@]} == 0)) || fail "ranks left behind: ${left[*]} (killed now)"
((failures == 0)) && echo "PASS: $mode: exit code $rc ${after_ms} ms after the failure"
exit $((failures > 0))
