#!/usr/bin/env bash
# CTest slurm.sbatch_preempt: preemption of cluster/ncsrec.sbatch on a real (throwaway,
# single-node) Slurm, with each launcher (srun, then mpirun). Submits the batch script for 2 CPU
# ranks on a tiny config, waits until the run has written its first checkpoints/step-<N>, then
# does what Slurm does near the time limit with --signal=B:USR1@T: `scancel --batch
# --signal=USR1`. The batch shell passes SIGUSR1 to the launcher, the ranks checkpoint and exit
# 75, the script requeues the job, and the requeued job resumes. Checks: the job restarted once
# and COMPLETED with exit code 0:0; the run folder has checkpoints/final; summary.json has all
# the configured steps, world_size 2 and resumed_from_step > 0; metrics.jsonl has the
# preempted and resume events; the job output shows both attempts (--open-mode=append).
#
#   bash tests/slurm/sbatch_preempt.sh NCSREC_BINARY REPO_ROOT
#
# The cluster is started with cred_expire=5 and sched_interval=1 so that a requeued job starts
# again after about 6 s (Slurm's defaults: 120 s, then the next 60 s scheduling pass).
# Exit 77 (CTest: skipped) where Slurm cannot be had: not root, or slurm-wlm/munge missing and
# apt-get unable to install them. Every step that could block runs under `timeout`; the cluster
# is stopped on every exit. NCSREC_KEEP_SCRATCH=1 keeps the scratch folder (logs, run folders).
set -uo pipefail

ncsrec="${1:?usage: sbatch_preempt.sh NCSREC_BINARY REPO_ROOT}"
root="${2:?usage: sbatch_preempt.sh NCSREC_BINARY REPO_ROOT}"
ranks=2
steps=6000
start_s=$SECONDS

# shellcheck source=tests/slurm/slurm_test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_test_lib.sh"

require_slurm sbatch_preempt
command -v mpirun >/dev/null 2>&1 || skip "no mpirun (OpenMPI) for the mpirun launcher"
[[ -x "$ncsrec" ]] || fail "no ncsrec binary at $ncsrec"

# ---- scratch, cluster, cleanup -------------------------------------------------------------
slurm_scratch
job_id=""
launcher=""

# shellcheck disable=SC2317  # called from the EXIT trap
show_failure_details() {
  [[ -n "$launcher" ]] || return 0
  echo "---- job output ($work/job-$launcher.out) ----"
  if [[ -f "$work/job-$launcher.out" ]]; then cat "$work/job-$launcher.out"; else echo "(none)"; fi
  if [[ -n "$job_id" && -f "$cluster/slurm.conf" ]]; then
    echo "---- scontrol show job $job_id ----"
    SLURM_CONF="$cluster/slurm.conf" timeout 10 scontrol show job "$job_id"
  fi
  local f
  for f in "$cluster"/log/slurmctld.log "$cluster"/log/slurmd.log; do
    [[ -f "$f" ]] || continue
    echo "---- ${f#"$work"/} (last 30 lines) ----"
    tail -n 30 "$f"
  done
}

# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  ((rc == 0 || rc == 77)) || show_failure_details
  if ! timeout 60 bash "$root/tests/slurm/slurm_cluster.sh" stop "$cluster"; then
    echo "FAIL: the test cluster did not stop cleanly"
    ((rc == 0)) && rc=1
  fi
  if [[ "${NCSREC_KEEP_SCRATCH:-0}" == 1 ]]; then
    echo "sbatch_preempt: scratch kept at $work"
  else
    rm -rf "$work"
  fi
  echo "sbatch_preempt: $((SECONDS - start_s)) s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "sbatch_preempt: generating a small data set"
# shellcheck source=tests/preempt_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../preempt_lib.sh"
preempt_setup "$ncsrec" "$work" "$steps" 100 || fail "ncsrec gen failed"

echo "sbatch_preempt: starting a single-node Slurm under $cluster"
conf_line="$(SLURM_TEST_CRED_EXPIRE=5 SLURM_TEST_SCHEDULER_PARAMETERS=sched_interval=1 \
  timeout 60 bash "$root/tests/slurm/slurm_cluster.sh" start "$cluster")" ||
  fail "the test cluster did not start"
export SLURM_CONF="${conf_line#export SLURM_CONF=}"

