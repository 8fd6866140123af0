// CUDA/CPU parity for the embedding table's training step: CudaEmbeddingTable
// (cuda/embedding_table.h) against the CPU table (embedding/sharded_table.h, one process) with
// the CPU embedding bag and sparse optimizer, for a fixed and a hash table, with sum pooling and
// Adagrad and with mean pooling and lazy Adam, over several training steps on random bags of
// skewed ids (repeats within and across bags, new ids every step, some empty bags).
//
// Outputs are poisoned with NaN (plus a guard row that must survive) before each GPU forward.
// Bounds: a pooled output element within 1e-5 · Σ|pooled values| of the CPU's; after the
// steps, every row's value and optimizer state within 1e-5 relative (plus 1e-7 absolute) of the
// CPU's, and the same set of keys. The rounding of both sides is the same by construction (_rn
// intrinsics), so in practice they agree to the bit; the bound allows for the device's double
// log, cos and pow (row initialisation, Adam's bias corrections) differing by an ulp.
//
// Without a GPU every test skips with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/device_table.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/layers/embedding_bag.h"
#include "core/optim.h"
#include "core/random.h"
#include "core/tensor.h"
#include "cuda/device.h"
#include "cuda/embedding_table.h"
#include "embedding/embedding_table.h"
#include "embedding/sharded_table.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/random_inputs.h"
#include "tests/unit/fake_device.h"

