// A stand-in GPU for tests of the device code paths on machines without one: the CPU kernels
// registered in the CUDA slot of the dispatch table (copies of every kind become memcpy), and
// host tables as its device tables (HostTwinTable). Code
// written for a device then runs on host memory, and its host access to device tensors is still
// refused (Tensor::data checks the device), so a missing copy fails here as it would on a GPU.
// The real kernels are checked against the CPU ones by tests/gpu/.
#pragma once

#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/device_table.h"
#include "core/dispatch.h"
#include "core/layers/embedding_bag.h"
#include "core/layers/linear.h"
#include "core/sparse.h"
#include "embedding/embedding_table.h"
#include "embedding/sharded_table.h"

namespace ncsrec::testing {

// Calls of the stand-in device's tables.
inline std::atomic<int> g_table_forwards{0}, g_table_updates{0}, g_table_reserves{0};
inline std::atomic<int64_t> g_table_reserved_ids{0};  // the most ids one reserve asked for

// The stand-in device's embedding table (core/device_table.h): the host's table, lookup and
// sparse optimizer over "device" memory that is host memory (the model's own host path, step
// for step), so a model training its tables on the device gives the host tables' bits. The real
// one (cuda/embedding_table.h) is checked against the host's by tests/gpu/.
class HostTwinTable final : public DeviceTable {
 public:
  explicit HostTwinTable(const DeviceTableSpec& spec) : spec_(spec) { reset({}); }

  void reserve(int64_t, int64_t, int64_t ids) override {  // host buffers: the host path grows them
    ++g_table_reserves;
    if (ids > g_table_reserved_ids) g_table_reserved_ids = ids;
  }

  void forward(const std::vector<Slot>& slots, int64_t batch, float* out, int64_t out_cols, bool training,
               int64_t day) override {
    ++g_table_forwards;
    if (day != table_->day()) table_->start_day(day);
    const int64_t dim = spec_.dim;
    Tensor pooled = ensure_buffer(pooled_, batch, dim, DType::F32, Device::CPU);
    if (spec_.hash) {
      std::vector<ShardedTable::IdsView> ids;
      for (const Slot& s : slots) ids.push_back({s.ids, s.nnz});
      table_->lookup(ids, nullptr, &lookup_, training);
    }
    for (size_t i = 0; i < slots.size(); ++i) {
      const Slot& s = slots[i];
      const Pooling pooling = s.mean ? Pooling::Mean : Pooling::Sum;
      if (spec_.hash) {
        embedding_bag_forward(pooled, 0, lookup_.values, s.offsets, lookup_.ids[i].data(), batch, pooling);
      } else {
        embedding_bag_forward(pooled, 0, table_->shard().values(), s.offsets, s.ids, batch, pooling);
        if (training) table_->count_reads(s.ids, s.nnz);
      }
      for (int64_t r = 0; r < batch; ++r)
        std::memcpy(out + r * out_cols + s.col, pooled.data<float>() + r * dim, static_cast<size_t>(dim) * sizeof(float));
    }
    slots_ = training ? slots : std::vector<Slot>();
    batch_ = batch;
  }

  void backward_update(const float* dout, int64_t dout_cols, double lr, int64_t step) override {
    ++g_table_updates;
    Tensor dx = ensure_buffer(dx_, batch_, dout_cols, DType::F32, Device::CPU);
    std::memcpy(dx.raw(), dout, dx.nbytes());
    std::vector<SlotInput> inputs;
    for (size_t i = 0; i < slots_.size(); ++i) {
      const Slot& s = slots_[i];
      inputs.push_back({s.offsets, spec_.hash ? lookup_.ids[i].data() : s.ids, s.col, s.mean ? Pooling::Mean : Pooling::Sum});
    }
    if (spec_.hash) {
      embedding_bag_backward(local_, workspace_, dx, inputs, batch_, lookup_.values.dim(0), spec_.dim);
      grad_ = table_->reduce_gradient(lookup_, local_, nullptr);
    } else {
      embedding_bag_backward(grad_, workspace_, dx, inputs, batch_, table_->shard().rows(), spec_.dim);
    }
    optimizer_->set_lr(lr);
    if (!grad_.rows.empty()) optimizer_->step(table_->shard(), grad_);
    for (const int64_t row : grad_.rows) table_->shard().updated_step()[static_cast<size_t>(row)] = step;
    slots_.clear();
  }

