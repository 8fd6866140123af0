#!/usr/bin/env bash
# Runs the fused masked-layer kernels of cuda/masked_linear.cu on the CPU, through a host
# emulation of the CUDA features they use (tests/emu/cuda_emu.h: a block's threads are
# std::threads meeting at a barrier for __syncthreads, one block at a time), against the GPU
# parity test tests/gpu/test_cuda_masked_linear.cpp. It checks the kernels' indexing, tiling,
# bounds and task grouping where no GPU is at hand; it says nothing about speed, and the real
# compiler and hardware are still checked only by scripts/gpu_check.sh.
#
#   scripts/emulate_masked_kernels.sh [BUILD_DIR]     (default build/; needs its libncsrec_core.a)
#
# About half a minute on two cores. Not part of the test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$root/cuda/masked_linear.cu" "$work/masked_linear_emu.cpp" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
for inc in ['#include <cuda_runtime.h>\n', '#include "cuda/check.h"\n', '#include "cuda/common.cuh"\n',
            '#include "cuda/train_ops.h"\n']:
    if inc not in s: sys.exit("emulate: cuda/masked_linear.cu no longer includes " + inc.strip())
    s = s.replace(inc, '')
# kernel<...><<<grid, block>>>(args); -> emu_launch(grid, block, [&] { kernel<...>(args); });
launch = re.compile(r'(\w+<[^;<>]*>)\s*<<<(.*?),\s*(kBlock)>>>\(([^;]*)\);', re.S)
s, n = launch.subn(lambda m: 'emu_launch(%s, %s, [&] { %s(%s); });' % (m.group(2), m.group(3), m.group(1), m.group(4)), s)
if n != 2: sys.exit("emulate: expected 2 kernel launches in cuda/masked_linear.cu, found %d" % n)
s = s.replace('void add_cuda_masked_linear_ops(OpTable& t) {', 'void add_emulated_masked_linear_ops(OpTable& t) {')
open(sys.argv[2], 'w').write('#include "tests/emu/cuda_emu.h"\n' + s)
PY
g++ -std=c++17 -O2 -fopenmp -I"$root" "$root/tests/gpu/test_cuda_masked_linear.cpp" \
  "$root/tests/emu/register_emulated.cpp" "$work/masked_linear_emu.cpp" "$build/core/libncsrec_core.a" \
  -lopenblas -lgtest -lgtest_main -lpthread -o "$work/emulated"
# The paper-sized layer is ~10⁹ emulated multiply-adds per product: left to the GPU.
"$work/emulated" --gtest_filter='-*PapersFirstLayer'