namespace ncsrec {
namespace {

class CudaEmbeddingParity : public gpu_test::GpuTest {};

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

// Device copies of a host vector, freed on scope exit (through the backend's dispatch table).
template <class T>
struct DeviceCopy {
  T* ptr = nullptr;
  explicit DeviceCopy(const std::vector<T>& host) {
    const OpTable& ops = ops_for(Device::CUDA);
    ptr = static_cast<T*>(ops.alloc(std::max<size_t>(1, host.size()) * sizeof(T)));
    if (!host.empty()) ops.copy(ptr, host.data(), host.size() * sizeof(T), CopyKind::HostToDevice);
  }
  ~DeviceCopy() { ops_for(Device::CUDA).free(ptr); }
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;
  std::vector<T> to_host(size_t n) const {
    std::vector<T> out(n);
    if (n) ops_for(Device::CUDA).copy(out.data(), ptr, n * sizeof(T), CopyKind::DeviceToHost);
    return out;
  }
};

CudaEmbeddingOptions gpu_options(int64_t rows, bool hash = true, bool mean = false, const std::string& optimizer = "adagrad") {
  CudaEmbeddingOptions o;
  o.name = "items";
  o.hash = hash;
  o.rows = rows;
  o.dim = kDim;
  o.mean_pooling = mean;
  o.seed = kSeed;
  o.init_scale = kScale;
  o.optimizer = optimizer;
  o.lr = optimizer == "adam" ? 0.01 : 0.05;
  o.eps = optimizer == "adam" ? 1e-8 : 1e-10;
  o.initial_accumulator = 0.1;
  return o;
}

// The model's device table of the same table (core/device_table.h): `rows` rows (a hash table:
// its capacity), the test's dim, seed and scale.
DeviceTableSpec device_spec(int64_t rows, bool hash, const std::string& optimizer) {
  DeviceTableSpec spec;
  spec.name = "items";
  spec.hash = hash;
  spec.rows = rows;
  spec.dim = kDim;
  spec.seed = kSeed;
  spec.init_scale = kScale;
  spec.optimizer.type = optimizer;
  spec.optimizer.initial_accumulator = 0.1;
  return spec;
}

// The CPU table and sparse optimizer matching GPU options `o` (a hash table of capacity o.rows).
struct CpuTwin {
  HashOptions hash;
  std::unique_ptr<ShardedTable> table;
  std::unique_ptr<SparseOptimizer> optimizer;
};
CpuTwin cpu_twin(const CudaEmbeddingOptions& o) {
  CpuTwin t;
  t.hash.capacity = o.rows;
  t.table = std::make_unique<ShardedTable>("items", o.rows, kDim, DType::F32, kSeed, kScale, Placement::RowWise, 0, 0, 1,
                                           o.hash ? &t.hash : nullptr);
  OptimizerConfig oc;
  oc.type = o.optimizer;
  oc.lr = o.lr;
  oc.eps = oc.adagrad_eps = o.eps;
  oc.initial_accumulator = o.initial_accumulator;
  t.optimizer = make_sparse_optimizer(oc, t.table->shard());
  return t;
}

void check_training(bool hash, bool mean, const std::string& optimizer) {
  const std::string what = std::string(hash ? "hash" : "fixed") + (mean ? " mean " : " sum ") + optimizer;
  const int64_t rows = hash ? 5000 : 700;  // fixed: the ids wrap around the rows
  const CudaEmbeddingOptions o = gpu_options(rows, hash, mean, optimizer);
  CpuTwin twin = cpu_twin(o);
  ShardedTable& cpu = *twin.table;
  auto& sparse = twin.optimizer;
  CudaEmbeddingTable gpu(o);
  const Pooling pooling = mean ? Pooling::Mean : Pooling::Sum;

  for (int step = 0; step < 6; ++step) {
    const Bags bags = random_bags(300, 2000, 100 + step);
    const int64_t B = bags.batch();
    // CPU: lookup (a hash table inserts), pooled forward, backward, the sparse optimizer.
    ShardedTable::Lookup lookup;
    cpu.lookup({{bags.ids.data(), static_cast<int64_t>(bags.ids.size())}}, nullptr, &lookup, true);
    Tensor out_cpu = Tensor::empty({B, kDim}, DType::F32);
    embedding_bag_forward(out_cpu, 0, lookup.values, bags.offsets.data(), lookup.ids[0].data(), B, pooling);
    const Tensor dout = testing::random_f32({B, kDim}, 900 + step);
    const SparseGrad compact = embedding_bag_backward(
        dout, {{bags.offsets.data(), lookup.ids[0].data(), 0, pooling}}, B, lookup.values.dim(0), kDim);
    sparse->step(cpu.shard(), cpu.reduce_gradient(lookup, compact, nullptr));

    // GPU: the same, the output poisoned with a guard row.
    DeviceCopy<int64_t> offsets(bags.offsets), ids(bags.ids);
    DeviceCopy<float> out(std::vector<float>(static_cast<size_t>((B + 1) * kDim), std::numeric_limits<float>::quiet_NaN()));
    gpu.forward(offsets.ptr, ids.ptr, B, static_cast<int64_t>(bags.ids.size()), out.ptr, true);
    const std::vector<float> got = out.to_host(static_cast<size_t>((B + 1) * kDim));
    for (int64_t d = 0; d < kDim; ++d)
      EXPECT_TRUE(std::isnan(got[static_cast<size_t>(B * kDim + d)])) << what << ": guard row written";
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < kDim; ++d) {
        double bound = 0;
        for (int64_t k = bags.offsets[b]; k < bags.offsets[b + 1]; ++k)
          bound += std::fabs(lookup.values.data<float>()[lookup.ids[0][static_cast<size_t>(k)] * kDim + d]);
        const float want = out_cpu.data<float>()[b * kDim + d], have = got[static_cast<size_t>(b * kDim + d)];
        ASSERT_LE(std::fabs(have - want), 1e-5 * bound + 1e-30) << what << ": step " << step << " bag " << b << " element " << d;
      }
    DeviceCopy<float> dout_gpu(std::vector<float>(dout.data<float>(), dout.data<float>() + dout.numel()));
    gpu.backward_update(dout_gpu.ptr);
  }

