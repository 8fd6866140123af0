// A host emulation of the few CUDA features cuda/train_ops.cu, cuda/masked_linear.cu and
// cuda/embedding_table.cu use (launches, shared memory, barriers, atomics, the _rn intrinsics,
// the runtime's copies, CUB's radix sort and scan),
// for ncsrec_emu_tests (ctest emu.kernels, tests/CMakeLists.txt): blocks run one at a time, a
// block's threads as fibers that meet at __syncthreads, and __shared__ arrays become statics
// (shared by the block's threads; one block runs at once). tests/emu/emulate.py rewrites the
// kernel file's launches into emu_launch calls.
#pragma once
#include <ucontext.h>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>
#include <algorithm>
#include <cstdlib>
#include <climits>
#include <cstring>
#include <numeric>
#include "core/dispatch.h"
#include "core/error.h"
#include "core/float_dispatch.h"
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
inline dim3 threadIdx, blockIdx;  // the running fiber's
inline dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__
#define __shared__ static
using std::fma;

// A block's threads are fibers (ucontext) on the calling thread: a round resumes each fiber in
// turn until it reaches __syncthreads (or its end), so when a round is over every thread of the
// block has arrived, and the next round releases them. Blocks run one after the other, so their
// "shared" statics are never used by two blocks at once.
namespace emu {
constexpr size_t kStackBytes = 128 * 1024;
struct Fiber {
  ucontext_t context;
  std::vector<char> stack = std::vector<char>(kStackBytes);
  bool done = false;
};
inline ucontext_t g_scheduler;
inline std::vector<Fiber>* g_fibers = nullptr;
inline int g_current = 0;
inline const std::function<void()>* g_body = nullptr;

inline void fiber_main(int t) {
  (*g_body)();
  (*g_fibers)[static_cast<size_t>(t)].done = true;
  swapcontext(&(*g_fibers)[static_cast<size_t>(t)].context, &g_scheduler);  // never resumed
}
}  // namespace emu

inline void __syncthreads() {
  swapcontext(&(*emu::g_fibers)[static_cast<size_t>(emu::g_current)].context, &emu::g_scheduler);
}

inline void emu_launch(dim3 grid, int block, const std::function<void()>& body) {
  gridDim = grid;
  blockDim = dim3(block);
  static std::vector<emu::Fiber> fibers;
  if (fibers.size() < static_cast<size_t>(block)) fibers.resize(static_cast<size_t>(block));
  emu::g_fibers = &fibers;
  emu::g_body = &body;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      blockIdx = dim3(bx, by);
      for (int t = 0; t < block; ++t) {
        emu::Fiber& f = fibers[static_cast<size_t>(t)];
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.data();
        f.context.uc_stack.ss_size = f.stack.size();
        f.context.uc_link = nullptr;
        makecontext(&f.context, reinterpret_cast<void (*)()>(&emu::fiber_main), 1, t);
        f.done = false;
      }
      for (bool running = true; running;) {
        running = false;
        for (int t = 0; t < block; ++t) {
          emu::Fiber& f = fibers[static_cast<size_t>(t)];
          if (f.done) continue;
          emu::g_current = t;
          threadIdx = dim3(static_cast<unsigned>(t));
          swapcontext(&emu::g_scheduler, &f.context);
          running = running || !f.done;
        }
      }
    }
}

// What cuda/common.cuh needs from the CUDA runtime and cuda/check.h, on the host.
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, size_t bytes) { *p = std::malloc(bytes); return cudaSuccess; }
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) { *p = static_cast<T*>(std::malloc(bytes)); return cudaSuccess; }
inline cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { if (n) std::memmove(d, s, n); return cudaSuccess; }
inline cudaError_t cudaMemset(void* d, int v, size_t n) { std::memset(d, v, n); return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
constexpr cudaError_t cudaErrorMemoryAllocation = 2;
inline cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) { *free_b = *total_b = 0; return cudaSuccess; }
#define CUDA_CHECK(expr) (void)(expr)
using std::max;
using std::min;

// Atomics: one fiber runs at a time, so a read-modify-write is atomic as it stands.
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long compare, unsigned long long value) {
  const unsigned long long old = *p;
  if (old == compare) *p = value;
  return old;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { const auto old = *p; *p += v; return old; }
inline int atomicExch(int* p, int v) { const int old = *p; *p = v; return old; }
// Rounded to nearest, never contracted (the host build does not fuse multiply-adds either).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }

// CUB's device-wide radix sort (stable, ascending signed keys) and inclusive scan. A first call
// with no storage asks for its size, as CUB's does.
namespace cub {
struct DeviceRadixSort {
  template <class K, class V>
  static cudaError_t SortPairs(void* storage, size_t& bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, int n) {
    if (!storage) {
      bytes = 1;
      return cudaSuccess;
    }
    std::vector<int> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return keys_in[a] < keys_in[b]; });
    std::vector<K> k(static_cast<size_t>(n));
    std::vector<V> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      k[static_cast<size_t>(i)] = keys_in[order[static_cast<size_t>(i)]];
      v[static_cast<size_t>(i)] = values_in[order[static_cast<size_t>(i)]];
    }
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), values_out);
    return cudaSuccess;
  }
};
struct DeviceScan {
  template <class In, class Out>
  static cudaError_t InclusiveSum(void* storage, size_t& bytes, const In* in, Out* out, int n) {
    if (!storage) {
      bytes = 1;
      return cudaSuccess;
    }
    Out sum = 0;
    for (int i = 0; i < n; ++i) out[i] = sum = static_cast<Out>(sum + in[i]);
    return cudaSuccess;
  }
};
}  // namespace cub
