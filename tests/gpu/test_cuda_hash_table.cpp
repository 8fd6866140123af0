// CUDA/CPU parity for the hash embedding table: CudaHashTable (cuda/hash_table.h) against the
// CPU hash table (embedding/sharded_table.h, one process) with the CPU embedding bag and
// sparse Adagrad, over several training steps on random bags of Zipf-like ids (repeats within
// and across bags, new ids every step, some empty bags).
//
// Outputs are poisoned with NaN (plus a guard row that must survive) before each GPU forward.
// Bounds: a pooled output element within 1e-5 · Σ|summed values| of the CPU's; after the
// steps, every row's value and accumulator within 1e-5 relative (plus 1e-7 absolute) of the
// CPU's, and the same set of ids. The rounding of both sides is the same by construction
// (_rn intrinsics), so in practice they agree to the bit; the bound only allows for the
// device's double log/cos in the initialisation differing by an ulp.
//
// Without a GPU every test skips with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "core/error.h"
#include "core/layers/embedding_bag.h"
#include "core/optim.h"
#include "core/random.h"
#include "core/tensor.h"
#include "cuda/device.h"
#include "cuda/hash_table.h"
#include "embedding/embedding_table.h"
#include "embedding/sharded_table.h"
#include "tests/random_inputs.h"

namespace ncsrec {
namespace {

class CudaHashParity : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!cuda_register_if_available(&why)) GTEST_SKIP() << "the GPU hash table needs a GPU: " << why;
  }
};

constexpr int64_t kDim = 8;
constexpr double kScale = 0.1;
constexpr uint64_t kSeed = 5;

// Bags of ids: sizes 0..4, ids from a heavy-tailed draw over [0, vocabulary) scattered over
// the int64 range (negative ids included), so repeats and new ids both occur.
struct Bags {
  std::vector<int64_t> offsets{0}, ids;
  int64_t batch() const { return static_cast<int64_t>(offsets.size()) - 1; }
};
Bags random_bags(int64_t batch, int64_t vocabulary, uint64_t seed) {
  Rng rng(seed);
  Bags b;
  for (int64_t r = 0; r < batch; ++r) {
    const int64_t n = static_cast<int64_t>(rng.below(5));
    for (int64_t k = 0; k < n; ++k) {
      const double u = rng.uniform();
      const auto rank = static_cast<int64_t>(std::pow(static_cast<double>(vocabulary), u * u));  // skewed to small ranks
      b.ids.push_back(static_cast<int64_t>(mix64(static_cast<uint64_t>(rank))));
    }
    b.offsets.push_back(static_cast<int64_t>(b.ids.size()));
  }
  return b;
}

// Device copies of a host vector, freed on scope exit.
template <class T>
struct DeviceCopy {
  T* ptr = nullptr;
  explicit DeviceCopy(const std::vector<T>& host) {
    if (cudaMalloc(&ptr, std::max<size_t>(1, host.size()) * sizeof(T)) != cudaSuccess) throw InternalError("cudaMalloc");
    if (!host.empty() && cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess)
      throw InternalError("cudaMemcpy");
  }
  ~DeviceCopy() { (void)cudaFree(ptr); }
  std::vector<T> to_host(size_t n) const {
    std::vector<T> out(n);
    if (n && cudaMemcpy(out.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess)
      throw InternalError("cudaMemcpy");
    return out;
  }
};

CudaHashTableOptions gpu_options(int64_t capacity) {
  CudaHashTableOptions o;
  o.name = "items";
  o.capacity = capacity;
  o.dim = kDim;
  o.seed = kSeed;
  o.init_scale = kScale;
  o.lr = 0.05;
  o.eps = 1e-10;
  o.initial_accumulator = 0.1;
  return o;
}

TEST_F(CudaHashParity, TrainingStepsMatchTheCpuHashTableRowForRow) {
  const int64_t capacity = 5000;
  HashOptions h;
  h.capacity = capacity;
  ShardedTable cpu("items", 0, kDim, DType::F32, kSeed, kScale, Placement::RowWise, 0, 0, 1, &h);
  OptimizerConfig oc;
  oc.type = "adagrad";
  oc.lr = 0.05;
  oc.adagrad_eps = oc.eps = 1e-10;
  oc.initial_accumulator = 0.1;
  auto adagrad = make_sparse_optimizer(oc, cpu.shard());
  CudaHashTable gpu(gpu_options(capacity));

  for (int step = 0; step < 6; ++step) {
    const Bags bags = random_bags(300, 2000, 100 + step);
    const int64_t B = bags.batch();
    // CPU: lookup (inserting), pooled forward, backward, Adagrad.
    ShardedTable::Lookup lookup;
    cpu.lookup({{bags.ids.data(), static_cast<int64_t>(bags.ids.size())}}, nullptr, &lookup, true);
    Tensor out_cpu = Tensor::empty({B, kDim}, DType::F32);
    embedding_bag_forward(out_cpu, 0, lookup.values, bags.offsets.data(), lookup.ids[0].data(), B, Pooling::Sum);
    const Tensor dout = testing::random_f32({B, kDim}, 900 + step);
    const SparseGrad compact = embedding_bag_backward(
        dout, {{bags.offsets.data(), lookup.ids[0].data(), 0, Pooling::Sum}}, B, lookup.values.dim(0), kDim);
    adagrad->step(cpu.shard(), cpu.reduce_gradient(lookup, compact, nullptr));

    // GPU: the same, the output poisoned with a guard row.
    DeviceCopy<int64_t> offsets(bags.offsets), ids(bags.ids);
    DeviceCopy<float> out(std::vector<float>(static_cast<size_t>((B + 1) * kDim), std::numeric_limits<float>::quiet_NaN()));
    gpu.forward(offsets.ptr, ids.ptr, B, static_cast<int64_t>(bags.ids.size()), out.ptr, true);
    const std::vector<float> got = out.to_host(static_cast<size_t>((B + 1) * kDim));
    for (int64_t d = 0; d < kDim; ++d) EXPECT_TRUE(std::isnan(got[static_cast<size_t>(B * kDim + d)])) << "guard row written";
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < kDim; ++d) {
        double bound = 0;
        for (int64_t k = bags.offsets[b]; k < bags.offsets[b + 1]; ++k)
          bound += std::fabs(lookup.values.data<float>()[lookup.ids[0][static_cast<size_t>(k)] * kDim + d]);
        const float want = out_cpu.data<float>()[b * kDim + d], have = got[static_cast<size_t>(b * kDim + d)];
        ASSERT_LE(std::fabs(have - want), 1e-5 * bound + 1e-30) << "step " << step << " bag " << b << " element " << d;
      }
    DeviceCopy<float> dout_gpu(std::vector<float>(dout.data<float>(), dout.data<float>() + dout.numel()));
    gpu.backward_adagrad(dout_gpu.ptr);
  }