  // Every row: the same keys, values and optimizer state.
  const CudaEmbeddingTable::Snapshot snap = gpu.snapshot();
  ASSERT_EQ(static_cast<int64_t>(snap.keys.size()), cpu.shard().rows()) << what;
  ASSERT_EQ(gpu.rows(), cpu.shard().rows()) << what;
  auto close = [&](float got, float want, const std::string& name, int64_t key, int64_t d) {
    EXPECT_NEAR(got, want, 1e-5 * std::fabs(want) + 1e-7) << what << ": key " << key << " " << name << " " << d;
  };
  for (size_t i = 0; i < snap.keys.size(); ++i) {
    const int64_t r = cpu.shard_index(snap.keys[i]);
    ASSERT_GE(r, 0) << what << ": key " << snap.keys[i] << " has a GPU row and no CPU row";
    for (int64_t d = 0; d < kDim; ++d)
      close(snap.values[i * kDim + d], cpu.shard().values().data<float>()[r * kDim + d], "value", snap.keys[i], d);
    for (const auto& [name, column] : snap.state) {
      const Tensor* state = nullptr;
      for (auto& [n, t] : sparse->state())
        if (n == name) state = t;
      ASSERT_NE(state, nullptr) << what << ": the CPU optimizer has no state " << name;
      if (name == "steps") {
        EXPECT_EQ(static_cast<int64_t>(column[i]), state->data<int64_t>()[r]) << what << ": key " << snap.keys[i];
        continue;
      }
      for (int64_t d = 0; d < kDim; ++d) close(column[i * kDim + d], state->data<float>()[r * kDim + d], name, snap.keys[i], d);
    }
  }
}

// Two slots read one table into columns 3 and 3 + dim + 2 of a wider buffer whose other columns
// must stay poisoned; a row read by both slots gets one update from their summed gradients.
void check_two_slots(bool hash, bool mean, const std::string& optimizer) {
  const std::string what = std::string("two slots, ") + (hash ? "hash" : "fixed") + (mean ? " mean " : " sum ") + optimizer;
  const int64_t rows = hash ? 5000 : 700, cols = 3 + kDim + 2 + kDim + 1, col0 = 3, col1 = 3 + kDim + 2;
  const CudaEmbeddingOptions o = gpu_options(rows, hash, mean, optimizer);
  CpuTwin twin = cpu_twin(o);
  ShardedTable& cpu = *twin.table;
  auto& sparse = twin.optimizer;
  CudaEmbeddingTable gpu(o);
  const Pooling pooling = mean ? Pooling::Mean : Pooling::Sum;
  for (int step = 0; step < 4; ++step) {
    const Bags a = random_bags(200, 1500, 300 + step), b = random_bags(200, 1500, 400 + step);
    const int64_t B = a.batch();
    ShardedTable::Lookup lookup;
    cpu.lookup({{a.ids.data(), static_cast<int64_t>(a.ids.size())}, {b.ids.data(), static_cast<int64_t>(b.ids.size())}},
               nullptr, &lookup, true);
    Tensor out_cpu = Tensor::empty({B, cols}, DType::F32);
    for (int64_t i = 0; i < out_cpu.numel(); ++i) out_cpu.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
    embedding_bag_forward(out_cpu, col0, lookup.values, a.offsets.data(), lookup.ids[0].data(), B, pooling);
    embedding_bag_forward(out_cpu, col1, lookup.values, b.offsets.data(), lookup.ids[1].data(), B, pooling);
    const Tensor dout = testing::random_f32({B, cols}, 700 + step);
    const SparseGrad compact = embedding_bag_backward(
        dout, {{a.offsets.data(), lookup.ids[0].data(), col0, pooling}, {b.offsets.data(), lookup.ids[1].data(), col1, pooling}},
        B, lookup.values.dim(0), kDim);
    sparse->step(cpu.shard(), cpu.reduce_gradient(lookup, compact, nullptr));

    DeviceCopy<int64_t> ao(a.offsets), ai(a.ids), bo(b.offsets), bi(b.ids);
    DeviceCopy<float> out(std::vector<float>(static_cast<size_t>(B * cols), std::numeric_limits<float>::quiet_NaN()));
    gpu.forward({{ao.ptr, ai.ptr, static_cast<int64_t>(a.ids.size()), col0}, {bo.ptr, bi.ptr, static_cast<int64_t>(b.ids.size()), col1}},
                B, out.ptr, cols, true);
    const std::vector<float> got = out.to_host(static_cast<size_t>(B * cols));
    for (int64_t i = 0; i < B * cols; ++i) {
      const float want = out_cpu.data<float>()[i], have = got[static_cast<size_t>(i)];
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(have)) << what << ": column " << i % cols << " written";
        continue;
      }
      ASSERT_NEAR(have, want, 1e-5 * std::fabs(want) + 1e-6) << what << ": step " << step << " element " << i;
    }
    DeviceCopy<float> dout_gpu(std::vector<float>(dout.data<float>(), dout.data<float>() + dout.numel()));
    gpu.backward_update(dout_gpu.ptr, cols);
  }
  const CudaEmbeddingTable::Snapshot snap = gpu.snapshot();
  ASSERT_EQ(static_cast<int64_t>(snap.keys.size()), cpu.shard().rows()) << what;
  for (size_t i = 0; i < snap.keys.size(); ++i) {
    const int64_t r = cpu.shard_index(snap.keys[i]);
    ASSERT_GE(r, 0) << what;
    for (int64_t d = 0; d < kDim; ++d) {
      const float want = cpu.shard().values().data<float>()[r * kDim + d];
      EXPECT_NEAR(snap.values[i * kDim + d], want, 1e-5 * std::fabs(want) + 1e-7) << what << ": key " << snap.keys[i];
    }
  }
}

