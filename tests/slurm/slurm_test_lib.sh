# Shared by the tests that submit to the throwaway Slurm of tests/slurm/slurm_cluster.sh
# (sbatch_train.sh, sbatch_preempt.sh); sourced, not run. They exit 77 (CTest: skipped) where
# Slurm cannot be had.
# shellcheck shell=bash

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

have_slurm() {
  local c
  for c in sbatch scontrol scancel sinfo slurmctld slurmd munged; do
    command -v "$c" >/dev/null 2>&1 || return 1
  done
}

# require_slurm TEST_NAME: root, and Slurm and munge (installed with apt-get if missing), or skip.
require_slurm() {
  export PATH="$PATH:/usr/sbin:/sbin"
  [[ $(id -u) -eq 0 ]] || skip "the test cluster runs slurmctld/slurmd as root; run as root"
  if ! have_slurm; then
    command -v apt-get >/dev/null 2>&1 || skip "Slurm is not installed and there is no apt-get"
    echo "$1: installing slurm-wlm munge"
    if ! { timeout 120 apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive timeout 180 apt-get install -y -qq --no-install-recommends \
             slurm-wlm munge >/dev/null; }; then
      skip "slurm-wlm and munge are not installed and apt-get could not install them (no network?)"
    fi
    have_slurm || skip "slurm-wlm/munge installed but their commands are missing"
  fi
}

# slurm_scratch: unsets an outer Slurm job's variables (they would point srun/sbatch at the
# wrong allocation or cluster) and sets `work` (a fresh scratch folder) and `cluster` in it.
slurm_scratch() {
  local v
  while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(SLURM|SBATCH|SRUN|SALLOC)_')
  # Short path: the munge socket's path must fit in a sockaddr_un (108 bytes).
  work="$(mktemp -d /tmp/ncsrec-slurm.XXXXXX)" || fail "mktemp failed"
  chmod 0755 "$work"  # munged wants every folder above its socket executable by all
  # shellcheck disable=SC2034  # used by the sourcing test
  cluster="$work/cluster"
}

# wait_for_job_end JOB_ID SECONDS: polls `scontrol show job` until the job has ended (or the
# time is up), then sets job_state, job_restarts and job_exit_code (e.g. COMPLETED, 1, 0:0).
wait_for_job_end() {
  local id="$1" polls=$(($2 * 5)) info="" i
  job_state=""
  for ((i = 0; i < polls; ++i)); do
    info="$(timeout 10 scontrol show job "$id" 2>&1)"
    job_state="$(grep -Eo 'JobState=[A-Z_]+' <<<"$info" | cut -d= -f2)"
    case "$job_state" in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE) break ;; esac
    sleep 0.2
  done
  # shellcheck disable=SC2034  # read by the sourcing test
  job_restarts="$(grep -Eo 'Restarts=[0-9]+' <<<"$info" | cut -d= -f2)"
  # shellcheck disable=SC2034
  job_exit_code="$(grep -Eo ' ExitCode=[0-9]+:[0-9]+' <<<"$info" | cut -d= -f2)"
}
