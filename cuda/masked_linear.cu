// The masked multi-task linear layer as one product for several tasks (the `masked_linear_*`
// entries of the CUDA table, core/dispatch.h): the "fused route" of core/layers/masked_linear.h.
//
// Every kernel is one tiled product. A block owns a 64 × 64 tile of the output and walks the
// reduction dimension in steps of BK (16 for f32, 8 for f64, so both fit 48 KB of shared memory
// with four tasks; rows padded by one element against bank conflicts). Each step loads the
// shared weight's tile once and writes every task's masked copy of it into shared memory (the
// bit of element i of W is bit i % 8 of byte i / 8 of the task's mask, as in apply_mask), so
// W is read once for all the tasks of the call and W ⊙ M_t never exists in global memory. 256
// threads, each holding a 4 × 4 piece of every task's tile (rows ty + 16·i, columns tx + 16·j:
// neighbouring threads touch neighbouring words of shared memory and of the output). Up to
// kFusedTasks tasks a launch; more run as several launches.
//
// Sums run in the reduction's order with fused multiply-adds, in the element type (FP32 or
// FP64): no tensor cores, whatever run.matmul says (the plain route's products follow it).
// The weight gradient adds task 0's masked product, then task 1's, … to dW, the order of the
// plain route's add_masked calls, and leaves an element outside every mask untouched.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/dispatch.h"
#include "core/error.h"
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/train_ops.h"

namespace ncsrec {
namespace {

using namespace cuda_detail;

constexpr int kFusedTasks = 4;  // tasks per launch
constexpr int kTile = 64;       // output tile: kTile × kTile
constexpr int kSide = 16;       // threads per side of the block; each holds (kTile / kSide)² outputs
constexpr int kPer = kTile / kSide;
constexpr int kBlock = kSide * kSide;
// A tile's rows in shared memory are one element longer than the tile: the loads that walk the
// reduction index fastest (A_t, and W in the input gradient) then hit 16 different banks, not one.
constexpr int kTileStride = kTile + 1;

template <class T>
struct ReductionStep {
  static constexpr int value = sizeof(T) == 4 ? 16 : 8;
};

template <class T>
struct TaskArrays {
  const T* in[kFusedTasks];       // x_t (forward, weight grad) or dy_t (input grad)
  const T* in2[kFusedTasks];      // dy_t (weight grad)
  const uint8_t* bits[kFusedTasks];
  T* out[kFusedTasks];            // y_t or dx_t
};

__device__ __forceinline__ bool mask_bit(const uint8_t* bits, int64_t i) { return (bits[i >> 3] >> (i & 7)) & 1u; }

template <class T, int NT>
using Accumulators = T[NT][kPer][kPer];
template <class T, int NT, int BK>
using Tiles = T[NT][BK][kTileStride];

template <class T, int NT>
__device__ __forceinline__ void zero(Accumulators<T, NT>& acc) {
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
      for (int j = 0; j < kPer; ++j) acc[t][i][j] = T(0);
}

// acc[t][i][j] += Σ_k a[t][k][ty + 16i] · b[t][k][tx + 16j] over one step of the reduction.
template <class T, int NT, int BK>
__device__ __forceinline__ void multiply_tiles(Accumulators<T, NT>& acc, const Tiles<T, NT, BK>& a,
                                               const Tiles<T, NT, BK>& b, int tx, int ty) {
#pragma unroll
  for (int k = 0; k < BK; ++k) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      T av[kPer], bv[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) av[i] = a[t][k][ty + kSide * i];
#pragma unroll
      for (int j = 0; j < kPer; ++j) bv[j] = b[t][k][tx + kSide * j];
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[t][i][j] = fma(av[i], bv[j], acc[t][i][j]);
    }
  }
}