TEST_F(CudaEmbeddingParity, SeveralSlotsOfOneTableWriteTheirColumnsAndShareOneUpdate) {
  check_two_slots(false, true, "adam");
  check_two_slots(true, false, "adagrad");
}

TEST_F(CudaEmbeddingParity, TrainingStepsMatchTheCpuTableRowForRow) {
  for (bool hash : {false, true}) {
    check_training(hash, false, "adagrad");
    check_training(hash, true, "adam");
  }
}

TEST_F(CudaEmbeddingParity, InferenceNeverInsertsAndReadsZerosForUnknownIds) {
  CudaEmbeddingTable gpu(gpu_options(100));
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
  EXPECT_THROW(gpu.backward_update(out.ptr), InternalError);  // the last forward was not a training one
}

TEST_F(CudaEmbeddingParity, AFullTableIsAUserErrorNamingTheTable) {
  CudaEmbeddingTable gpu(gpu_options(4));
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

// The model's device table (core/device_table.h, registered by cuda/ with the backend) against
// the host's path for the same table (tests/unit/fake_device.h's HostTwinTable: the model's own
// lookup, embedding bag and sparse optimizer): fixed and hash tables, each optimizer, rows,
// state and counters loaded from random host columns first (a hash table with some ids already
// in it), then steps of two slots of one table pooled differently (sum, mean) with new ids, a
// rate, a day and a step each. Outputs within 1e-5 (NaN-poisoned, a column between the slots
// must stay poisoned); afterwards the same keys, and per key the same values and state (1e-5
// relative) and counters (exactly).
// With admission (admit_after > 1, evict_when_full; `capacity` rows): ids pending are loaded too,
// more steps run, and the pending ids (id, reads, last day) and the counts of insertions,
// evictions and pending ids are the host's as well.
void check_device_table(bool hash, const std::string& optimizer, int64_t admit_after = 1, bool evict = false,
                        int64_t room = 2000) {
  SCOPED_TRACE(std::string(hash ? "hash " : "fixed ") + optimizer + ", admit_after " + std::to_string(admit_after) +
               (evict ? ", evict_when_full" : ""));
  const DeviceTableFactory make = device_table_factory(Device::CUDA);
  ASSERT_NE(make, nullptr) << "the backend registers its tables";
  // The starting rows: every row of a fixed table, the ids of 60 bags of a hash table, whose
  // capacity holds `room` more.
  std::vector<int64_t> keys;
  if (hash) {
    const Bags first = random_bags(60, 400, 3);
    std::vector<int64_t> ids = first.ids;
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    keys = ids;
  } else {
    for (int64_t r = 0; r < 300; ++r) keys.push_back(r);
  }
  DeviceTableSpec spec = device_spec(hash ? static_cast<int64_t>(keys.size()) + room : 300, hash, optimizer);
  spec.admit_after = admit_after;
  spec.evict_when_full = evict;
  std::unique_ptr<DeviceTable> gpu = make(spec);
  std::unique_ptr<DeviceTable> host = testing::make_host_twin_table(spec);
  const auto n = static_cast<size_t>(keys.size()), nd = n * static_cast<size_t>(kDim);
  Rng rng(77);
  std::vector<std::vector<float>> floats;
  std::vector<std::vector<int64_t>> ints;
  std::vector<DeviceTable::Column> columns;
  auto float_column = [&](const char* name, size_t size, double lo) {
    floats.emplace_back(size);
    for (float& v : floats.back()) v = static_cast<float>(lo + rng.uniform());
    columns.push_back({name, floats.back().data()});
  };
  auto int_column = [&](const char* name, int64_t lo) {
    ints.emplace_back(n);
    for (int64_t& v : ints.back()) v = lo + static_cast<int64_t>(rng.below(5));
    columns.push_back({name, ints.back().data()});
  };
  floats.reserve(4);
  ints.reserve(4);
  float_column("values", nd, -0.5);
  if (optimizer == "adagrad") float_column("accumulator", nd, 0.01);
  if (optimizer == "adam") {
    float_column("m", nd, -0.5);
    float_column("v", nd, 0.01);
    int_column("steps", 0);
  }
  int_column("count", 0);
  // Days after the steps' and steps before theirs: eviction's order (by day, then step) is
  // not the steps' order.
  int_column("last_seen_day", 19100);
  int_column("updated_step", 0);
  // Ids read before but not admitted yet: some of the next bags' ids outside the table.
  std::vector<PendingId> pending;
  if (admit_after > 1) {
    const Bags next = random_bags(200, 400, 11);
    std::set<int64_t> ids(next.ids.begin(), next.ids.end());
    for (const int64_t id : ids)
      if (!std::binary_search(keys.begin(), keys.end(), id) && rng.below(2) == 0)
        pending.push_back({id, 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(admit_after - 1))),
                           19100 + static_cast<int64_t>(rng.below(5))});
    ASSERT_GT(pending.size(), 10u);
  }
  gpu->load(keys, columns, pending);
  host->load(keys, columns, pending);
  ASSERT_EQ(gpu->keys().size(), n);
  EXPECT_EQ(gpu->hash_counts().pending, static_cast<int64_t>(pending.size()));

  const int64_t B = 64, cols = 3 * kDim;  // slot a at column 0, slot b at 2·dim; the middle untouched
  const int steps = admit_after > 1 || evict ? 8 : 3;
  for (int step = 1; step <= steps; ++step) {
    const Bags a = random_bags(B, 400, 10 + step), b = random_bags(B, 400, 20 + step);
    const std::vector<DeviceTable::Slot> slots{{a.offsets.data(), a.ids.data(), static_cast<int64_t>(a.ids.size()), 0, false},
                                               {b.offsets.data(), b.ids.data(), static_cast<int64_t>(b.ids.size()), 2 * kDim, true}};
    const int64_t day = 19010 + step;
    DeviceCopy<float> out(std::vector<float>(static_cast<size_t>(B * cols), std::numeric_limits<float>::quiet_NaN()));
    gpu->forward(slots, B, out.ptr, cols, true, day);
    const std::vector<float> got = out.to_host(static_cast<size_t>(B * cols));
    std::vector<float> want(static_cast<size_t>(B * cols), std::numeric_limits<float>::quiet_NaN());
    host->forward(slots, B, want.data(), cols, true, day);
    for (size_t i = 0; i < got.size(); ++i) {
      if (std::isnan(want[i])) {
        EXPECT_TRUE(std::isnan(got[i])) << "column " << i % cols << " belongs to no slot";
        continue;
      }
      ASSERT_NEAR(got[i], want[i], 1e-5 * (1.0 + std::abs(want[i]))) << "step " << step << " element " << i;
    }
    std::vector<float> dout(static_cast<size_t>(B * cols));
    for (float& v : dout) v = static_cast<float>(rng.normal());
    DeviceCopy<float> d_dout(dout);
    const double lr = 0.05 / step;
    gpu->backward_update(d_dout.ptr, cols, lr, 100 + step);
    host->backward_update(dout.data(), cols, lr, 100 + step);
  }

  // The same keys, pending ids and counts; per key the same columns.
  const std::vector<int64_t> gk = gpu->keys(), hk = host->keys();
  ASSERT_EQ(std::set<int64_t>(gk.begin(), gk.end()), std::set<int64_t>(hk.begin(), hk.end()));
  if (hash && !evict) EXPECT_GT(gk.size(), n) << "the steps inserted new ids";
  const std::vector<PendingId> gp = gpu->pending(), hp = host->pending();
  ASSERT_EQ(gp.size(), hp.size());
  for (size_t i = 0; i < gp.size(); ++i) {
    EXPECT_EQ(gp[i].id, hp[i].id) << i;
    EXPECT_EQ(gp[i].count, hp[i].count) << gp[i].id;
    EXPECT_EQ(gp[i].last_seen_day, hp[i].last_seen_day) << gp[i].id;
  }
  const DeviceHashCounts gc = gpu->hash_counts(), hc = host->hash_counts();
  EXPECT_EQ(gc.inserted, hc.inserted);
  EXPECT_EQ(gc.evicted_full, hc.evicted_full);
  EXPECT_EQ(gc.pending, hc.pending);
  if (admit_after > 1) EXPECT_GT(hc.pending, 0) << "some ids wait for admission";
  if (evict) EXPECT_GT(hc.evicted_full, 0) << "the table filled up and evicted";
  std::map<int64_t, size_t> host_row;
  for (size_t i = 0; i < hk.size(); ++i) host_row[hk[i]] = i;
  for (const DeviceTable::Column& c : columns) {
    const bool is_int = c.name == "steps" || c.name == "count" || c.name == "last_seen_day" || c.name == "updated_step";
    const size_t width = is_int ? 1 : static_cast<size_t>(kDim), rows = gk.size();
    if (is_int) {
      std::vector<int64_t> g(rows), h(rows);
      gpu->store({{c.name, g.data()}});
      host->store({{c.name, h.data()}});
      for (size_t i = 0; i < rows; ++i)
        ASSERT_EQ(g[i], h[host_row[gk[i]]]) << c.name << " of key " << gk[i];
    } else {
      std::vector<float> g(rows * width), h(rows * width);
      gpu->store({{c.name, g.data()}});
      host->store({{c.name, h.data()}});
      for (size_t i = 0; i < rows; ++i)
        for (size_t d = 0; d < width; ++d) {
          const float w = h[host_row[gk[i]] * width + d];
          ASSERT_NEAR(g[i * width + d], w, 1e-5 * std::fabs(w) + 1e-7) << c.name << " of key " << gk[i];
        }
    }
  }
}

