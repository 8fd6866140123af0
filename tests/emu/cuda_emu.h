// A host emulation of the few CUDA features cuda/train_ops.cu and cuda/masked_linear.cu use,
// for ncsrec_emu_tests (ctest emu.kernels, tests/CMakeLists.txt): blocks run one at a time, a block's threads as
// std::threads meeting at a barrier for __syncthreads, and __shared__ arrays become statics
// (shared by the block's threads; one block runs at once). tests/emu/emulate.py rewrites the
// kernel file's launches into emu_launch calls.
#pragma once
#include <pthread.h>
#include <cmath>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>
#include <algorithm>
#include <cstdlib>
#include <climits>
#include "core/dispatch.h"
#include "core/error.h"
#include "core/float_dispatch.h"
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline pthread_barrier_t g_bar;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__
#define __shared__ static
inline void __syncthreads() { pthread_barrier_wait(&g_bar); }
using std::fma;
// One std::thread per thread of a block, for the whole launch: each walks the blocks in the
// same order and meets the others at a barrier after every block, so blocks still run one at a
// time and their "shared" statics are never used by two blocks at once.
inline void emu_launch(dim3 grid, int block, const std::function<void()>& body) {
  gridDim = grid;
  blockDim = dim3(block);
  pthread_barrier_init(&g_bar, nullptr, block);
  std::vector<std::thread> threads;
  for (int t = 0; t < block; ++t)
    threads.emplace_back([&, t] {
      threadIdx = dim3(t);
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          blockIdx = dim3(bx, by);
          body();
          pthread_barrier_wait(&g_bar);
        }
    });
  for (auto& th : threads) th.join();
  pthread_barrier_destroy(&g_bar);
}
// What cuda/common.cuh needs from the CUDA runtime and cuda/check.h, on the host.
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, size_t bytes) { *p = std::malloc(bytes); return cudaSuccess; }
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) { *p = static_cast<T*>(std::malloc(bytes)); return cudaSuccess; }
inline cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
#define CUDA_CHECK(expr) (void)(expr)
using std::max;
using std::min;
