// Which OpenBLAS kernels this CPU should run. OpenBLAS picks its kernels from the CPU's model,
// and on virtual machines whose CPUID names a generic model ("Intel Xeon Processor") it falls
// back to its oldest x86-64 kernels (Prescott, SSE3) even where AVX-512 is there: measured on a
// 2-core AVX-512 VM, 720x512 by 4096 SGEMM took 97 ms with them and 22 ms with SkylakeX's
// (docs/results/bench.md), and the paper-sized NCS training step 594 ms against 198 ms. OpenBLAS
// reads OPENBLAS_CORETYPE once, when it loads, so `ncsrec` sets it at start (before re-executing
// itself, as for OMP_WAIT_POLICY) from the instruction sets the CPU and the OS support. A value
// the user set is kept.
#pragma once

#include <string>

namespace ncsrec {

// "SkylakeX" (AVX-512 F/BW/DQ/VL), "Haswell" (AVX2 and FMA), or "" (let OpenBLAS decide).
std::string openblas_core_for_this_cpu();

// Sets OPENBLAS_CORETYPE to openblas_core_for_this_cpu() unless the environment has it already
// (or there is nothing to choose); true when it set it. OpenBLAS reads it when it loads, so a
// caller that gets true re-executes itself for the value to take effect.
bool set_openblas_coretype_for_this_cpu();

// Whether this CPU and its OS run AVX-512F code: the run-time check before the hand-written
// AVX-512 kernels (core/sparse_train.h, the CPU interaction's), which the library's plain
// x86-64 build compiles with target attributes.
bool cpu_has_avx512f();

// The kernels OpenBLAS runs with in this process ("" when it does not say).
std::string openblas_core_in_use();

// Makes every OpenBLAS call single-threaded (once per process; cheap after the first call).
// OpenMP threads the products instead, by blocks of the result (core/cpu_kernels.cpp): one
// thread pool, not two fighting for the cores.
void use_single_threaded_blas();

}  // namespace ncsrec