TEST_F(CudaEmbeddingParity, TheModelsDeviceTableTrainsAsTheHostsPath) {
  for (const bool hash : {false, true})
    for (const char* optimizer : {"sgd", "adagrad", "adam"}) check_device_table(hash, optimizer);
}

// Hash tables that admit an id at its third read, or evict the least recently seen rows when
// full (at the first read, and at the second), against the host's path.
TEST_F(CudaEmbeddingParity, AdmissionAndEvictionWhenFullFollowTheHostsPath) {
  check_device_table(true, "adagrad", 3, false);
  check_device_table(true, "adam", 1, true, 120);
  check_device_table(true, "sgd", 2, true, 120);
}

// A load whose pending ids repeat an id, or one of its keys, is refused before anything
// changes: the table keeps its rows, pending ids and counts.
TEST_F(CudaEmbeddingParity, ARefusedLoadLeavesTheTableAsItWas) {
  DeviceTableSpec spec = device_spec(16, true, "sgd");
  spec.admit_after = 3;
  std::unique_ptr<DeviceTable> table = device_table_factory(Device::CUDA)(spec);
  std::vector<float> values(2 * kDim, 0.25f);
  table->load({7, 9}, {{"values", values.data()}}, {{11, 2, 5}});
  for (const std::vector<PendingId>& bad : {std::vector<PendingId>{{12, 1, 5}, {12, 2, 5}},
                                            std::vector<PendingId>{{2, 1, 5}}, std::vector<PendingId>{{13, 0, 5}}}) {
    std::vector<float> other(3 * kDim, 0.5f);
    EXPECT_THROW(table->load({1, 2, 3}, {{"values", other.data()}}, bad), InternalError);
    EXPECT_EQ(table->keys(), (std::vector<int64_t>{7, 9}));
    ASSERT_EQ(table->pending().size(), 1u);
    EXPECT_EQ(table->pending()[0].id, 11);
    EXPECT_EQ(table->hash_counts().pending, 1);
  }
}

