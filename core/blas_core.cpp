#include "core/blas_core.h"

#include <cblas.h>

#include <cstdlib>

namespace ncsrec {

std::string openblas_core_for_this_cpu() {
  __builtin_cpu_init();
  // libgcc's detection also checks that the OS saves the vector state (XCR0), as OpenBLAS does.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return "";
}

bool set_openblas_coretype_for_this_cpu() {
  if (std::getenv("OPENBLAS_CORETYPE")) return false;
  const std::string core = openblas_core_for_this_cpu();
  if (core.empty()) return false;
  ::setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  return true;
}

bool cpu_has_avx512f() {
  static const bool yes = (__builtin_cpu_init(), __builtin_cpu_supports("avx512f"));
  return yes;
}

std::string openblas_core_in_use() {
  const char* name = openblas_get_corename();
  return name ? std::string(name) : std::string();
}

void use_single_threaded_blas() {
  // OpenBLAS's OpenMP build (openblas_get_parallel() == 2) runs single-threaded inside our
  // parallel regions by itself, and its openblas_set_num_threads would call
  // omp_set_num_threads(1) and so turn off every region of ours: leave it alone.
  static const bool done = (openblas_get_parallel() != 2 ? openblas_set_num_threads(1) : void(), true);
  (void)done;
}

}  // namespace ncsrec