  int64_t rows() const override { return table_->shard().rows(); }
  std::vector<int64_t> keys() const override {
    return std::vector<int64_t>(table_->shard_rows().begin(), table_->shard_rows().end());
  }
  void load(const std::vector<int64_t>& keys, const std::vector<Column>& columns,
            const std::vector<PendingId>& pending) override {
    if (spec_.hash) {
      reset(keys);
      for (const PendingId& p : pending) table_->set_pending(p.id, {p.count, p.last_seen_day});
    }
    for (const Column& c : columns) {
      const auto [data, bytes] = column(c.name);
      std::memcpy(data, c.data, bytes);
    }
  }
  void store(const std::vector<Column>& columns) const override {
    for (const Column& c : columns) {
      const auto [data, bytes] = column(c.name);
      std::memcpy(c.data, data, bytes);
    }
  }
  std::vector<PendingId> pending() const override {
    std::vector<PendingId> out;
    for (const auto& [id, p] : table_->pending()) out.push_back({id, p.count, p.last_seen_day});
    return out;
  }
  DeviceHashCounts hash_counts() const override {
    const HashStats h = table_->hash_stats();
    return {before_.inserted + h.inserted, before_.evicted_full + h.evicted_full, h.pending};
  }

 private:
  // A fresh table (a hash table holding `keys`) and optimizer.
  void reset(const std::vector<int64_t>& keys) {
    if (table_) {  // what the table it replaces did still counts
      const HashStats h = table_->hash_stats();
      before_.inserted += h.inserted;
      before_.evicted_full += h.evicted_full;
    }
    HashOptions hash;
    hash.capacity = spec_.rows;
    hash.admit_after = spec_.admit_after;
    hash.evict_when_full = spec_.evict_when_full;
    table_ = std::make_unique<ShardedTable>(spec_.name, spec_.rows, spec_.dim, DType::F32, spec_.seed, spec_.init_scale,
                                            Placement::RowWise, 0, 0, 1, spec_.hash ? &hash : nullptr);
    table_->insert_owned(keys);
    optimizer_ = make_sparse_optimizer(spec_.optimizer, table_->shard());
  }
  std::pair<void*, size_t> column(const std::string& name) const {
    EmbeddingTable& shard = table_->shard();
    const size_t rows = static_cast<size_t>(shard.rows());
    if (name == "values") return {shard.values().raw(), shard.values().nbytes()};
    if (name == "count") return {shard.count().data(), rows * sizeof(int64_t)};
    if (name == "last_seen_day") return {shard.last_seen_day().data(), rows * sizeof(int64_t)};
    if (name == "updated_step") return {shard.updated_step().data(), rows * sizeof(int64_t)};
    for (const auto& [n, t] : optimizer_->state())
      if (n == name) return {t->raw(), t->nbytes()};
    throw InternalError("HostTwinTable: no column " + name);
  }

  DeviceTableSpec spec_;
  std::unique_ptr<ShardedTable> table_;
  DeviceHashCounts before_;  // the counts of the tables load() replaced
  std::unique_ptr<SparseOptimizer> optimizer_;
  std::vector<Slot> slots_;  // the last training forward's
  int64_t batch_ = 0;
  ShardedTable::Lookup lookup_;
  SparseGrad grad_, local_;
  EmbeddingBagWorkspace workspace_;
  Tensor pooled_, dx_;  // reused from step to step
};

inline std::unique_ptr<DeviceTable> make_host_twin_table(const DeviceTableSpec& spec) {
  return std::make_unique<HostTwinTable>(spec);
}

// The stand-in device's CSR layer (core/sparse.h DeviceCsrLinear): the CPU's csr_linear_forward
// on the "device" tensors' memory, which is host memory. Forwards are counted.
inline std::atomic<int> g_csr_forwards{0};
class HostTwinCsr final : public DeviceCsrLinear {
 public:
  HostTwinCsr(const CsrMatrix& w, const float* bias, bool relu)
      : w_(w), bias_(bias ? std::vector<float>(bias, bias + w.rows) : std::vector<float>()), relu_(relu) {}
  void forward(Tensor& y, const Tensor& x) override {
    ++g_csr_forwards;
    csr_linear_forward(static_cast<float*>(y.raw()), static_cast<const float*>(x.raw()), x.dim(0), w_,
                       bias_.empty() ? nullptr : bias_.data(), relu_);
  }