// Without evict_when_full, a batch whose admitted ids do not fit is a UserError naming the table,
// before any row changes; with it, a batch that brings more new ids than the capacity is one too.
TEST_F(CudaEmbeddingParity, AFullTableThatMayNotEvictIsAUserErrorWithAdmission) {
  for (const bool evict : {false, true}) {
    DeviceTableSpec spec = device_spec(4, true, "adagrad");
    spec.admit_after = 2;
    spec.evict_when_full = evict;
    std::unique_ptr<DeviceTable> table = device_table_factory(Device::CUDA)(spec);
    std::vector<int64_t> offsets{0}, ids;
    for (int64_t i = 0; i < 6; ++i) {
      ids.insert(ids.end(), {100 + i, 100 + i});  // read twice: admitted by this batch
      offsets.push_back(static_cast<int64_t>(ids.size()));
    }
    DeviceCopy<float> out(std::vector<float>(6 * kDim, 0.0f));
    try {
      table->forward({{offsets.data(), ids.data(), static_cast<int64_t>(ids.size()), 0, false}}, 6, out.ptr, kDim, true, 1);
      FAIL() << "expected a UserError";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("hash table items (GPU) is full"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("6 new ids"), std::string::npos) << e.what();
    }
    EXPECT_EQ(table->rows(), 0) << "nothing was inserted";
  }
}

