// Helpers shared by the CUDA kernel files of cuda/: launch sizes, the f32/f64 dispatch of a
// table entry, the launch check, and block reductions in a fixed tree order (deterministic).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "core/error.h"
#include "core/float_dispatch.h"
#include "core/tensor.h"
#include "cuda/check.h"

namespace ncsrec::cuda_detail {

constexpr int kThreads = 256;         // block size of the element-wise kernels (a power of two)
constexpr int64_t kMaxBlocks = 4096;  // grid-stride loops cover the rest

inline int blocks_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min((n + kThreads - 1) / kThreads, kMaxBlocks)));
}

#define NCSREC_CUDA_FLOAT_DISPATCH NCSREC_FLOAT_DISPATCH

#define NCSREC_CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

// Sum of v over the block; the result is valid in every thread. `shared` holds blockDim.x
// doubles; blockDim.x must be a power of two.
__device__ inline double block_sum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const double r = shared[0];
  __syncthreads();  // `shared` may be reused right after
  return r;
}

template <class T>
__device__ T block_max(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] = max(shared[threadIdx.x], shared[threadIdx.x + s]);
    __syncthreads();
  }
  const T r = shared[0];
  __syncthreads();
  return r;
}

// Allocations made by DeviceVector, all types together (a test of a memory plan reads it).
inline std::atomic<int64_t> g_device_vector_allocations{0};

// A device buffer that grows (and only grows) to the largest size asked for: the scratch of
// kernels whose sizes vary from call to call (a step's batch), allocated on the first large one.
template <class T>
class DeviceVector {
 public:
  DeviceVector() = default;
  ~DeviceVector() {
    if (ptr_) (void)cudaFree(ptr_);
  }
  DeviceVector(const DeviceVector&) = delete;
  DeviceVector& operator=(const DeviceVector&) = delete;
  T* reserve(int64_t n) {
    if (n > size_) {
      if (ptr_) CUDA_CHECK(cudaFree(ptr_));
      ptr_ = nullptr;
      size_ = 0;
      const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
      const cudaError_t err = cudaMalloc(&ptr_, bytes);
      if (err == cudaErrorMemoryAllocation) {  // the user's sizes (a table, a batch): say so
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        const bool info = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
        (void)cudaGetLastError();
        ptr_ = nullptr;
        throw UserError(NCSREC_STR_("out of GPU memory allocating " << bytes << " bytes"
                                    << (info ? " (" + std::to_string(free_b) + " of " + std::to_string(total_b) +
                                                   " bytes free)" : std::string())
                                    << "; use a smaller batch or tables, or run.device: cpu"));
      }
      CUDA_CHECK(err);
      size_ = n;
      ++g_device_vector_allocations;
    }
    return ptr_;
  }
  T* get() const { return ptr_; }
  int64_t size() const { return size_; }
  void swap(DeviceVector& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(size_, other.size_);
  }

 private:
  T* ptr_ = nullptr;
  int64_t size_ = 0;
};

}  // namespace ncsrec::cuda_detail
