#!/usr/bin/env bash
# Installs what ncsrec needs (idempotent: a machine that has everything spends ~0.2 s here),
# then configures and builds into build/. Works with or without the CUDA toolkit: without
# nvcc the build is CPU-only. Environment knobs:
#   NCSREC_BUILD_DIR   build folder (default: build)
#   NCSREC_CUDA        AUTO | ON | OFF (default AUTO: CUDA when nvcc is found)
#   NCSREC_CUDA_ARCH   CUDA architectures (default 90)
#   NCSREC_SKIP_BUILD  1 = install dependencies only
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${NCSREC_BUILD_DIR:-$root/build}"

# slurm-wlm and munge: the single-node Slurm of tests/slurm (daemons are not started by install).
# python3-h5py, -numpy, -yaml: tests/e2e/checkpoint_h5py reads checkpoints with no ncsrec code
# (Debian installs them for /usr/bin/python3).
packages=(cmake ninja-build g++ pkg-config libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libyaml-cpp-dev
          libopenblas-dev libgtest-dev ccache zlib1g-dev slurm-wlm munge python3-h5py python3-numpy python3-yaml)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[[ "${NCSREC_SKIP_BUILD:-0}" == 1 ]] && exit 0

cuda_mode="${NCSREC_CUDA:-AUTO}"
if [[ "$cuda_mode" != OFF ]] && ! command -v nvcc >/dev/null && [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
  [[ "$cuda_mode" == ON ]] && { echo "setup: NCSREC_CUDA=ON but no CUDA toolkit found" >&2; exit 1; }
  echo "setup: no CUDA toolkit found; building the CPU backend only"
  cuda_mode=OFF
fi
cmake -S "$root" -B "$build_dir" -G Ninja -DNCSREC_CUDA="$cuda_mode" \
  -DCMAKE_CUDA_ARCHITECTURES="${NCSREC_CUDA_ARCH:-90}" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