// The memory plan of a device table (MultiTaskModel::plan_memory reserves one id per bag of
// each slot): batches within it allocate no device memory in forward or backward, the first
// included; a batch past it grows the buffers once, and another of that size allocates nothing
// more.
TEST_F(CudaEmbeddingParity, AReservedTableAllocatesNothingForBatchesWithinItsPlan) {
  for (const bool hash : {false, true}) {
    SCOPED_TRACE(hash ? "hash" : "fixed");
    std::unique_ptr<DeviceTable> table = device_table_factory(Device::CUDA)(device_spec(5000, hash, "adam"));
    const int64_t B = 64, cols = 2 * kDim;
    table->reserve(2, B, 2 * B);
    DeviceCopy<float> out(std::vector<float>(static_cast<size_t>(4 * B * cols), 0.0f));
    DeviceCopy<float> dout(std::vector<float>(static_cast<size_t>(4 * B * cols), 0.5f));
    auto step = [&](int64_t ids_per_bag, uint64_t seed) {
      Rng rng(seed);
      std::vector<int64_t> offsets{0}, a, b;
      for (int64_t r = 0; r < B; ++r) {
        for (int64_t k = 0; k < ids_per_bag; ++k) {
          a.push_back(static_cast<int64_t>(rng.below(3000)));
          b.push_back(static_cast<int64_t>(rng.below(3000)));
        }
        offsets.push_back(static_cast<int64_t>(a.size()));
      }
      const auto nnz = static_cast<int64_t>(a.size());
      table->forward({{offsets.data(), a.data(), nnz, 0, false}, {offsets.data(), b.data(), nnz, kDim, true}}, B, out.ptr,
                     cols, true, 1);
      table->backward_update(dout.ptr, cols, 0.01, 1);
    };
    const int64_t planned = cuda_device_buffer_allocations();
    for (uint64_t s = 1; s < 6; ++s) step(1, s);
    EXPECT_EQ(cuda_device_buffer_allocations(), planned) << "batches within the plan allocated";
    step(3, 10);
    const int64_t grown = cuda_device_buffer_allocations();
    EXPECT_GT(grown, planned) << "three ids a bag exceed the plan";
    step(3, 11);
    EXPECT_EQ(cuda_device_buffer_allocations(), grown) << "the grown buffers hold another such batch";
  }
}

// INT64_MIN marks an empty slot of the GPU's hash index: a batch holding it is refused by name
// before anything changes, and the table goes on working.
TEST_F(CudaEmbeddingParity, TheReservedIdIsRefusedByTheModelsHashTable) {
  std::unique_ptr<DeviceTable> table = device_table_factory(Device::CUDA)(device_spec(100, true, "adagrad"));
  const std::vector<int64_t> offsets{0, 2}, bad{5, INT64_MIN}, good{5, 6};
  DeviceCopy<float> out(std::vector<float>(kDim, 0.0f));
  try {
    table->forward({{offsets.data(), bad.data(), 2, 0, false}}, 1, out.ptr, kDim, true, 1);
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("hash table items"), std::string::npos) << e.what();
  }
  EXPECT_EQ(table->rows(), 0) << "nothing was inserted";
  table->forward({{offsets.data(), good.data(), 2, 0, false}}, 1, out.ptr, kDim, true, 1);
  EXPECT_EQ(table->rows(), 2);
}

TEST(CudaEmbeddingTableNoGpu, BuildingOneWithoutAGpuThrowsInsteadOfCrashing) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present";
  EXPECT_THROW(CudaEmbeddingTable table(gpu_options(10)), InternalError);
}

}  // namespace
}  // namespace ncsrec