  // Every row: same ids, values and accumulators.
  std::vector<int64_t> ids;
  std::vector<float> values, acc;
  gpu.snapshot(&ids, &values, &acc);
  ASSERT_EQ(static_cast<int64_t>(ids.size()), cpu.shard().rows());
  ASSERT_EQ(gpu.rows(), cpu.shard().rows());
  const Tensor* cpu_acc = adagrad->state()[0].second;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t r = cpu.shard_index(ids[i]);
    ASSERT_GE(r, 0) << "id " << ids[i] << " has a GPU row and no CPU row";
    for (int64_t d = 0; d < kDim; ++d) {
      const float cv = cpu.shard().values().data<float>()[r * kDim + d], gv = values[i * kDim + d];
      const float ca = cpu_acc->data<float>()[r * kDim + d], ga = acc[i * kDim + d];
      EXPECT_NEAR(gv, cv, 1e-5 * std::fabs(cv) + 1e-7) << "id " << ids[i] << " element " << d;
      EXPECT_NEAR(ga, ca, 1e-5 * std::fabs(ca) + 1e-7) << "id " << ids[i] << " accumulator " << d;
    }
  }
}

TEST_F(CudaHashParity, InferenceNeverInsertsAndReadsZerosForUnknownIds) {
  CudaHashTable gpu(gpu_options(100));
  const std::vector<int64_t> offsets{0, 2, 3}, ids{11, 12, 11};
  DeviceCopy<int64_t> d_offsets(offsets), d_ids(ids);
  DeviceCopy<float> out(std::vector<float>(2 * kDim, std::numeric_limits<float>::quiet_NaN()));
  gpu.forward(d_offsets.ptr, d_ids.ptr, 2, 3, out.ptr, false);
  EXPECT_EQ(gpu.rows(), 0);
  for (float v : out.to_host(2 * kDim)) EXPECT_EQ(v, 0.0f);
  gpu.forward(d_offsets.ptr, d_ids.ptr, 2, 3, out.ptr, true);
  EXPECT_EQ(gpu.rows(), 2);
  // The same ids read the same rows on inference now, and a row's value depends on its id alone.
  const std::vector<float> trained = out.to_host(2 * kDim);
  gpu.forward(d_offsets.ptr, d_ids.ptr, 2, 3, out.ptr, false);
  EXPECT_EQ(out.to_host(2 * kDim), trained);
  EXPECT_THROW(gpu.backward_adagrad(out.ptr), InternalError);  // the last forward was not a training one
}

TEST_F(CudaHashParity, AFullTableIsAUserErrorNamingTheTable) {
  CudaHashTable gpu(gpu_options(4));
  std::vector<int64_t> offsets{0}, ids;
  for (int64_t i = 0; i < 10; ++i) {
    ids.push_back(1000 + i);
    offsets.push_back(i + 1);
  }
  DeviceCopy<int64_t> d_offsets(offsets), d_ids(ids);
  DeviceCopy<float> out(std::vector<float>(10 * kDim, 0.0f));
  try {
    gpu.forward(d_offsets.ptr, d_ids.ptr, 10, 10, out.ptr, true);
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("hash table items (GPU) is full"), std::string::npos) << e.what();
  }
  EXPECT_EQ(gpu.rows(), 4);
}

TEST(CudaHashTableNoGpu, BuildingOneWithoutAGpuThrowsInsteadOfCrashing) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present";
  EXPECT_THROW(CudaHashTable table(gpu_options(10)), InternalError);
}

}  // namespace
}  // namespace ncsrec
