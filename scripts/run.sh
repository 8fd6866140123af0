#!/usr/bin/env bash
# The quick start: set up if needed, build, generate the built-in synthetic data (once), train
# the quickstart config, print the results table (per task AUC beside the Bayes-optimal AUC).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
"$root/scripts/setup.sh"
ncsrec="${NCSREC_BUILD_DIR:-$root/build}/bin/ncsrec"
cd "$root"
if [[ ! -f data/gen/generator.h5 ]]; then
  "$ncsrec" gen --out data/gen
fi
run_dir="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
"$ncsrec" train --config configs/quickstart.yaml --run-dir "$run_dir" "$@"
