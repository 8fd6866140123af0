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
