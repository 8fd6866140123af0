#!/usr/bin/env bash
# CPU weak scaling of data-parallel training: the quickstart config (batch 1024 per rank, one
# thread per rank, no eval) on 1 and on 2 MPI ranks, REPS times each, alternating so drift in
# the machine's load hits both alike. Prints one line per run from summary.json: samples/s of
# the training loop, and rank 0's time inside collectives (waiting for the other rank
# included) with the bytes it sent per step. Needs data/gen (scripts/run.sh makes it).
#   scripts/bench_scaling.sh [STEPS] [REPS] [RANKS...]      default: 1000 3 1 2
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
ncsrec="${NCSREC_BUILD_DIR:-$root/build}/bin/ncsrec"
steps="${1:-1000}"
reps="${2:-3}"
shift 2 || true
ranks=("${@:-1 2}")
read -r -a ranks <<<"${ranks[*]}"
cd "$root"
[[ -d data/gen ]] || { echo "no data/gen: run scripts/run.sh (or ncsrec gen --out data/gen) first" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
printf "%-5s %-4s %12s %10s %12s %10s %14s %14s\n" ranks rep samples/s train_s comm_s comm_frac allreduce_B/st alltoall_B/st
for rep in $(seq 1 "$reps"); do
  for n in "${ranks[@]}"; do
    run="$out/n$n-$rep"
    args=(train --config configs/quickstart.yaml --run-dir "$run" --set "train.max_steps=$steps"
          --set train.log_every=100000 --set "data.eval=[]" --set run.threads=1)
    if [[ "$n" == 1 ]]; then
      OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$ncsrec" "${args[@]}" >/dev/null 2>&1
    else
      mpirun -np "$n" --oversubscribe -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 "$ncsrec" "${args[@]}" >/dev/null 2>&1
    fi
    python3 - "$run/summary.json" "$n" "$rep" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); c = s["communication"]
print(f"{sys.argv[2]:<5} {sys.argv[3]:<4} {s['samples_per_sec']:12.0f} {s['train_seconds']:10.2f} {c['seconds']:12.2f} "
      f"{c['fraction_of_train_time']:10.3f} {c['all_reduce_bytes_per_step']:14.0f} {c['all_to_all_bytes_per_step']:14.0f}")
PY
  done
done
