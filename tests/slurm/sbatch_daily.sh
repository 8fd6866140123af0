#!/usr/bin/env bash
# CTest slurm.sbatch_daily: cluster/daily.sbatch on a real (throwaway, single-node) Slurm,
# preempted once. Submits the daily cycle over two small generated days with 2 CPU ranks per
# day (srun), waits until day 1 has written its first checkpoints/step-<N>, then does what Slurm
# does near the time limit with --signal=B:USR1@T: `scancel --batch --signal=USR1`. The batch
# shell passes SIGUSR1 to daily.sh, daily.sh to the day's training; the ranks checkpoint and exit
# 75, daily.sh exits 75, the script requeues the job, and the requeued job resumes day 1 from its
# checkpoint and trains day 2 from day 1's final checkpoint. Checks: the job restarted once and
# COMPLETED with exit code 0:0; both days are done; day 1's summary.json has resumed_from_step > 0,
# all its steps and world_size 2; day 2 started where day 1 ended; the output shows both attempts.
#
#   bash tests/slurm/sbatch_daily.sh NCSREC_BINARY REPO_ROOT
#
# Exit 77 (CTest: skipped) where Slurm cannot be had: not root, or slurm-wlm/munge missing and
# apt-get unable to install them. Every step that could block runs under `timeout`; the cluster
# is stopped on every exit. NCSREC_KEEP_SCRATCH=1 keeps the scratch folder.
set -uo pipefail

ncsrec="${1:?usage: sbatch_daily.sh NCSREC_BINARY REPO_ROOT}"
root="${2:?usage: sbatch_daily.sh NCSREC_BINARY REPO_ROOT}"
ranks=2
steps=3000
start_s=$SECONDS

# shellcheck source=tests/slurm/slurm_test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_test_lib.sh"

require_slurm sbatch_daily
[[ -x "$ncsrec" ]] || fail "no ncsrec binary at $ncsrec"

slurm_scratch
job_id=""

# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0 && rc != 77)); then
    echo "---- job output ($work/job.out) ----"
    if [[ -f "$work/job.out" ]]; then cat "$work/job.out"; else echo "(none)"; fi
    if [[ -n "$job_id" && -f "$cluster/slurm.conf" ]]; then
      echo "---- scontrol show job $job_id ----"
      SLURM_CONF="$cluster/slurm.conf" timeout 10 scontrol show job "$job_id"
    fi
  fi
  if ! timeout 60 bash "$root/tests/slurm/slurm_cluster.sh" stop "$cluster"; then
    echo "FAIL: the test cluster did not stop cleanly"
    ((rc == 0)) && rc=1
  fi
  if [[ "${NCSREC_KEEP_SCRATCH:-0}" == 1 ]]; then echo "sbatch_daily: scratch kept at $work"; else rm -rf "$work"; fi
  echo "sbatch_daily: $((SECONDS - start_s)) s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "sbatch_daily: generating two small days"
# shellcheck source=tests/preempt_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../preempt_lib.sh"
preempt_setup "$ncsrec" "$work" "$steps" 100 || fail "ncsrec gen failed"
# The daily cycle reads day-partitioned paths.
sed -e "s|day=2026-01-01\"\]|day={day}\"]|; s|day=2026-01-02\"\]|day={next_day}\"]|" "$work/tiny.yaml" >"$work/daily.yaml"
grep -q "day={day}" "$work/daily.yaml" && grep -q "day={next_day}" "$work/daily.yaml" || fail "daily.yaml: no {day} paths"

echo "sbatch_daily: starting a single-node Slurm under $cluster"
conf_line="$(SLURM_TEST_CRED_EXPIRE=5 SLURM_TEST_SCHEDULER_PARAMETERS=sched_interval=1 \
  timeout 60 bash "$root/tests/slurm/slurm_cluster.sh" start "$cluster")" ||
  fail "the test cluster did not start"
export SLURM_CONF="${conf_line#export SLURM_CONF=}"

json_field() { grep -Eo "\"$2\": *-?[0-9]+" "$1" 2>/dev/null | head -n 1 | grep -Eo -- '-?[0-9]+$'; }

out="$work/daily"
sbatch_args=(--parsable --job-name=ncsrec-daily --output="$work/job.out" --nodes=1 --ntasks-per-node="$ranks"
             --gpus-per-task=0 --cpus-per-task=1 --time=10)
(($(nproc) < ranks)) && sbatch_args+=(--overcommit)
t0=$SECONDS
# daily.sbatch runs scripts/daily.sh from the folder it was submitted from: the repository.
job_id="$(cd "$root" && NCSREC="$ncsrec" timeout 30 sbatch "${sbatch_args[@]}" cluster/daily.sbatch \
  --config "$work/daily.yaml" --first 2026-01-01 --last 2026-01-02 --out "$out" 2>"$work/sbatch.err")"
[[ "$job_id" =~ ^[0-9]+$ ]] || { cat "$work/sbatch.err"; fail "sbatch did not submit the job"; }
echo "sbatch_daily: job $job_id submitted (2 days, $ranks CPU ranks, $steps steps a day)"

first="$(wait_for_step_checkpoint "$out/2026-01-01" 45)"
[[ -n "$first" ]] || fail "day 1 wrote no checkpoints/step-<N> within 45 s"
echo "sbatch_daily: day 1 $first after $((SECONDS - t0)) s: scancel --batch --signal=USR1 $job_id"
timeout 10 scancel --batch --signal=USR1 "$job_id" || fail "scancel --batch --signal=USR1 failed"

wait_for_job_end "$job_id" 120
state=$job_state restarts=$job_restarts exit_code=$job_exit_code
echo "sbatch_daily: job $job_id ended after $((SECONDS - t0)) s"

[[ "$state" == COMPLETED && "$exit_code" == 0:0 ]]
check $? "job COMPLETED with exit code 0:0 (state ${state:-?}, exit code ${exit_code:-?})"
[[ "$restarts" == 1 ]]
check $? "job requeued once (Restarts=${restarts:-?})"
grep -q "daily.sbatch: preempted: job $job_id requeued" "$work/job.out"
check $? "the first attempt was preempted and requeued the job"
grep -q "daily.sh: 2026-01-01 (incremental): resuming the preempted run" "$work/job.out"
check $? "the second attempt resumed day 1"
[[ -f "$out/2026-01-01/_DONE" && -f "$out/2026-01-02/_DONE" && ! -e "$out/2026-01-01/_PREEMPTED" ]]
check $? "both days done, day 1 no longer marked preempted"
day1="$out/2026-01-01/summary.json" day2="$out/2026-01-02/summary.json"
resumed="$(json_field "$day1" resumed_from_step)"
[[ -n "$resumed" ]] && ((resumed > 0 && resumed < steps))
check $? "day 1 resumed_from_step in (0, $steps) (found ${resumed:-none})"
[[ "$(json_field "$day1" steps)" == "$steps" && "$(json_field "$day1" world_size)" == "$ranks" ]]
check $? "day 1 ran all $steps steps on $ranks ranks"
[[ "$(json_field "$day2" first_step)" == "$steps" ]]
check $? "day 2 started from day 1's final checkpoint (first_step $steps)"

((fails == 0)) || fail "$fails check(s) failed"
echo "sbatch_daily: all checks passed"
exit 0