# json_field FILE KEY: a top-level number of summary.json.
json_field() { grep -Eo "\"$2\": *-?[0-9]+" "$1" 2>/dev/null | head -n 1 | grep -Eo -- '-?[0-9]+$'; }

# preempt_and_resume LAUNCHER: one job, preempted once, through to its end.
preempt_and_resume() {
  launcher="$1"
  local run="$work/run-$launcher" out="$work/job-$launcher.out" t0=$SECONDS info state restarts exit_code
  job_id=""
  local sbatch_args=(--parsable --job-name="ncsrec-$launcher" --chdir="$work" --output="$out"
                     --nodes=1 --ntasks-per-node="$ranks" --gpus-per-task=0 --cpus-per-task=1
                     --time=10)
  # Fewer cores than ranks: Slurm would keep the job pending forever without overcommit.
  (($(nproc) < ranks)) && sbatch_args+=(--overcommit)
  echo "sbatch_preempt: [$launcher] sbatch cluster/ncsrec.sbatch ($ranks CPU ranks, $steps steps)"
  job_id="$(NCSREC="$ncsrec" NCSREC_CONFIG="$work/tiny.yaml" NCSREC_RUN_DIR="$run" NCSREC_LAUNCHER="$launcher" \
    timeout 30 sbatch "${sbatch_args[@]}" "$root/cluster/ncsrec.sbatch" 2>"$work/sbatch.err")"
  [[ "$job_id" =~ ^[0-9]+$ ]] || { cat "$work/sbatch.err"; fail "[$launcher] sbatch did not submit the job"; }

  # The first periodic checkpoint: training runs, the ranks' signal handlers are in place.
  local first
  first="$(wait_for_step_checkpoint "$run" 30)"
  [[ -n "$first" ]] || fail "[$launcher] no checkpoints/step-<N> within 30 s"
  echo "sbatch_preempt: [$launcher] $first after $((SECONDS - t0)) s: scancel --batch --signal=USR1 $job_id"
  timeout 10 scancel --batch --signal=USR1 "$job_id" || fail "[$launcher] scancel --batch --signal=USR1 failed"

  # Requeued (Restarts=1), then to the end: at most 60 s.
  wait_for_job_end "$job_id" 60
  state=$job_state restarts=$job_restarts exit_code=$job_exit_code
  echo "sbatch_preempt: [$launcher] job $job_id ended after $((SECONDS - t0)) s"

  [[ "$state" == COMPLETED && "$exit_code" == 0:0 ]]
  check $? "[$launcher] job COMPLETED with exit code 0:0 (state ${state:-?}, exit code ${exit_code:-?})"
  [[ "$restarts" == 1 ]]
  check $? "[$launcher] job requeued once (Restarts=${restarts:-?})"
  grep -q "preempted at step [0-9]*: job $job_id requeued" "$out"
  check $? "[$launcher] the first attempt was preempted and requeued the job"
  grep -q "requeued (restart 1): resuming $run" "$out"
  check $? "[$launcher] the second attempt resumed the same run folder"
  [[ -f "$run/checkpoints/final/manifest" ]]
  check $? "[$launcher] checkpoints/final written"
  local summary="$run/summary.json" got_steps resumed world
  got_steps="$(json_field "$summary" steps)"
  resumed="$(json_field "$summary" resumed_from_step)"
  world="$(json_field "$summary" world_size)"
  [[ "$got_steps" == "$steps" ]]
  check $? "[$launcher] summary.json steps == $steps (found ${got_steps:-none})"
  [[ -n "$resumed" ]] && ((resumed > 0 && resumed < steps))
  check $? "[$launcher] summary.json resumed_from_step in (0, $steps) (found ${resumed:-none})"
  [[ "$world" == "$ranks" ]]
  check $? "[$launcher] summary.json world_size == $ranks (found ${world:-none})"
  grep -q "\"event\": \"preempted\", \"step\": $resumed," "$run/metrics.jsonl" &&
    grep -q "\"event\": \"resume\", \"step\": $resumed," "$run/metrics.jsonl"
  check $? "[$launcher] metrics.jsonl has the preempted and resume events at step ${resumed:-?}"
}

preempt_and_resume srun
preempt_and_resume mpirun

((fails == 0)) || fail "$fails check(s) failed"
echo "sbatch_preempt: all checks passed"
exit 0
