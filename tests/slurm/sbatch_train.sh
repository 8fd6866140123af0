#!/usr/bin/env bash
# CTest slurm.sbatch_train: cluster/ncsrec.sbatch on a real (throwaway, single-node) Slurm.
# Starts the cluster of tests/slurm/slurm_cluster.sh, submits the batch script with
# `sbatch --wait` for 2 CPU ranks on the quickstart config (small generated data, a few steps)
# and checks the job: state COMPLETED with exit code 0, run-dir/summary.json written, and its
# "world_size" equal to 2, i.e. the two ranks trained as one data-parallel job.
#
#   bash tests/slurm/sbatch_train.sh NCSREC_BINARY REPO_ROOT
#
# Exit 77 (CTest: skipped) where Slurm cannot be had: not root, or slurm-wlm/munge missing and
# apt-get unable to install them. Every step that could block runs under `timeout`; the cluster
# is stopped on every exit. NCSREC_KEEP_SCRATCH=1 keeps the scratch folder (logs, run folder).
set -uo pipefail

ncsrec="${1:?usage: sbatch_train.sh NCSREC_BINARY REPO_ROOT}"
root="${2:?usage: sbatch_train.sh NCSREC_BINARY REPO_ROOT}"
ranks=2
steps=20
start_s=$SECONDS

# shellcheck source=tests/slurm/slurm_test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_test_lib.sh"

require_slurm sbatch_train
[[ -x "$ncsrec" ]] || fail "no ncsrec binary at $ncsrec"

# ---- scratch, cluster, cleanup -------------------------------------------------------------
slurm_scratch
job_id=""
sbatch_pid=""

# shellcheck disable=SC2317  # called from the EXIT trap
show_failure_details() {
  echo "---- job output ($work/job.out) ----"
  if [[ -f "$work/job.out" ]]; then cat "$work/job.out"; else echo "(none)"; fi
  if [[ -n "$job_id" && -f "$cluster/slurm.conf" ]]; then
    echo "---- scontrol show job $job_id ----"
    SLURM_CONF="$cluster/slurm.conf" timeout 10 scontrol show job "$job_id"
  fi
  local f
  for f in "$cluster"/log/*.log; do
    [[ -f "$f" ]] || continue
    echo "---- ${f#"$work"/} (last 30 lines) ----"
    tail -n 30 "$f"
  done
}

# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n "$sbatch_pid" ]] && kill -TERM "$sbatch_pid" 2>/dev/null
  ((rc == 0 || rc == 77)) || show_failure_details
  if ! timeout 60 bash "$root/tests/slurm/slurm_cluster.sh" stop "$cluster"; then
    echo "FAIL: the test cluster did not stop cleanly"
    ((rc == 0)) && rc=1
  fi
  if [[ "${NCSREC_KEEP_SCRATCH:-0}" == 1 ]]; then
    echo "sbatch_train: scratch kept at $work"
  else
    rm -rf "$work"
  fi
  echo "sbatch_train: $((SECONDS - start_s)) s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "sbatch_train: generating a small data set"
timeout 60 "$ncsrec" gen --out "$work/gen" --days 2 --rows-per-day 20000 >"$work/gen.txt" 2>&1 ||
  { cat "$work/gen.txt"; fail "ncsrec gen failed"; }

echo "sbatch_train: starting a single-node Slurm under $cluster"
conf_line="$(timeout 60 bash "$root/tests/slurm/slurm_cluster.sh" start "$cluster")" ||
  fail "the test cluster did not start"
export SLURM_CONF="${conf_line#export SLURM_CONF=}"

# ---- the job -------------------------------------------------------------------------------
sbatch_args=(--wait --parsable --job-name=ncsrec-ci --chdir="$work" --output="$work/job.out"
             --nodes=1 --ntasks-per-node="$ranks" --gpus-per-task=0 --cpus-per-task=1 --time=5)
# Fewer cores than ranks: Slurm would keep the job pending forever without overcommit.
(($(nproc) < ranks)) && sbatch_args+=(--overcommit)

echo "sbatch_train: sbatch --wait cluster/ncsrec.sbatch ($ranks CPU ranks, $steps steps)"
job_start=$SECONDS
NCSREC="$ncsrec" NCSREC_CONFIG="$root/configs/quickstart.yaml" NCSREC_RUN_DIR="$work/run" \
  timeout 120 sbatch "${sbatch_args[@]}" "$root/cluster/ncsrec.sbatch" \
  --set train.max_steps="$steps" \
  --set "data.train=[\"$work/gen/content/day=2026-01-01\"]" \
  --set "data.eval=[\"$work/gen/content/day=2026-01-02\"]" >"$work/sbatch.txt" 2>&1 &
# In the background so that an interrupt runs the cleanup at once (bash defers traps until a
# foreground child ends); the cleanup ends this waiter.
sbatch_pid=$!
wait "$sbatch_pid"
sbatch_rc=$?
sbatch_pid=""
job_id="$(grep -Eo '^[0-9]+' "$work/sbatch.txt" | head -n 1)"
echo "sbatch_train: sbatch exited $sbatch_rc after $((SECONDS - job_start)) s (job ${job_id:-?})"
[[ $sbatch_rc -eq 124 ]] && echo "sbatch_train: sbatch --wait timed out after 120 s"

# ---- checks --------------------------------------------------------------------------------
failures=0
check() {  # check CONDITION_STATUS WHAT
  if [[ "$1" -eq 0 ]]; then echo "ok   $2"; else echo "FAIL $2"; failures=$((failures + 1)); fi
}
[[ -n "$job_id" ]]
check $? "sbatch submitted job ${job_id:-? ($(head -c 200 "$work/sbatch.txt" | tr '\n' ' '))}"
job_info=""
[[ -n "$job_id" ]] && job_info="$(timeout 10 scontrol show job "$job_id" 2>&1)"
state="$(grep -Eo 'JobState=[A-Z_]+' <<<"$job_info" | cut -d= -f2)"
exit_code="$(grep -Eo ' ExitCode=[0-9]+:[0-9]+' <<<"$job_info" | cut -d= -f2)"
[[ $sbatch_rc -eq 0 && "$state" == COMPLETED && "$exit_code" == 0:0 ]]
check $? "job state COMPLETED with exit code 0:0 (state ${state:-?}, exit code ${exit_code:-?}, sbatch exit $sbatch_rc)"
summary="$work/run/summary.json"
[[ -s "$summary" ]]
check $? "run-dir/summary.json written"
world_size="$(grep -Eo '"world_size": *[0-9]+' "$summary" 2>/dev/null | grep -Eo '[0-9]+$')"
[[ "$world_size" == "$ranks" ]]
check $? "summary.json world_size is $ranks (found ${world_size:-none})"

((failures == 0)) || fail "$failures check(s) failed"
echo "sbatch_train: all checks passed"
exit 0
