#!/usr/bin/env bash
# One command for the GPU checks: run it on a machine with an NVIDIA GPU.
#
#   scripts/gpu_check.sh            # from anywhere; builds into <repo>/build-gpu
#
# Steps: scripts/setup.sh (dependencies only, when present) -> configure build-gpu with
# -DNCSREC_CUDA=ON and CMAKE_CUDA_ARCHITECTURES from `nvidia-smi --query-gpu=compute_cap`
# (default 90) -> build -> `ctest -L gpu` -> compute-sanitizer memcheck and racecheck over
# ncsrec_gpu_tests, and memcheck over ncsrec_nccl_tests (the NCCL communicator at world size 1,
# when NCCL was found), when compute-sanitizer exists -> a table: check | result | seconds.
# Exits non-zero if any check failed. On a machine without a GPU it builds, runs the gpu label
# (which then only checks the no-GPU path; the parity tests skip), says so, and exits 0.
#
# Environment knobs:
#   NCSREC_GPU_BUILD_DIR   build folder (default: <repo>/build-gpu)
#   NCSREC_CUDA_ARCH       override the detected architecture (e.g. 80, 90)
#   NCSREC_GPU_TARGETS     targets to build (default: all)
#
# What later issues add here (keep the one-command, one-table shape):
#   - parity tests of new kernels: they join tests/gpu/ and so the `gpu` label automatically;
#   - a multi-GPU NCCL run via mpirun when more than one GPU is visible (the world-size-1 NCCL
#     tests, ncsrec_nccl_tests, are in the gpu label already);
#   - compute-sanitizer initcheck and synccheck.
# Already here after the tests: a short NCS run of `ncsrec train` on cpu and on cuda (eval AUCs
# within 0.005), `ncsrec bench` of the training step on both devices, with each route of the
# masked layers forced (plain, fused) beside auto's per-shape measurements, the embedding
# lookup against a device-to-device copy (bench/embedding_bandwidth.cpp), and PyTorch.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${NCSREC_GPU_BUILD_DIR:-$root/build-gpu}"
log_dir="$build_dir/gpu_check_logs"

names=()
results=()
seconds=()
failed=0

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# run_check NAME LOG COMMAND...: runs the command with its output going to the console and to
# LOG, records PASS/FAIL and the time. Never aborts the script (set -e does not apply here).
run_check() {
  local name="$1" log="$2"
  shift 2
  local start status
  start="$(now)"
  echo "==> $name: $*"
  set +e
  "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  names+=("$name")
  seconds+=("$(elapsed "$start")")
  if [[ $status -eq 0 ]]; then
    results+=("PASS")
  else
    results+=("FAIL (exit $status; log: ${log#"$build_dir"/})")
    failed=1
  fi
  return 0
}

record() {  # record NAME RESULT SECONDS: a row that is not a command (e.g. a skipped check)
  names+=("$1")
  results+=("$2")
  seconds+=("$3")
}

print_table() {
  echo
  printf '%-28s | %-52s | %s\n' "check" "result" "seconds"
  printf '%-28s-+-%-52s-+-%s\n' "----------------------------" "----------------------------------------------------" "-------"
  local i
  for i in "${!names[@]}"; do
    printf '%-28s | %-52s | %s\n' "${names[$i]}" "${results[$i]}" "${seconds[$i]}"
  done
  echo
}

finish() {
  print_table
  if [[ $failed -ne 0 ]]; then
    echo "gpu_check: FAILED"
    exit 1
  fi
  if [[ $have_gpu -eq 0 ]]; then
    echo "gpu_check: no GPU on this machine ($gpu_note): built and ran the no-GPU checks only;"
    echo "gpu_check: the CUDA parity tests and compute-sanitizer were NOT run. Run this on a GPU machine."
  else
    echo "gpu_check: all checks passed on $gpu_name"
  fi
  exit 0
}

# ---- the GPU and its architecture --------------------------------------------------------
have_gpu=0
gpu_name=""
gpu_note="nvidia-smi not found"
arch="${NCSREC_CUDA_ARCH:-}"
if command -v nvidia-smi >/dev/null 2>&1; then
  if gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)" && [[ -n "$gpu_name" ]]; then
    have_gpu=1
    if [[ -z "$arch" ]]; then
      cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')" || cap=""
      [[ "$cap" =~ ^[0-9]+$ ]] && arch="$cap"
    fi
  else
    gpu_note="nvidia-smi found no usable GPU"
  fi
