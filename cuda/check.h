// Checked calls into the CUDA libraries. Every CUDA runtime, cuBLAS and cuSPARSE call in cuda/
// goes through one of these macros; a failure throws ncsrec::InternalError naming the library,
// its status code and string, the expression, and the file and line:
//
//   cuda/device.cu:123: CUDA error 2 (cudaErrorMemoryAllocation: out of memory) in `cudaMalloc(&p, n)`
//
// Kernel launches are checked with CUDA_CHECK(cudaGetLastError()) right after the launch.
// NCCL calls are checked in dist/nccl_communicator.cpp, which adds the communicator state (abort,
// the async error) to the message.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusparse.h>

#include "core/error.h"

namespace ncsrec::cuda_detail {

[[noreturn]] inline void throw_library_error(const char* library, long code, const char* name, const char* text,
                                             const char* expr, const char* file, int line) {
  throw ::ncsrec::InternalError(NCSREC_STR_(file << ":" << line << ": " << library << " error " << code << " ("
                                                 << (name ? name : "?") << ": " << (text ? text : "?")
                                                 << ") in `" << expr << "`"));
}

}  // namespace ncsrec::cuda_detail

#define CUDA_CHECK(expr)                                                                                  \
  do {                                                                                                    \
    const cudaError_t ncsrec_cuda_err_ = (expr);                                                          \
    if (ncsrec_cuda_err_ != cudaSuccess) {                                                                \
      (void)cudaGetLastError(); /* clear a non-sticky error so later calls do not report it again */      \
      ::ncsrec::cuda_detail::throw_library_error("CUDA", static_cast<long>(ncsrec_cuda_err_),             \
                                                 cudaGetErrorName(ncsrec_cuda_err_),                      \
                                                 cudaGetErrorString(ncsrec_cuda_err_), #expr, __FILE__,   \
                                                 __LINE__);                                               \
    }                                                                                                     \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                                \
  do {                                                                                                    \
    const cublasStatus_t ncsrec_cublas_st_ = (expr);                                                      \
    if (ncsrec_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                                       \
      ::ncsrec::cuda_detail::throw_library_error("cuBLAS", static_cast<long>(ncsrec_cublas_st_),          \
                                                 cublasGetStatusName(ncsrec_cublas_st_),                  \
                                                 cublasGetStatusString(ncsrec_cublas_st_), #expr,         \
                                                 __FILE__, __LINE__);                                     \
  } while (0)

#define CUSPARSE_CHECK(expr)                                                                              \
  do {                                                                                                    \
    const cusparseStatus_t ncsrec_cusparse_st_ = (expr);                                                  \
    if (ncsrec_cusparse_st_ != CUSPARSE_STATUS_SUCCESS)                                                   \
      ::ncsrec::cuda_detail::throw_library_error("cuSPARSE", static_cast<long>(ncsrec_cusparse_st_),      \
                                                 cusparseGetErrorName(ncsrec_cusparse_st_),               \
                                                 cusparseGetErrorString(ncsrec_cusparse_st_), #expr,      \
                                                 __FILE__, __LINE__);                                     \
  } while (0)