// C_t[M, Nc] = A_t[M, R]·op(W ⊙ M_t) (+ bias, ReLU), for NT tasks. Without kTransW, W is
// [R, Nc] (the forward: R = in, Nc = out); with it, W is [Nc, R] and op(W) = Wᵀ (the input
// gradient: R = out, Nc = in). `ldw` is W's row length.
template <class T, int NT, bool kTransW>
__global__ void __launch_bounds__(kBlock)
    masked_product_kernel(TaskArrays<T> args, const T* __restrict__ w, const T* __restrict__ bias, bool relu,
                          int64_t M, int64_t Nc, int64_t R, int64_t ldw) {
  constexpr int BK = ReductionStep<T>::value;
  __shared__ T a_tile[NT][BK][kTileStride];  // A_t's tile, reduction index first
  __shared__ T w_tile[NT][BK][kTileStride];  // (W ⊙ M_t)'s tile as op(W): [reduction][output column]
  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
  const int64_t row0 = int64_t(blockIdx.x) * kTile, col0 = int64_t(blockIdx.y) * kTile;

  Accumulators<T, NT> acc;
  zero<T, NT>(acc);

  for (int64_t k0 = 0; k0 < R; k0 += BK) {
    // A_t[row0 + m, k0 + k]: consecutive threads read consecutive k of a row.
    for (int e = threadIdx.x; e < kTile * BK; e += kBlock) {
      const int m = e / BK, k = e % BK;
      const int64_t gm = row0 + m, gk = k0 + k;
      const bool inside = gm < M && gk < R;
#pragma unroll
      for (int t = 0; t < NT; ++t) a_tile[t][k][m] = inside ? args.in[t][gm * R + gk] : T(0);
    }
    // op(W)[k0 + k, col0 + n], read along W's rows, masked once per task.
    for (int e = threadIdx.x; e < kTile * BK; e += kBlock) {
      int k, n;
      if constexpr (kTransW) {
        n = e / BK;
        k = e % BK;
      } else {
        k = e / kTile;
        n = e % kTile;
      }
      const int64_t gk = k0 + k, gn = col0 + n;
      if (gk < R && gn < Nc) {
        int64_t idx;
        if constexpr (kTransW) idx = gn * ldw + gk;
        else idx = gk * ldw + gn;
        const T v = w[idx];
#pragma unroll
        for (int t = 0; t < NT; ++t) w_tile[t][k][n] = mask_bit(args.bits[t], idx) ? v : T(0);
      } else {
#pragma unroll
        for (int t = 0; t < NT; ++t) w_tile[t][k][n] = T(0);
      }
    }
    __syncthreads();
    multiply_tiles<T, NT, BK>(acc, a_tile, w_tile, tx, ty);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t gm = row0 + ty + kSide * i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t gn = col0 + tx + kSide * j;
      if (gn >= Nc) continue;
      const T b = bias ? bias[gn] : T(0);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        T v = acc[t][i][j] + b;
        if (relu) v = v > T(0) ? v : T(0);
        args.out[t][gm * Nc + gn] = v;
      }
    }
  }
}

// dW[K, N] += (X_tᵀ·D_t) ⊙ M_t for NT tasks in order; X_t is [rows, K], D_t [rows, N].
template <class T, int NT>
__global__ void __launch_bounds__(kBlock)
    masked_weight_grad_kernel(TaskArrays<T> args, T* __restrict__ dw, int64_t rows, int64_t K, int64_t N) {
  constexpr int BK = ReductionStep<T>::value;
  __shared__ T x_tile[NT][BK][kTileStride];  // X_t[b0 + r, k0 + m]
  __shared__ T d_tile[NT][BK][kTileStride];  // D_t[b0 + r, n0 + n]
  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
  const int64_t k0 = int64_t(blockIdx.x) * kTile, n0 = int64_t(blockIdx.y) * kTile;

  Accumulators<T, NT> acc;
  zero<T, NT>(acc);

  for (int64_t b0 = 0; b0 < rows; b0 += BK) {
    // Both operands are read along their rows: consecutive threads, consecutive columns.
    for (int e = threadIdx.x; e < kTile * BK; e += kBlock) {
      const int r = e / kTile, c = e % kTile;
      const int64_t gb = b0 + r, gk = k0 + c, gn = n0 + c;
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        x_tile[t][r][c] = gb < rows && gk < K ? args.in[t][gb * K + gk] : T(0);
        d_tile[t][r][c] = gb < rows && gn < N ? args.in2[t][gb * N + gn] : T(0);
      }
    }
    __syncthreads();
    multiply_tiles<T, NT, BK>(acc, x_tile, d_tile, tx, ty);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t gk = k0 + ty + kSide * i;
    if (gk >= K) continue;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t gn = n0 + tx + kSide * j;
      if (gn >= N) continue;
      const int64_t idx = gk * N + gn;
      T v = dw[idx];
      bool touched = false;
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (mask_bit(args.bits[t], idx)) {
          v += acc[t][i][j];
          touched = true;
        }
      }
      if (touched) dw[idx] = v;
    }
  }
}

// The grid of a product with M output rows and Nc output columns: rows on x (up to 2³¹ − 1
// tiles), columns on y (up to 65,535 tiles: 4,194,240 columns).
dim3 grid_for(int64_t M, int64_t Nc, const char* what) {
  const int64_t gx = (M + kTile - 1) / kTile, gy = (Nc + kTile - 1) / kTile;
  NCSREC_CHECK(gx <= INT_MAX && gy <= 65535, what << ": " << M << " × " << Nc << " outputs exceed the grid");
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
}