fi
arch="${arch:-90}"
if [[ $have_gpu -eq 1 ]]; then
  echo "gpu_check: GPU: $gpu_name (CUDA architecture $arch)"
else
  echo "gpu_check: no GPU ($gpu_note); building for CUDA architecture $arch and running the no-GPU checks"
fi

mkdir -p "$log_dir"

# ---- dependencies, configure, build ------------------------------------------------------
if [[ -f "$root/scripts/setup.sh" ]]; then
  # Dependencies only: this script configures its own build folder below.
  run_check "setup.sh (dependencies)" "$log_dir/setup.log" env NCSREC_SKIP_BUILD=1 bash "$root/scripts/setup.sh"
  [[ $failed -eq 0 ]] || finish
else
  record "setup.sh (dependencies)" "SKIP (scripts/setup.sh not present)" "0.0"
fi

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
run_check "configure (sm_$arch)" "$log_dir/configure.log" \
  cmake -S "$root" -B "$build_dir" "${generator[@]}" -DNCSREC_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch"
[[ $failed -eq 0 ]] || finish

targets=()
for t in ${NCSREC_GPU_TARGETS:-}; do targets+=(--target "$t"); done
run_check "build" "$log_dir/build.log" cmake --build "$build_dir" -j "$(nproc)" "${targets[@]}"
[[ $failed -eq 0 ]] || finish

# ---- tests ---------------------------------------------------------------------------------
run_check "ctest -L gpu" "$log_dir/ctest.log" \
  ctest --test-dir "$build_dir" -L gpu --output-on-failure --no-tests=error

gpu_tests="$build_dir/tests/ncsrec_gpu_tests"
nccl_tests="$build_dir/tests/ncsrec_nccl_tests"  # absent when the build found no NCCL
if [[ $have_gpu -eq 0 ]]; then
  record "compute-sanitizer memcheck" "SKIP (no GPU)" "0.0"
  record "memcheck (nccl)" "SKIP (no GPU)" "0.0"
  record "compute-sanitizer racecheck" "SKIP (no GPU)" "0.0"
  finish
fi

sanitizer=""
for c in compute-sanitizer /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  if command -v "$c" >/dev/null 2>&1; then sanitizer="$(command -v "$c")"; break; fi
done
if [[ -z "$sanitizer" ]]; then
  record "compute-sanitizer memcheck" "SKIP (compute-sanitizer not found)" "0.0"
  record "compute-sanitizer racecheck" "SKIP (compute-sanitizer not found)" "0.0"
elif [[ ! -x "$gpu_tests" ]]; then
  record "compute-sanitizer" "FAIL (no $gpu_tests)" "0.0"
  failed=1
else
  # memcheck over every GPU test (out-of-bounds and misaligned accesses, API errors). The handle
  # and scratch buffer live until exit on purpose, so no leak check.
  run_check "compute-sanitizer memcheck" "$log_dir/memcheck.log" \
    "$sanitizer" --tool memcheck --error-exitcode 1 "$gpu_tests"
  if [[ -x "$nccl_tests" ]]; then
    run_check "memcheck (nccl)" "$log_dir/memcheck_nccl.log" \
      "$sanitizer" --tool memcheck --error-exitcode 1 "$nccl_tests"
  else
    record "memcheck (nccl)" "SKIP (no ncsrec_nccl_tests: NCCL not found)" "0.0"
  fi
  # racecheck (shared-memory hazards) over the tests of our own shared-memory kernels
  # (softmax_rows, bias_grad, the reductions, the fused masked layer's tiles); cuBLAS GEMM under
  # racecheck is slow and not ours.
  run_check "compute-sanitizer racecheck" "$log_dir/racecheck.log" \
    "$sanitizer" --tool racecheck --error-exitcode 1 "$gpu_tests" \
    --gtest_filter='CudaParity.RowOps:CudaParity.Reductions:CudaMaskedLinear.FusedRouteMatchesTheCpuWithoutBiasOrActivation'
fi