 private:
  CsrMatrix w_;
  std::vector<float> bias_;
  bool relu_;
};

inline std::unique_ptr<DeviceCsrLinear> make_host_twin_csr(const CsrMatrix& w, const float* bias, bool relu) {
  return std::make_unique<HostTwinCsr>(w, bias, relu);
}

class FakeDevice {
 public:
  FakeDevice() {
    if (device_available(Device::CUDA)) saved_ = ops_for(Device::CUDA);  // a real backend, put back after
    saved_tables_ = device_table_factory(Device::CUDA);
    register_device_tables(Device::CUDA, make_host_twin_table);
    saved_csr_ = device_csr_factory(Device::CUDA);
    register_device_csr(Device::CUDA, make_host_twin_csr);
    OpTable t = ops_for(Device::CPU);
    t.copy = [](void* dst, const void* src, size_t bytes, CopyKind) { std::memcpy(dst, src, bytes); };
    t.copy_2d = [](void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                   CopyKind) {
      for (size_t r = 0; r < rows; ++r)
        std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
    };
    register_ops(Device::CUDA, t);
  }
  ~FakeDevice() {
    register_ops(Device::CUDA, saved_);
    register_device_tables(Device::CUDA, saved_tables_);
    register_device_csr(Device::CUDA, saved_csr_);
  }
  FakeDevice(const FakeDevice&) = delete;
  FakeDevice& operator=(const FakeDevice&) = delete;

 private:
  OpTable saved_{};
  DeviceTableFactory saved_tables_ = nullptr;
  DeviceCsrFactory saved_csr_ = nullptr;
};

// Calls of the stand-in device's fused masked-layer entries (core/dispatch.h masked_linear_*),
// counted by CountingDevice; each runs the CPU's entry.
inline std::atomic<int> g_forward_calls{0}, g_input_grad_calls{0}, g_weight_grad_calls{0};

inline void counting_forward(DType d, int tasks, int64_t rows, int64_t in, int64_t out, const void* const* x,
                             const void* w, const uint8_t* const* bits, const void* bias, bool relu, void* const* y) {
  ++g_forward_calls;
  ops_for(Device::CPU).masked_linear_forward(d, tasks, rows, in, out, x, w, bits, bias, relu, y);
}
inline void counting_input_grad(DType d, int tasks, int64_t rows, int64_t in, int64_t out, const void* const* dy,
                                const void* w, const uint8_t* const* bits, void* const* dx) {
  ++g_input_grad_calls;
  ops_for(Device::CPU).masked_linear_input_grad(d, tasks, rows, in, out, dy, w, bits, dx);
}
inline void counting_weight_grad(DType d, int tasks, int64_t rows, int64_t in, int64_t out, const void* const* x,
                                 const void* const* dy, const uint8_t* const* bits, void* dw) {
  ++g_weight_grad_calls;
  ops_for(Device::CPU).masked_linear_weight_grad(d, tasks, rows, in, out, x, dy, bits, dw);
}

// The stand-in device with counting fused masked-layer entries (the counters start at 0).
class CountingDevice {
 public:
  CountingDevice() {
    OpTable t = ops_for(Device::CUDA);
    t.masked_linear_forward = counting_forward;
    t.masked_linear_input_grad = counting_input_grad;
    t.masked_linear_weight_grad = counting_weight_grad;
    register_ops(Device::CUDA, t);
    g_forward_calls = g_input_grad_calls = g_weight_grad_calls = 0;
  }

 private:
  FakeDevice device_;  // constructed first, puts the real table back last
};

}  // namespace ncsrec::testing