// Calls launch.template operator()<NT>(args) for each group of up to kFusedTasks tasks, with
// `args` holding the group's pointers.
template <class T, class Fill, class Launch>
void for_task_groups(int tasks, Fill fill, Launch launch) {
  for (int first = 0; first < tasks; first += kFusedTasks) {
    const int n = std::min(kFusedTasks, tasks - first);
    TaskArrays<T> args{};
    for (int t = 0; t < n; ++t) fill(args, t, first + t);
    switch (n) {
      case 1: launch.template operator()<1>(args); break;
      case 2: launch.template operator()<2>(args); break;
      case 3: launch.template operator()<3>(args); break;
      default: launch.template operator()<4>(args); break;
    }
    NCSREC_CUDA_LAUNCH_CHECK();
  }
}

template <class T, bool kTransW>
struct ProductLaunch {
  const T* w;
  const T* bias;
  bool relu;
  int64_t M, Nc, R, ldw;
  template <int NT>
  void operator()(const TaskArrays<T>& args) const {
    masked_product_kernel<T, NT, kTransW>
        <<<grid_for(M, Nc, "masked linear"), kBlock>>>(args, w, bias, relu, M, Nc, R, ldw);
  }
};

template <class T>
struct WeightGradLaunch {
  T* dw;
  int64_t rows, K, N;
  template <int NT>
  void operator()(const TaskArrays<T>& args) const {
    masked_weight_grad_kernel<T, NT><<<grid_for(K, N, "masked linear weight gradient"), kBlock>>>(args, dw, rows, K, N);
  }
};

template <class T>
void forward_t(int tasks, int64_t rows, int64_t in, int64_t out, const void* const* x, const void* w,
               const uint8_t* const* bits, const void* bias, bool relu, void* const* y) {
  for_task_groups<T>(
      tasks,
      [&](TaskArrays<T>& a, int slot, int t) {
        a.in[slot] = static_cast<const T*>(x[t]);
        a.bits[slot] = bits[t];
        a.out[slot] = static_cast<T*>(y[t]);
      },
      ProductLaunch<T, false>{static_cast<const T*>(w), static_cast<const T*>(bias), relu, rows, out, in, out});
}

template <class T>
void input_grad_t(int tasks, int64_t rows, int64_t in, int64_t out, const void* const* dy, const void* w,
                  const uint8_t* const* bits, void* const* dx) {
  for_task_groups<T>(
      tasks,
      [&](TaskArrays<T>& a, int slot, int t) {
        a.in[slot] = static_cast<const T*>(dy[t]);
        a.bits[slot] = bits[t];
        a.out[slot] = static_cast<T*>(dx[t]);
      },
      ProductLaunch<T, true>{static_cast<const T*>(w), nullptr, false, rows, in, out, out});
}

template <class T>
void weight_grad_t(int tasks, int64_t rows, int64_t in, int64_t out, const void* const* x, const void* const* dy,
                   const uint8_t* const* bits, void* dw) {
  for_task_groups<T>(
      tasks,
      [&](TaskArrays<T>& a, int slot, int t) {
        a.in[slot] = static_cast<const T*>(x[t]);
        a.in2[slot] = static_cast<const T*>(dy[t]);
        a.bits[slot] = bits[t];
      },
      WeightGradLaunch<T>{static_cast<T*>(dw), rows, in, out});
}

void cuda_masked_linear_forward(DType d, int tasks, int64_t rows, int64_t in, int64_t out, const void* const* x,
                                const void* w, const uint8_t* const* bits, const void* bias, bool relu,
                                void* const* y) {
  if (tasks == 0 || rows == 0 || out == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d, (forward_t<float>(tasks, rows, in, out, x, w, bits, bias, relu, y)),
                             (forward_t<double>(tasks, rows, in, out, x, w, bits, bias, relu, y)));
}

void cuda_masked_linear_input_grad(DType d, int tasks, int64_t rows, int64_t in, int64_t out, const void* const* dy,
                                   const void* w, const uint8_t* const* bits, void* const* dx) {
  if (tasks == 0 || rows == 0 || in == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d, (input_grad_t<float>(tasks, rows, in, out, dy, w, bits, dx)),
                             (input_grad_t<double>(tasks, rows, in, out, dy, w, bits, dx)));
}

void cuda_masked_linear_weight_grad(DType d, int tasks, int64_t rows, int64_t in, int64_t out, const void* const* x,
                                    const void* const* dy, const uint8_t* const* bits, void* dw) {
  if (tasks == 0 || in == 0 || out == 0) return;
  NCSREC_CUDA_FLOAT_DISPATCH(d, (weight_grad_t<float>(tasks, rows, in, out, x, dy, bits, dw)),
                             (weight_grad_t<double>(tasks, rows, in, out, x, dy, bits, dw)));
}

}  // namespace

void add_cuda_masked_linear_ops(OpTable& t) {
  t.masked_linear_forward = cuda_masked_linear_forward;
  t.masked_linear_input_grad = cuda_masked_linear_input_grad;
  t.masked_linear_weight_grad = cuda_masked_linear_weight_grad;
}

}  // namespace ncsrec