# ---- the command on the GPU -----------------------------------------------------------------
# A short NCS training run on cpu and on cuda over the same small generated data: both must
# finish, and their eval AUCs must agree to 0.005 (the GPU sums in another order, so bits differ).
# Then the training step's speed on both devices, side by side in one run.
ncsrec="$build_dir/bin/ncsrec"
work="$build_dir/gpu_check_work"
rm -rf "$work"
mkdir -p "$work"
run_check "gen (small data)" "$log_dir/gen.log" \
  "$ncsrec" gen --out "$work/data" --days 3 --rows-per-day 60000 --users 5000 --items 2000
train_on() {  # train_on DEVICE
  "$ncsrec" train --config "$root/configs/ncs.yaml" --run-dir "$work/run-$1" \
    --set run.device="$1" --set model.masks.find=none \
    --set "data.train=[\"$work/data/content/day=2026-01-0[1-2]\"]" --set 'data.valid=[]' \
    --set "data.eval=[\"$work/data/content/day=2026-01-03\"]" --set train.batch_size=512
}
run_check "train ncs (cpu)" "$log_dir/train_cpu.log" train_on cpu
run_check "train ncs (cuda)" "$log_dir/train_cuda.log" train_on cuda
compare_runs() {
  python3 - "$work/run-cpu/summary.json" "$work/run-cuda/summary.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert b.get("device") == "cuda", "the cuda run trained on " + str(b.get("device"))
worst = 0.0
for name, va in a["eval"].items():
    vb = b["eval"][name]
    d = abs(va["auc"] - vb["auc"])
    worst = max(worst, d)
    print(f"{name:8s} AUC cpu {va['auc']:.5f} cuda {vb['auc']:.5f} |diff| {d:.5f}")
print(f"training samples/s: cpu {a['samples_per_sec']:.0f}, cuda {b['samples_per_sec']:.0f}")
sys.exit(0 if worst < 0.005 else 1)
PY
}
run_check "cpu vs cuda eval AUC" "$log_dir/compare.log" compare_runs
run_check "bench ncs (cpu)" "$log_dir/bench_cpu.log" \
  "$ncsrec" bench --config "$root/configs/ncs_bench_tiny.yaml" --device cpu --threads "$(nproc)" --json "$work/bench_cpu.json"
run_check "bench ncs (cuda)" "$log_dir/bench_cuda.log" \
  "$ncsrec" bench --config "$root/configs/ncs_bench_tiny.yaml" --device cuda --json "$work/bench_cuda.json"
# The masked layers' two routes, each forced, beside the auto run above (its log lists the
# per-shape measurements of both routes and the one it kept).
for route in plain fused; do
  run_check "bench ncs (cuda, $route route)" "$log_dir/bench_cuda_$route.log" \
    "$ncsrec" bench --config "$root/configs/ncs_bench_tiny.yaml" --device cuda --masked-route "$route" \
    --json "$work/bench_cuda_$route.json"
done
# The GPU embedding table's pooled lookup (and its fused backward + update) against a
# device-to-device copy of the table's size, measured in the same process.
run_check "bench embedding lookup vs copy" "$log_dir/bench_embedding.log" \
  "$build_dir/bench/ncsrec_bench_embedding" --json "$work/bench_embedding.json"
run_check "bench embedding lookup vs copy (hash)" "$log_dir/bench_embedding_hash.log" \
  "$build_dir/bench/ncsrec_bench_embedding" --hash --json "$work/bench_embedding_hash.json"
for precision in tf32 bf16; do  # the tensor-core modes of run.matmul, same step
  run_check "bench ncs (cuda, $precision)" "$log_dir/bench_cuda_$precision.log" \
    "$ncsrec" bench --config "$root/configs/ncs_bench_tiny.yaml" --device cuda --matmul "$precision" \
    --json "$work/bench_cuda_$precision.json"
done
# The paper-sized model against PyTorch on the GPU, when this python has a CUDA PyTorch.
if python3 -c 'import torch, numpy, yaml, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  run_check "bench vs pytorch (cuda)" "$log_dir/bench_torch_cuda.log" \
    python3 "$root/scripts/bench_torch.py" --device cuda --config "$root/configs/ncs_paper.yaml" \
    --ncsrec "$ncsrec" --steps 20 --warmup 8 --json "$work/bench_torch_cuda.json"
else
  record "bench vs pytorch (cuda)" "SKIP (python3 has no CUDA PyTorch with numpy, yaml)" "0.0"
fi

finish
