// AUC on the device (the `auc` entry of the CUDA table): the scores sorted with their indices
// (CUB radix sort), equal scores grouped by a flag scan, each group's positive and negative
// weight summed in index order by one thread, the negatives below each group by an exclusive
// scan, and wins = Σ_g pos_g · (neg_below_g + neg_g / 2) through the table's deterministic sum:
// the CPU's formula (core/metrics/metrics.cpp), group by group. With unit weights every term is
// a multiple of 1/2 below 2^53, so the result equals the CPU's exactly.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <limits>
#include <mutex>

#include "core/dispatch.h"
#include "core/error.h"
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/train_ops.h"

namespace ncsrec {
namespace {

using namespace cuda_detail;

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__global__ void iota_i32_kernel(int32_t* p, int64_t n) {
  GRID_STRIDE(i, n) p[i] = static_cast<int32_t>(i);
}

__global__ void group_flags_kernel(const float* sorted, int64_t n, int32_t* flags) {
  GRID_STRIDE(i, n) flags[i] = (i == 0 || sorted[i] != sorted[i - 1]) ? 1 : 0;
}

__global__ void group_starts_kernel(const int32_t* flags, const int32_t* gid1, int64_t n, int64_t* start) {
  GRID_STRIDE(i, n) {
    if (flags[i]) start[gid1[i] - 1] = i;
    if (i == n - 1) start[gid1[i]] = n;
  }
}

__global__ void group_sums_kernel(const int64_t* start, int64_t groups, const int32_t* order, const float* labels,
                                  const float* weights, double* pos, double* neg) {
  GRID_STRIDE(g, groups) {
    double p = 0, q = 0;
    for (int64_t i = start[g]; i < start[g + 1]; ++i) {
      const int32_t k = order[i];
      const double w = weights ? static_cast<double>(weights[k]) : 1.0;
      if (labels[k] > 0.5f) p += w;
      else q += w;
    }
    pos[g] = p;
    neg[g] = q;
  }
}

__global__ void wins_kernel(const double* pos, const double* neg, const double* below, int64_t groups, double* wins) {
  GRID_STRIDE(g, groups) wins[g] = pos[g] * (below[g] + 0.5 * neg[g]);
}

std::mutex g_auc_mutex;  // guards the scratch buffers below (grown to the largest eval set)
DeviceVector<float> g_sorted;
DeviceVector<int32_t> g_index, g_order, g_flags, g_gid1;
DeviceVector<int64_t> g_start;
DeviceVector<double> g_pos, g_neg, g_below, g_wins;
DeviceVector<char> g_cub;

double cuda_auc(const float* scores, const float* labels, const float* weights, int64_t n) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (n <= 0) return nan;
  NCSREC_CHECK(n <= INT32_MAX, "CUDA auc: " << n << " scores exceed the kernel's 32-bit index");
  std::lock_guard<std::mutex> lock(g_auc_mutex);
  const int items = static_cast<int>(n);
  iota_i32_kernel<<<blocks_for(n), kThreads>>>(g_index.reserve(n), n);
  NCSREC_CUDA_LAUNCH_CHECK();
  size_t sort_bytes = 0, scan_bytes = 0, dscan_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, scores, g_sorted.reserve(n), g_index.get(),
                                             g_order.reserve(n), items));
  CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, g_flags.reserve(n), g_gid1.reserve(n), items));
  CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, dscan_bytes, g_neg.reserve(n), g_below.reserve(n), items));
  char* scratch = g_cub.reserve(static_cast<int64_t>(std::max({sort_bytes, scan_bytes, dscan_bytes})));
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch, sort_bytes, scores, g_sorted.get(), g_index.get(), g_order.get(), items));
  group_flags_kernel<<<blocks_for(n), kThreads>>>(g_sorted.get(), n, g_flags.get());
  NCSREC_CUDA_LAUNCH_CHECK();
  CUDA_CHECK(cub::DeviceScan::InclusiveSum(scratch, scan_bytes, g_flags.get(), g_gid1.get(), items));
  int32_t groups = 0;
  CUDA_CHECK(cudaMemcpy(&groups, g_gid1.get() + (n - 1), sizeof(groups), cudaMemcpyDeviceToHost));
  group_starts_kernel<<<blocks_for(n), kThreads>>>(g_flags.get(), g_gid1.get(), n, g_start.reserve(groups + 1));
  NCSREC_CUDA_LAUNCH_CHECK();
  group_sums_kernel<<<blocks_for(groups), kThreads>>>(g_start.get(), groups, g_order.get(), labels, weights,
                                                      g_pos.reserve(groups), g_neg.get());
  NCSREC_CUDA_LAUNCH_CHECK();
  CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scratch, dscan_bytes, g_neg.get(), g_below.get(), groups));
  wins_kernel<<<blocks_for(groups), kThreads>>>(g_pos.get(), g_neg.get(), g_below.get(), groups, g_wins.reserve(groups));
  NCSREC_CUDA_LAUNCH_CHECK();
  const OpTable& ops = ops_for(Device::CUDA);
  const double positives = ops.sum(DType::F64, g_pos.get(), groups), negatives = ops.sum(DType::F64, g_neg.get(), groups);
  if (positives <= 0 || negatives <= 0) return nan;
  return ops.sum(DType::F64, g_wins.get(), groups) / (positives * negatives);
}

}  // namespace

void add_cuda_metric_ops(OpTable& t) { t.auc = cuda_auc; }

}  // namespace ncsrec
