#!/usr/bin/env bash
# Set up if needed, build, and run the whole CTest suite (unit, e2e; gpu tests skip without a GPU).
# Extra arguments go to ctest (e.g. scripts/test.sh -L unit).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
"$root/scripts/setup.sh"
build_dir="${NCSREC_BUILD_DIR:-$root/build}"
cd "$build_dir"
ctest --output-on-failure -j "$(nproc)" "$@"
