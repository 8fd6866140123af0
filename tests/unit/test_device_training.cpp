// Whole models trained with their dense part on a device, run on the stand-in device of
// fake_device.h: every step's losses, dense weights, optimizer state, embedding rows and
// predictions must be the CPU model's bits (the host-side halves run the same code, the device
// halves the same kernels), so a missing copy or a host read of device memory fails here. The
// models a device cannot train yet are refused by name, and run.device: auto falls back for them.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/layers/masked_linear.h"
#include "core/random.h"
#include "dist/communicator.h"
#include "models/multitask_model.h"
#include "scratch_dir.h"
#include "tests/unit/config_checks.h"
#include "tests/unit/fake_device.h"
#include "tests/unit/route_scope.h"
#include "tiny_data.h"
#include "core/data/hdf5_shard.h"
#include "train/checkpoint.h"
#include "train/step.h"
#include "train/trainer.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
using testing::FakeDevice;

// Random impressions: slots user, item (multi-hot), ctx; 3 dense features.
Block random_block(int64_t rows, uint64_t seed) {
  return testing::random_block(rows, seed, {"user", "item", "ctx"}, 3, 40, 1);
}

const std::string kTasks = "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n";

TrainConfig config_for(const std::string& model_yaml, const std::string& optimizer = "adam",
                       const std::string& tasks = kTasks) {
  const std::string yaml = "data: {train: [\"unused\"]}\nmodel:\n  embedding_dim: 4\n" + tasks + model_yaml + "optimizer: {type: " + optimizer + ", lr: 0.01, weight_decay: 0.001}\n" +
                           "sparse_optimizer: {type: adagrad, lr: 0.05}\ntrain: {batch_size: 32, clip_grad_norm: 0.5}\n";
  return parse_train_config(yaml, "device.yaml");
}

const std::string kTables = "  tables: {user: {rows: 40}, item: {rows: 40, pooling: mean}, ctx: {rows: 40}}\n";

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::CPU), hb = b.to(Device::CPU);
  return ha.numel() == hb.numel() && std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) == 0;
}

// The same random masks (density 0.5, from `seed`) on both models' masked layers, two tasks.
void set_random_masks(MultiTaskModel& a, MultiTaskModel& b, uint64_t seed) {
  for (int l = 0; l < a.num_masked_layers(); ++l)
    for (int t = 0; t < 2; ++t) {
      const BitMask& m = a.mask(t, l);
      BitMask r = BitMask::zeros(m.rows, m.cols);
      Rng rng(seed + static_cast<uint64_t>(l * 2 + t));
      for (int64_t i = 0; i < r.size(); ++i) r.set(i, rng.bernoulli(0.5));
      a.set_mask(t, l, r);
      b.set_mask(t, l, r);
    }
}

struct Case {
  const char* name;
  std::string model;
  std::vector<int> tasks;  // per step: -1 joint, t alone
  const char* optimizer = "adam";
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class DeviceModel : public ::testing::TestWithParam<Case> {};

// Trains case `c` on the CPU and on the stand-in device (which the caller has registered) and
// expects the same bits everywhere.
// The CPU model runs under the plain route (the stand-in device's fused entries compute the
// plain route's bits; the CPU's own fused route is its sparse kernels), the device model under
// the route set when this is called.
void expect_device_steps_match_cpu(const Case& c) {
  auto on_cpu = [](auto&& run) {
    testing::RouteScope plain(MaskedRoute::Plain);
    run();
  };
  const TrainConfig config = config_for(c.model, c.optimizer);
  const Block first = random_block(32, 1);
  MultiTaskModel cpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CPU);
  MultiTaskModel gpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CUDA);
  ASSERT_EQ(gpu.params().values().device(), Device::CUDA);
  ASSERT_TRUE(same_bits(cpu.params().values(), gpu.params().values())) << "the same initialisation";
  set_random_masks(cpu, gpu, 100);
  Optimizers o_cpu = make_optimizers(config, cpu), o_gpu = make_optimizers(config, gpu);
  auto comm = make_local_communicator();
  for (size_t s = 0; s < c.tasks.size(); ++s) {
    const Block batch = random_block(s % 2 ? 32 : 24, 10 + s);  // two batch sizes: the buffers' views
    StepStats st_cpu, st_gpu;
    StepLoss l_cpu;
    on_cpu([&] { l_cpu = train_one_step(cpu, o_cpu, batch, c.tasks[s], static_cast<int64_t>(s + 1), true, *comm, &st_cpu); });
    const StepLoss l_gpu = train_one_step(gpu, o_gpu, batch, c.tasks[s], static_cast<int64_t>(s + 1), true, *comm, &st_gpu);
    EXPECT_EQ(l_cpu.total, l_gpu.total) << "step " << s + 1;
    EXPECT_EQ(st_cpu.grad_norm, st_gpu.grad_norm) << "step " << s + 1;
  }
  EXPECT_TRUE(same_bits(cpu.params().values(), gpu.params().values()));
  for (const auto& [slot, state] : o_cpu.dense->state()) {
    bool found = false;
    for (const auto& [slot2, state2] : o_gpu.dense->state())
      if (slot2 == slot) {
        found = true;
        EXPECT_TRUE(same_bits(*state, *state2)) << "optimizer state " << slot;
      }
    EXPECT_TRUE(found) << slot;
  }
  for (size_t t = 0; t < cpu.tables().size(); ++t)
    EXPECT_TRUE(same_bits(cpu.tables()[t].shard().values(), gpu.tables()[t].shard().values())) << "table " << t;
  const Block eval = random_block(20, 99);
  std::vector<std::vector<float>> p_cpu, p_gpu;
  on_cpu([&] { cpu.predict(eval, p_cpu); });
  gpu.predict(eval, p_gpu);
  EXPECT_EQ(p_cpu, p_gpu);
  // The steps moved the model: a test of bits that nothing changes could not fail.
  MultiTaskModel fresh(config.model, first.schema, DType::F32, 7, nullptr, Device::CPU);
  EXPECT_FALSE(same_bits(fresh.params().values(), gpu.params().values()));
}

TEST_P(DeviceModel, StepsOnTheDeviceGiveTheCpuModelsBits) {
  FakeDevice device;
  expect_device_steps_match_cpu(GetParam());
}

// The models with masked layers, with each route forced (core/layers/masked_linear.h): the
// fused route's calls serve every active task of a layer at once and still give the CPU's
// bits (the stand-in's fused entries are the CPU's, which compute the plain route op for op).
class DeviceMaskedRoutes : public ::testing::TestWithParam<Case> {};

TEST_P(DeviceMaskedRoutes, BothRoutesGiveTheCpuModelsBits) {
  const Case& c = GetParam();
  for (const MaskedRoute route : {MaskedRoute::Fused, MaskedRoute::Plain}) {
    SCOPED_TRACE(masked_route_names()[static_cast<size_t>(route)]);
    testing::CountingDevice device;
    {
      testing::RouteScope scope(route);
      expect_device_steps_match_cpu(c);
    }
    const bool learned = c.model.find("find: learned") != std::string::npos;  // the plain route's score gradient
    if (route == MaskedRoute::Fused && !learned) {
      EXPECT_GT(testing::g_forward_calls, 0);
      EXPECT_GT(testing::g_weight_grad_calls, 0);
    } else {
      EXPECT_EQ(testing::g_forward_calls + testing::g_weight_grad_calls + testing::g_input_grad_calls, 0);
    }
  }
}

// Memory is allocated while the model is built and during the first steps: buffers sized by
// the batch (grown, never shrunk; the embedding gradient's by the batch's unique rows) and the
// optimizer's state. Once the schedule has seen its batches, replaying them allocates nothing,
// on the device or on the host (fixed tables; a hashed or sharded table's lookup still does).
TEST_P(DeviceModel, OnceWarmNoStepAllocatesMemory) {
  FakeDevice device;
  const Case& c = GetParam();
  const TrainConfig config = config_for(c.model, c.optimizer);
  const Block first = random_block(32, 1);
  MultiTaskModel gpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CUDA);
  Optimizers opt = make_optimizers(config, gpu);
  auto comm = make_local_communicator();
  std::vector<Block> batches;  // made first: a batch's own tensors are not the step's
  for (size_t s = 0; s < c.tasks.size(); ++s) batches.push_back(random_block(s % 2 ? 32 : 24, 10 + s));
  int64_t step = 0;
  auto run_schedule = [&] {
    for (size_t s = 0; s < c.tasks.size(); ++s)
      train_one_step(gpu, opt, batches[s], c.tasks[s], ++step, true, *comm, nullptr);
  };
  run_schedule();
  const int64_t warm = storage_allocations(Device::CUDA), warm_host = storage_allocations(Device::CPU);
  EXPECT_GT(warm, 0) << "the count sees the device's allocations";
  run_schedule();
  run_schedule();
  EXPECT_EQ(storage_allocations(Device::CUDA), warm) << "steps after warm-up allocated device memory";
  const bool hashed = c.model.find("capacity") != std::string::npos;
  if (!hashed) EXPECT_EQ(storage_allocations(Device::CPU), warm_host) << "steps after warm-up allocated host tensors";
}

// Planned before the first step (plan_step_memory for the largest batch): no step allocates
// device memory, the first included, and planning changes nothing the steps compute (the same
// bits as the CPU model that was not planned).
TEST_P(DeviceModel, APlannedModelAllocatesNoDeviceMemoryInAnyStep) {
  FakeDevice device;
  const Case& c = GetParam();
  const TrainConfig config = config_for(c.model, c.optimizer);
  const Block first = random_block(32, 1);
  MultiTaskModel cpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CPU);
  MultiTaskModel gpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CUDA);
  set_random_masks(cpu, gpu, 300);
  Optimizers o_cpu = make_optimizers(config, cpu), o_gpu = make_optimizers(config, gpu);
  auto comm = make_local_communicator();
  std::vector<Block> batches;
  for (size_t s = 0; s < c.tasks.size(); ++s) batches.push_back(random_block(s % 2 ? 32 : 24, 40 + s));
  const int64_t before_plan = storage_allocations(Device::CUDA);
  testing::g_table_reserves = 0;
  plan_step_memory(gpu, 32);
  if (gpu.tables_on_device())
    EXPECT_EQ(testing::g_table_reserves, static_cast<int>(gpu.table_layout().size())) << "every device table planned";
  EXPECT_GT(storage_allocations(Device::CUDA), before_plan) << "the plan allocates the step's buffers";
  EXPECT_TRUE(same_bits(cpu.params().values(), gpu.params().values())) << "planning moved a parameter";
  const int64_t planned = storage_allocations(Device::CUDA);
  for (size_t s = 0; s < c.tasks.size(); ++s) {
    const StepLoss l_cpu = train_one_step(cpu, o_cpu, batches[s], c.tasks[s], static_cast<int64_t>(s + 1), true, *comm);
    const StepLoss l_gpu = train_one_step(gpu, o_gpu, batches[s], c.tasks[s], static_cast<int64_t>(s + 1), true, *comm);
    EXPECT_EQ(l_cpu.total, l_gpu.total) << "step " << s + 1;
  }
  EXPECT_EQ(storage_allocations(Device::CUDA), planned) << "a step allocated device memory after planning";
  EXPECT_TRUE(same_bits(cpu.params().values(), gpu.params().values()));
  for (size_t t = 0; t < cpu.tables().size(); ++t)
    EXPECT_TRUE(same_bits(cpu.tables()[t].shard().values(), gpu.tables()[t].shard().values())) << "table " << t;
}

// The DLRM interaction of a device model runs on the device: its F² columns a row never cross
// the bus, and neither do the embeddings (pooled on the device from the batch's ids). Up go the
// dense features, one copy of their columns; nothing of the input or its gradient comes down.
std::atomic<int64_t> g_copies_2d{0}, g_width_2d{0}, g_whole_input_copies{0};
int64_t g_whole_input_bytes = 0;

TEST(DeviceTraining, TheInteractionRunsOnTheDeviceAndItsColumnsNeverCrossTheBus) {
  FakeDevice device;
  OpTable t = ops_for(Device::CUDA);
  t.copy = [](void* dst, const void* src, size_t bytes, CopyKind kind) {
    const bool bus = kind == CopyKind::HostToDevice || kind == CopyKind::DeviceToHost;
    if (bus && static_cast<int64_t>(bytes) >= g_whole_input_bytes) ++g_whole_input_copies;
    std::memcpy(dst, src, bytes);
  };
  t.copy_2d = [](void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows, CopyKind) {
    ++g_copies_2d;
    g_width_2d = static_cast<int64_t>(width);
    for (size_t r = 0; r < rows; ++r)
      std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
  };
  register_ops(Device::CUDA, t);
  const TrainConfig config = config_for("  type: esmm\n  tower: [8]\n  interaction: dot\n" + kTables);
  const Block batch = random_block(32, 3);
  MultiTaskModel gpu(config.model, batch.schema, DType::F32, 7, nullptr, Device::CUDA);
  Optimizers o = make_optimizers(config, gpu);
  auto comm = make_local_communicator();
  const int64_t input_dim = gpu.input_dim();
  g_whole_input_bytes = 32 * input_dim * 4;
  plan_step_memory(gpu, 32);  // the masks and update masks go up here, not in the step
  g_copies_2d = g_whole_input_copies = 0;
  train_one_step(gpu, o, batch, -1, 1, true, *comm);
  ASSERT_TRUE(gpu.tables_on_device());
  EXPECT_EQ(g_copies_2d, 1) << "the dense features up, once";
  EXPECT_EQ(g_width_2d, batch.schema.dense_dim * 4) << "only the dense features' columns cross";
  EXPECT_EQ(g_whole_input_copies, 0) << "a copy of the whole input crossed the bus";
}

// The loss heads of a device model run on the device: each active task's head is one call of
// the device's entry, and nothing comes down in a step (the tables are on the device too), so
// no logit or dL/dlogit crosses the bus.
std::atomic<int> g_bce_calls{0}, g_focal_calls{0}, g_esmm_calls{0}, g_copies_down{0};

TEST(DeviceTraining, TheLossHeadsRunOnTheDeviceAndNoLogitComesDown) {
  FakeDevice device;
  OpTable t = ops_for(Device::CUDA);
  t.copy = [](void* dst, const void* src, size_t bytes, CopyKind kind) {
    if (kind == CopyKind::DeviceToHost) ++g_copies_down;
    std::memcpy(dst, src, bytes);
  };
  t.sigmoid_bce = [](DType d, const void* x, const float* y, const float* w, int64_t n, double norm, void* p,
                     void* g) {
    ++g_bce_calls;
    return ops_for(Device::CPU).sigmoid_bce(d, x, y, w, n, norm, p, g);
  };
  t.focal_loss = [](DType d, const void* x, const float* y, const float* w, int64_t n, double a, double gm, double norm,
                    void* p, void* g) {
    ++g_focal_calls;
    return ops_for(Device::CPU).focal_loss(d, x, y, w, n, a, gm, norm, p, g);
  };
  t.esmm_loss = [](DType d, const void* a, const void* b, const float* c, const float* cc, const float* w, int64_t n,
                   double norm, double cw, void* p1, void* p2, void* p3, void* g1, void* g2, double* l) {
    ++g_esmm_calls;
    ops_for(Device::CPU).esmm_loss(d, a, b, c, cc, w, n, norm, cw, p1, p2, p3, g1, g2, l);
  };
  register_ops(Device::CUDA, t);
  struct Model {
    std::string yaml;
    int bce, focal, esmm;  // calls per joint step
    std::string tasks = kTasks;
  };
  const std::string focal_tasks =
      "  tasks: {ctr: {label: click, loss: focal}, cvr: {label: conversion, given: ctr}}\n";
  for (const Model& m : {Model{"  type: ncs\n  shared: [16, 8]\n  tower: []\n" + kTables, 2, 0, 0},
                         Model{"  type: ncs\n  shared: [16, 8]\n  tower: []\n" + kTables, 1, 1, 0, focal_tasks},
                         Model{"  type: esmm\n  tower: [8]\n" + kTables, 0, 0, 1}}) {
    SCOPED_TRACE(m.yaml);
    const TrainConfig config = config_for(m.yaml, "adam", m.tasks);
    const Block batch = random_block(32, 8);
    MultiTaskModel cpu(config.model, batch.schema, DType::F32, 7, nullptr, Device::CPU);
    MultiTaskModel gpu(config.model, batch.schema, DType::F32, 7, nullptr, Device::CUDA);
    Optimizers o_cpu = make_optimizers(config, cpu), o_gpu = make_optimizers(config, gpu);
    auto comm = make_local_communicator();
    plan_step_memory(gpu, 32);
    g_bce_calls = g_focal_calls = g_esmm_calls = g_copies_down = 0;
    const StepLoss l_gpu = train_one_step(gpu, o_gpu, batch, -1, 1, true, *comm);
    EXPECT_EQ(g_bce_calls, m.bce);
    EXPECT_EQ(g_focal_calls, m.focal);
    EXPECT_EQ(g_esmm_calls, m.esmm);
    EXPECT_EQ(g_copies_down, 0) << "no logit, dL/dlogit or input gradient comes down";
    const StepLoss l_cpu = train_one_step(cpu, o_cpu, batch, -1, 1, true, *comm);
    EXPECT_EQ(l_cpu.total, l_gpu.total);
    EXPECT_EQ(l_cpu.per_task, l_gpu.per_task);
    EXPECT_GT(l_gpu.total, 0.0);
  }
}

// The tables of a device model train on the device (one process; fixed tables, hash tables, and
// hash tables that admit an id at its second or third read or evict when full): each step pools
// and updates every table there, at the scheduled rate, and the host copy (what checkpoints and
// export read) follows the device's rows, ids, pending ids, optimizer state and counters as the
// CPU model's. A row changed on the host goes up before the next step.
TEST(DeviceTraining, TablesTrainOnTheDeviceAndTheHostCopyFollowsThem) {
  FakeDevice device;
  const std::string hashed_tables = "  tables: {user: {capacity: 64}, item: {rows: 40, pooling: mean}, ctx: {capacity: 64}}\n";
  const std::string admitted_tables =
      "  tables: {user: {capacity: 20, admit_after: 2, evict_when_full: true}, item: {rows: 40, pooling: mean},"
      " ctx: {capacity: 64, admit_after: 3}}\n";
  for (const std::string& tables : {kTables, hashed_tables, admitted_tables}) {
    SCOPED_TRACE(tables);
    const std::string yaml = "data: {train: [\"unused\"]}\nmodel:\n  embedding_dim: 4\n" + kTasks +
                             "  type: ncs\n  shared: [16, 8]\n  tower: []\n" + tables +
                             "optimizer: {type: adam, lr: 0.01}\nsparse_optimizer: {type: adam, lr: 0.05}\n"
                             "train: {batch_size: 32, lr_schedule: {warmup_steps: 3}}\n";
    const TrainConfig config = parse_train_config(yaml, "tables.yaml");
    // Ids over a wider range where tables admit later: more of them wait, and rows age out.
    const int64_t ids = tables == admitted_tables ? 100 : 40;
    auto block = [&](uint64_t seed) { return testing::random_block(32, seed, {"user", "item", "ctx"}, 3, ids, 1); };
    const Block first = block(1);
    MultiTaskModel cpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CPU);
    MultiTaskModel gpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CUDA);
    Optimizers o_cpu = make_optimizers(config, cpu), o_gpu = make_optimizers(config, gpu);
    EXPECT_FALSE(cpu.tables_on_device());
    ASSERT_TRUE(gpu.tables_on_device()) << gpu.device_table_limits(config.sparse_optimizer);
    auto comm = make_local_communicator();
    auto same_tables = [&](const char* when) {
      const auto& a = std::as_const(cpu).tables();
      const auto& b = std::as_const(gpu).tables();
      for (size_t t = 0; t < a.size(); ++t) {
        SCOPED_TRACE(std::string(when) + ": table " + a[t].name());
        ASSERT_EQ(a[t].shard_rows(), b[t].shard_rows()) << "the same ids, in the same order";
        EXPECT_TRUE(same_bits(a[t].shard().values(), b[t].shard().values()));
        for (const auto& [name, state] : o_cpu.sparse[t]->state())
          for (const auto& [name2, state2] : o_gpu.sparse[t]->state())
            if (name == name2) EXPECT_TRUE(same_bits(*state, *state2)) << name;
        EXPECT_EQ(a[t].shard().count(), b[t].shard().count());
        EXPECT_EQ(a[t].shard().last_seen_day(), b[t].shard().last_seen_day());
        EXPECT_EQ(a[t].shard().updated_step(), b[t].shard().updated_step());
        EXPECT_EQ(a[t].pending(), b[t].pending());
        EXPECT_EQ(a[t].hash_stats().inserted, b[t].hash_stats().inserted);
        EXPECT_EQ(a[t].hash_stats().evicted_full, b[t].hash_stats().evicted_full);
      }
    };
    testing::g_table_forwards = 0;
    testing::g_table_updates = 0;
    for (int64_t step = 1; step <= 3; ++step) {
      const Block batch = block(20 + step);
      for (MultiTaskModel* m : {&cpu, &gpu}) m->start_day(20000 + step);
      train_one_step(cpu, o_cpu, batch, -1, step, true, *comm);
      train_one_step(gpu, o_gpu, batch, -1, step, true, *comm);
    }
    EXPECT_EQ(testing::g_table_forwards, 3 * 3) << "three tables, three steps";
    EXPECT_EQ(testing::g_table_updates, 3 * 3);
    // The log's hash-table figures come without copying the rows off the device.
    for (size_t t = 0; t < cpu.table_layout().size(); ++t) {
      EXPECT_EQ(gpu.table_hash_stats(t).rows, cpu.table_hash_stats(t).rows) << t;
      EXPECT_EQ(gpu.table_hash_stats(t).inserted, cpu.table_hash_stats(t).inserted) << t;
      EXPECT_EQ(gpu.table_hash_stats(t).pending, cpu.table_hash_stats(t).pending) << t;
      EXPECT_EQ(gpu.table_hash_stats(t).evicted_full, cpu.table_hash_stats(t).evicted_full) << t;
    }
    if (tables == admitted_tables) {
      EXPECT_GT(cpu.table_hash_stats(0).evicted_full, 0) << "the user table filled up and evicted";
      EXPECT_GT(cpu.table_hash_stats(2).pending, 0) << "the ctx table holds ids not admitted yet";
    }
    if (gpu.table_layout()[0].hashed())
      EXPECT_LT(gpu.table_layout()[0].shard().rows(), gpu.table_hash_stats(0).rows) << "the host copy was left behind";
    same_tables("after three steps");
    MultiTaskModel fresh(config.model, first.schema, DType::F32, 7, nullptr, Device::CPU);
    EXPECT_FALSE(same_bits(fresh.tables()[1].shard().values(), std::as_const(gpu).tables()[1].shard().values()))
        << "the steps moved the rows";
    // A change made on the host (a restore, say) is what the next step starts from.
    for (MultiTaskModel* m : {&cpu, &gpu}) m->tables()[1].shard().values().data<float>()[0] = 0.5f;
    const Block batch = block(30);
    EXPECT_EQ(train_one_step(cpu, o_cpu, batch, -1, 4, true, *comm).total,
              train_one_step(gpu, o_gpu, batch, -1, 4, true, *comm).total);
    same_tables("after a change on the host");
  }

}

// model.tables.<t>.max_ids_per_row sizes a device table's plan: batch × that × its slots ids
// (1 by default); it must be a positive count.
TEST(DeviceTraining, TheTablesPlanHoldsMaxIdsPerRowForEachSlot) {
  FakeDevice device;
  for (const int64_t per_row : {int64_t{1}, int64_t{3}}) {
    const std::string item = per_row == 1 ? "item: {rows: 40, pooling: mean}" : "item: {rows: 40, pooling: mean, max_ids_per_row: 3}";
    const TrainConfig config =
        config_for("  type: esmm\n  tower: [8]\n  tables: {user: {rows: 40}, " + item + ", ctx: {rows: 40}}\n");
    const Block first = random_block(32, 1);
    MultiTaskModel gpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CUDA);
    Optimizers o = make_optimizers(config, gpu);
    testing::g_table_reserved_ids = 0;
    plan_step_memory(gpu, 32);
    EXPECT_EQ(testing::g_table_reserved_ids, 32 * per_row) << "the item table's one slot";
  }
  testing::expect_config_error_naming(
      "data: {train: [\"x\"]}\nmodel:\n  type: esmm\n  tower: [8]\n  tables: {user: {rows: 40, max_ids_per_row: 0}}\n"
      "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n",
      "max_ids_per_row");
}

// A hash table with a TTL trains on the device: at the start of a day the rows not seen for
// ttl_days go (on the host copy, brought up to date first; the device's table is rebuilt from
// it), and the following steps match the CPU model's, rows and counters included.
TEST(DeviceTraining, AHashTablesTtlDropsTheSameRowsOnTheDevice) {
  FakeDevice device;
  const TrainConfig config = config_for(
      "  type: esmm\n  tower: [8]\n  tables: {user: {capacity: 64, ttl_days: 1}, item: {rows: 40}, "
      "ctx: {capacity: 64, admit_after: 3, ttl_days: 1}}\n");
  const Block first = random_block(32, 1);
  MultiTaskModel cpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CPU);
  MultiTaskModel gpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CUDA);
  Optimizers o_cpu = make_optimizers(config, cpu), o_gpu = make_optimizers(config, gpu);
  ASSERT_TRUE(gpu.tables_on_device()) << gpu.device_table_limits(config.sparse_optimizer);
  auto comm = make_local_communicator();
  int64_t step = 0;
  auto train_day = [&](int64_t day, uint64_t seed) {
    for (MultiTaskModel* m : {&cpu, &gpu}) m->start_day(day);
    for (int s = 0; s < 2; ++s) {
      // Day by day, other users: ids from a window that moves with the seed.
      Block batch = random_block(32, seed + static_cast<uint64_t>(s));
      for (auto& id : batch.sparse[0].ids) id += static_cast<int64_t>(seed % 7) * 5;
      ++step;
      EXPECT_EQ(train_one_step(cpu, o_cpu, batch, -1, step, true, *comm).total,
                train_one_step(gpu, o_gpu, batch, -1, step, true, *comm).total);
    }
  };
  train_day(20000, 1);
  train_day(20001, 3);
  const int64_t before = std::as_const(gpu).tables()[0].shard().rows();
  train_day(20003, 5);  // ttl_days 1: the rows last read on day 20000 or 20001 go first
  const auto& a = std::as_const(cpu).tables();
  const auto& b = std::as_const(gpu).tables();
  EXPECT_GT(a[0].hash_stats().evicted_ttl, 0) << "the TTL dropped rows";
  EXPECT_EQ(a[0].hash_stats().evicted_ttl, b[0].hash_stats().evicted_ttl);
  EXPECT_GT(before, 0);
  ASSERT_EQ(a[0].shard().rows(), b[0].shard().rows());
  std::vector<int64_t> ka(a[0].shard_rows().begin(), a[0].shard_rows().end()),
      kb(b[0].shard_rows().begin(), b[0].shard_rows().end());
  EXPECT_EQ(ka, kb);
  EXPECT_TRUE(same_bits(a[0].shard().values(), b[0].shard().values()));
  EXPECT_EQ(a[0].shard().last_seen_day(), b[0].shard().last_seen_day());
  // The pending ids of a table that admits later age out as well.
  EXPECT_GT(a[2].hash_stats().pending, 0);
  EXPECT_EQ(a[2].pending(), b[2].pending());
  EXPECT_EQ(a[2].hash_stats().evicted_ttl, b[2].hash_stats().evicted_ttl);
}

// A communicator of two ranks whose other rank contributes zeros (a sum that leaves the buffers
// as they are), in device memory (NCCL's part in train_one_step) or host memory (MPI's): records
// the buffers it is asked to sum. With two ranks a buffer in the other kind of memory is staged
// through a copy, so the recorded pointer tells whether the gradient was summed where it is.
class RecordingComm final : public Communicator {
 public:
  explicit RecordingComm(bool device_memory) : device_memory_(device_memory) {}
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  const char* kind() const override { return "recording"; }
  bool takes_device_memory() const override { return device_memory_; }
  std::vector<const void*> reduced;                        // blocking sums
  std::vector<std::pair<const void*, int64_t>> started;  // started sums: data, elements
  int finishes = 0;

 protected:
  void do_all_reduce(void* data, int64_t, DType, bool) override { reduced.push_back(data); }
  void do_start_all_reduce(void* data, int64_t n, DType) override { started.emplace_back(data, n); }
  void do_finish_all_reduces() override { ++finishes; }
  void do_all_to_all_v(const void*, const int64_t*, void*, const int64_t*, DType) override { ADD_FAILURE(); }
  void do_all_gather(const void*, int64_t, void*, DType) override { ADD_FAILURE(); }
  void do_broadcast(void*, int64_t, DType, int) override { ADD_FAILURE(); }
  void do_barrier() override {}

 private:
  bool device_memory_;
};

// A device model's staging buffers (the input going up, its gradient and the logits coming down,
// dL/dlogit going up) come from the device's page-locked allocator, and go back to it; where it
// has none to give (null), ordinary host memory serves and the step is the same.
std::atomic<int64_t> g_pinned_calls{0}, g_pinned_allocs{0}, g_pinned_frees{0};
bool g_pinned_refuse = false;
void* counting_host_alloc(size_t bytes) {
  ++g_pinned_calls;
  if (g_pinned_refuse) return nullptr;
  ++g_pinned_allocs;
  return std::malloc(bytes);
}
void counting_host_free(void* p) {
  ++g_pinned_frees;
  std::free(p);
}

TEST(DeviceTraining, StagingBuffersArePageLockedWhereTheDeviceOffersIt) {
  FakeDevice device;
  OpTable t = ops_for(Device::CUDA);
  t.host_alloc = counting_host_alloc;
  t.host_free = counting_host_free;
  register_ops(Device::CUDA, t);
  const TrainConfig config = config_for("  type: ncs\n  shared: [16, 8]\n  tower: []\n" + kTables);
  const Block batch = random_block(32, 5);
  std::vector<float> losses;
  for (bool refuse : {false, true}) {
    g_pinned_refuse = refuse;
    g_pinned_calls = 0;
    g_pinned_allocs = 0;
    g_pinned_frees = 0;
    {
      MultiTaskModel model(config.model, batch.schema, DType::F32, 7, nullptr, Device::CUDA);
      Optimizers opt = make_optimizers(config, model);
      auto comm = make_local_communicator();
      for (int64_t step = 1; step <= 3; ++step)
        losses.push_back(static_cast<float>(train_one_step(model, opt, batch, -1, step, true, *comm).total));
      // One input group and two tasks: the input's host columns, and per task its labels and
      // loss weights (the tables on the device, the input gradient stays there).
      EXPECT_EQ(g_pinned_calls, 1 + 2 * 2) << "every staging buffer asks for page-locked memory";
      EXPECT_EQ(g_pinned_allocs, refuse ? 0 : 1 + 2 * 2);
    }
    EXPECT_EQ(g_pinned_frees, g_pinned_allocs) << "every page-locked buffer went back to its own allocator";
  }
  g_pinned_refuse = false;
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(losses[i], losses[i + 3]) << "step " << i + 1;
}

// run.dense_comm: the dense gradient is summed by the dense communicator, in the device's own
// memory (no staging copy), and the host communicator sums the rest; the step is the same.
TEST(DeviceTraining, TheDenseGradientIsSummedByTheDenseCommunicatorInDeviceMemory) {
  FakeDevice device;
  const TrainConfig config = config_for("  type: ncs\n  shared: [16, 8]\n  tower: []\n" + kTables);
  const Block batch = random_block(32, 5);
  MultiTaskModel a(config.model, batch.schema, DType::F32, 7, nullptr, Device::CUDA);
  MultiTaskModel b(config.model, batch.schema, DType::F32, 7, nullptr, Device::CUDA);
  Optimizers oa = make_optimizers(config, a), ob = make_optimizers(config, b);
  auto host_a = make_local_communicator(), host_b = make_local_communicator();
  RecordingComm dense(true), staged(false);
  for (int64_t step = 1; step <= 3; ++step) {
    const StepLoss la = train_one_step(a, oa, batch, -1, step, true, *host_a);
    const StepLoss lb = train_one_step(b, ob, batch, -1, step, true, *host_b, nullptr, &dense);
    EXPECT_EQ(la.total, lb.total);
  }
  // Started range by range during each backward (the towers', then the shared block's), on the
  // device's gradient buffer itself, covering it once a step; finished once a step.
  EXPECT_TRUE(dense.reduced.empty()) << "the dense gradient is summed in started buckets";
  EXPECT_EQ(dense.finishes, 3);
  const char* buffer = static_cast<const char*>(b.params().grads().raw());
  const int64_t numel = b.params().numel();
  int64_t covered = 0;
  for (const auto& [p, n] : dense.started) {
    const char* at = static_cast<const char*>(p);
    EXPECT_TRUE(at >= buffer && at + n * 4 <= buffer + numel * 4) << "the device's gradient, not a copy";
    covered += n;
  }
  EXPECT_EQ(covered, 3 * numel);
  EXPECT_GE(dense.started.size(), 6u) << "the towers' and the shared block's ranges, each step";
  // The control: a host-memory communicator gets a staged copy, so the check above can fail.
  MultiTaskModel c(config.model, batch.schema, DType::F32, 7, nullptr, Device::CUDA);
  Optimizers oc = make_optimizers(config, c);
  auto host_c = make_local_communicator();
  train_one_step(c, oc, batch, -1, 1, true, *host_c, nullptr, &staged);
  ASSERT_EQ(staged.reduced.size(), 1u);
  EXPECT_NE(staged.reduced[0], c.params().grads().raw()) << "a host communicator sums a host copy";
  EXPECT_EQ(host_b->stats().all_reduce_calls + 3, host_a->stats().all_reduce_calls)
      << "the host communicator no longer sums the dense gradient";
  EXPECT_TRUE(same_bits(a.params().values(), b.params().values()));
}


std::vector<Case> model_cases() {
  return {Case{"esmm_dot", "  type: esmm\n  tower: [8]\n  interaction: dot\n" + kTables, {-1, -1, -1}},
        Case{"ncs_alternating",
             "  type: ncs\n  shared: [16, 8]\n  tower: []\n" + kTables, {0, 1, 0, 1, -1}},
        Case{"ncs_esmm_sgd", "  type: ncs\n  esmm: true\n  shared: [12]\n  tower: [4]\n" + kTables, {-1, -1}, "sgd"},
        Case{"mmoe", "  type: mmoe\n  experts: {count: 3, sizes: [8]}\n  tower: [4]\n" + kTables, {-1, -1, -1}},
        Case{"ncs_uncertainty", "  type: ncs\n  shared: [12]\n  tower: [4]\n  loss_weighting: uncertainty\n" + kTables,
             {-1, 0, 1, -1}},
        Case{"shared_bottom_batchnorm", "  type: shared_bottom\n  bottom: [8]\n  tower: [6]\n  layers: {norm: batch}\n" + kTables,
             {0, 1, -1}},
        Case{"mmoe_layernorm",
             "  type: mmoe\n  experts: {count: 2, sizes: [8]}\n  tower: [6]\n  layers: {norm: layer}\n" + kTables,
             {-1, -1}},
        Case{"esmm_apg_self", "  type: esmm\n  tower: [8, 4]\n  apg: {in: [towers], rank: 3, hyper_hidden: [6]}\n" + kTables,
             {-1, -1}},
        Case{"shared_bottom_apg_group_overparam",
             "  type: shared_bottom\n  bottom: [8]\n  tower: [6]\n"
             "  apg: {in: [towers], rank: 2, overparam: 4, hyper_hidden: [5], condition: [user, ctx], generate_bias: true}\n" +
                 kTables,
             {0, 1, -1}},
        Case{"ncs_learned_topk",
             "  type: ncs\n  shared: [12, 6]\n  tower: []\n  masks: {find: learned, final_density: 0.4}\n" + kTables,
             {-1, 0, 1, -1}},
        Case{"ncs_learned_penalty",
             "  type: ncs\n  shared: [12]\n  tower: [4]\n  masks: {find: learned, final_density: 0.4, sparsity: penalty}\n" +
                 kTables,
             {-1, -1, -1}},
        Case{"three_tower_gate_mix",
             "  type: three_tower\n  towers: {user: {slots: [user], sizes: [8, 4]}, item: {slots: [item, ctx], sizes: [8, 4]}}\n"
             "  gate: {enabled: true, sizes: [4]}\n  mix: {weight: 1.0, targets: [0.5, 0.5]}\n" + kTables,
             {-1, -1, -1}},
        Case{"three_tower_uniform",
             "  type: three_tower\n  towers: {user: {slots: [user, ctx], sizes: [6]}, item: {slots: [item], sizes: [6]}}\n" +
                 kTables,
             {-1, -1}},
        Case{"mmoe_dropout",
             "  type: mmoe\n  experts: {count: 2, sizes: [8]}\n  tower: [6]\n  layers: {dropout: 0.3}\n" + kTables,
             {-1, -1, -1}},
        Case{"ple_masked_experts",
             "  type: ple\n  esmm: true\n  experts: {levels: 1, task_experts: 1, shared_experts: 1, sizes: [8], "
             "masked: true}\n  tower: [4]\n" + kTables,
             {-1, -1}},
        Case{"shared_bottom_adagrad", "  type: shared_bottom\n  bottom: [8]\n  tower: [4]\n" + kTables, {0, 1, -1},
             "adagrad"},
        Case{"single_task", "  type: single_task\n  tower: [8]\n" + kTables, {0, 1, -1}},
        Case{"hash_tables",
             "  type: esmm\n  tower: [8]\n  tables: {user: {capacity: 64}, item: {rows: 40}, ctx: {capacity: 64}}\n",
             {-1, -1, -1}},
        Case{"hash_tables_admitted",
             "  type: esmm\n  tower: [8]\n  tables: {user: {capacity: 64, admit_after: 2}, item: {rows: 40}, "
             "ctx: {capacity: 24, admit_after: 1, evict_when_full: true}}\n",
             {-1, -1, -1}}};
}

bool has_masked_layers(const Case& c) {
  return c.model.find("type: ncs") != std::string::npos || c.model.find("masked: true") != std::string::npos;
}

std::vector<Case> masked_model_cases() {
  std::vector<Case> masked;
  for (const Case& c : model_cases())
    if (has_masked_layers(c)) masked.push_back(c);
  return masked;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Models, DeviceModel, ::testing::ValuesIn(model_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(Models, DeviceMaskedRoutes, ::testing::ValuesIn(masked_model_cases()), case_name);

// run.device: auto trains on the device whenever its backend is registered: every model type
// trains there.
TEST(DeviceModel, AutoPicksTheDeviceWheneverItsBackendIsThere) {
  TrainConfig automatic = config_for("  type: esmm\n  tower: [8]\n" + kTables);
  automatic.device = "auto";
  {
    FakeDevice device;
    EXPECT_EQ(training_device(automatic), Device::CUDA);
  }
  if (!device_available(Device::CUDA)) EXPECT_EQ(training_device(automatic), Device::CPU);
}

// A distilled three-tower student on the device: its teacher (a CPU model here) predicts on
// the host and the soft targets go up; the steps give the CPU student's bits.
TEST(DeviceTraining, ADistilledThreeTowerStudentTrainsAsOnTheCpu) {
  FakeDevice device;
  const TrainConfig teacher_config = config_for("  type: esmm\n  tower: [8]\n" + kTables);
  const TrainConfig config = config_for(
      "  type: three_tower\n  towers: {user: {slots: [user], sizes: [8, 4]}, item: {slots: [item, ctx], sizes: [8, 4]}}\n"
      "  gate: {enabled: true, sizes: [4]}\n  mix: {weight: 0.5, targets: [0.5, 0.5]}\n"
      "  distill: {teacher: \"unused\", weight: 0.7}\n" + kTables);
  const Block first = random_block(32, 1);
  MultiTaskModel teacher(teacher_config.model, first.schema, DType::F32, 5, nullptr, Device::CPU);
  MultiTaskModel cpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CPU);
  MultiTaskModel gpu(config.model, first.schema, DType::F32, 7, nullptr, Device::CUDA);
  cpu.set_teacher(&teacher);
  gpu.set_teacher(&teacher);
  Optimizers o_cpu = make_optimizers(config, cpu), o_gpu = make_optimizers(config, gpu);
  auto comm = make_local_communicator();
  for (int64_t step = 1; step <= 3; ++step) {
    const Block batch = random_block(32, 60 + static_cast<uint64_t>(step));
    const StepLoss a = train_one_step(cpu, o_cpu, batch, -1, step, true, *comm);
    const StepLoss b = train_one_step(gpu, o_gpu, batch, -1, step, true, *comm);
    EXPECT_EQ(a.total, b.total) << "step " << step;
    EXPECT_EQ(a.per_task, b.per_task) << "step " << step;
  }
  EXPECT_TRUE(same_bits(cpu.params().values(), gpu.params().values()));
  const Block eval = random_block(20, 99);
  std::vector<std::vector<float>> p_cpu, p_gpu;
  cpu.predict(eval, p_cpu);
  gpu.predict(eval, p_gpu);
  EXPECT_EQ(p_cpu, p_gpu);
}

TEST(DeviceModel, CudaWithoutABackendIsAConfigError) {
  TrainConfig c = config_for("  type: esmm\n  tower: [8]\n" + kTables);
  c.device = "cuda";
  if (device_available(Device::CUDA)) GTEST_SKIP() << "a GPU backend is registered on this machine";
  EXPECT_THROW(training_device(c), ConfigError);
}

// The trainer on the device: the same run (checkpoint mid-way, resumed) as on the CPU gives the
// same losses, checkpoint and evaluation.
// `ncsrec eval` and `predict` load a run trained with run.device cuda or auto onto the device
// when one is there (load_model's device): its predictions are the CPU-loaded model's.
TEST(DeviceTraining, ACheckpointLoadedOnTheDevicePredictsAsOnTheCpu) {
  FakeDevice device;
  testing::ScratchDir scratch("device_load");
  testing::write_day(scratch.path / "train", 100, 1);
  const std::string yaml = "run: {device: cuda}\ndata: {train: [\"" + (scratch.path / "train").string() + "\"]}\n" +
                           "model:\n  type: ncs\n  shared: [8]\n  tower: [4]\n  embedding_dim: 4\n"
                           "  tables: {user: {rows: 50}, item: {rows: 50}}\n"
                           "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
                           "train: {batch_size: 16, max_steps: 6}\n";
  auto comm = make_local_communicator();
  run_training(parse_train_config(yaml, "run.yaml"), yaml, (scratch.path / "run").string(), *comm, TrainOptions{});
  const std::string ckpt = (scratch.path / "run/checkpoints/final").string();
  const std::string shard = (scratch.path / "train/part-0000.h5").string();
  int64_t rows = 0;
  Block eval = Block::with_schema(read_shard_schema(shard, &rows));
  read_shard_rows(shard, 0, rows, eval);
  auto on_cpu = load_model(ckpt, eval.schema, nullptr);
  auto on_device = load_model(ckpt, eval.schema, nullptr, nullptr, nullptr, Device::CUDA);
  ASSERT_EQ(on_device->params().values().device(), Device::CUDA);
  std::vector<std::vector<float>> p_cpu, p_device;
  on_cpu->predict(eval, p_cpu);
  on_device->predict(eval, p_device);
  ASSERT_FALSE(p_cpu.empty());
  EXPECT_EQ(p_cpu, p_device);
}

// Fixed tables and hash tables, both trained on the device (their host copy is what the
// checkpoints hold and the resumed run loads back).
class DeviceResume : public ::testing::TestWithParam<std::string> {};

TEST_P(DeviceResume, ARunResumedFromItsCheckpointOnTheDeviceMatchesTheCpuRun) {
  FakeDevice device;
  testing::ScratchDir scratch("device_training");
  testing::write_day(scratch.path / "train", 100, 1);
  testing::write_day(scratch.path / "eval", 40, 2);
  auto run = [&](const std::string& dev, const std::string& name, bool resume, int64_t max_steps) {
    const std::string yaml = "run: {device: " + dev + "}\n" + "data: {train: [\"" + (scratch.path / "train").string() +
                             "\"], eval: [\"" + (scratch.path / "eval").string() + "\"]}\n" +
                             "model:\n  type: ncs\n  shared: [8]\n  tower: [4]\n  embedding_dim: 4\n"
                             "  tables: " + GetParam() + "\n"
                             "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
                             "train: {batch_size: 16, epochs: 2, schedule: alternating, checkpoint_every: 4"
                             ", max_steps: " + std::to_string(max_steps) + "}\n";
    auto comm = make_local_communicator();
    TrainOptions options;
    options.resume = resume;
    return run_training(parse_train_config(yaml, "run.yaml"), yaml, (scratch.path / name).string(), *comm, options);
  };
  const TrainSummary cpu = run("cpu", "cpu", false, 10);
  run("cuda", "gpu", false, 6);  // stops at step 6, its newest periodic checkpoint at 4 (final at 6)
  fs::remove_all(scratch.path / "gpu/checkpoints/final");  // as if it had crashed after step 4
  const TrainSummary gpu = run("cuda", "gpu", true, 10);
  EXPECT_EQ(gpu.resumed_from_step, 4);
  EXPECT_EQ(gpu.steps, cpu.steps);
  EXPECT_EQ(gpu.eval.rows, cpu.eval.rows);
  ASSERT_FALSE(cpu.eval.views.empty());
  ASSERT_EQ(gpu.eval.views.size(), cpu.eval.views.size());
  for (size_t v = 0; v < cpu.eval.views.size(); ++v) {
    EXPECT_EQ(gpu.eval.views[v].metrics.auc, cpu.eval.views[v].metrics.auc) << cpu.eval.views[v].name;
    EXPECT_EQ(gpu.eval.views[v].metrics.logloss, cpu.eval.views[v].metrics.logloss) << cpu.eval.views[v].name;
  }
  std::ifstream summary(scratch.path / "gpu/summary.json");
  const std::string text((std::istreambuf_iterator<char>(summary)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"device\": \"cuda\""), std::string::npos) << text;
}

INSTANTIATE_TEST_SUITE_P(Tables, DeviceResume,
                         ::testing::Values("{user: {rows: 50}, item: {rows: 50}}",
                                           "{user: {capacity: 80}, item: {rows: 50}}",
                                           "{user: {capacity: 40, admit_after: 2, evict_when_full: true}, "
                                           "item: {capacity: 80, admit_after: 3}}"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           if (info.param.find("admit_after") != std::string::npos) return std::string("hash_admitted");
                           return info.param.find("capacity") == std::string::npos ? std::string("fixed")
                                                                                   : std::string("hash");
                         });

}  // namespace
}  // namespace ncsrec

namespace ncsrec {
namespace {

TEST(DeviceConfig, RunMatmulIsFp32Tf32OrBf16AndAnythingElseIsRefusedByName) {
  EXPECT_EQ(config_for("  type: esmm\n  tower: [8]\n" + kTables).matmul, "fp32");
  const std::string base = "data: {train: [\"unused\"]}\nmodel:\n  type: shared_embedding\n  tower: [8]\n  embedding_dim: 4\n"
                           "  tables: {user: {rows: 4}}\n  tasks: {ctr: {label: click}}\n";
  EXPECT_EQ(parse_train_config("run: {matmul: tf32}\n" + base, "m.yaml").matmul, "tf32");
  EXPECT_EQ(parse_train_config("run: {matmul: bf16}\n" + base, "m.yaml").matmul, "bf16");
  EXPECT_EQ(parse_matmul_precision("bf16"), kMatmulBf16);
  EXPECT_THROW(parse_matmul_precision("fp16"), ConfigError);
  testing::expect_config_error_naming("run: {matmul: fp16}\n" + base, "run.matmul");
}

TEST(DeviceConfig, RunDenseCommIsAutoNcclOrHostAndAnythingElseIsRefusedByName) {
  EXPECT_EQ(config_for("  type: esmm\n  tower: [8]\n" + kTables).dense_comm, "auto");
  const std::string base = "data: {train: [\"unused\"]}\nmodel:\n  type: shared_embedding\n  tower: [8]\n  embedding_dim: 4\n"
                           "  tables: {user: {rows: 4}}\n  tasks: {ctr: {label: click}}\n";
  EXPECT_EQ(parse_train_config("run: {dense_comm: host}\n" + base, "m.yaml").dense_comm, "host");
  EXPECT_EQ(parse_train_config("run: {dense_comm: nccl}\n" + base, "m.yaml").dense_comm, "nccl");
  testing::expect_config_error_naming("run: {dense_comm: mpi}\n" + base, "run.dense_comm");
}

}  // namespace
}  // namespace ncsrec

namespace ncsrec {
namespace {

// The model's phase clock (ncsrec bench's split): off, a step records nothing; on, every phase
// a step has gets time, and the phases add up to no more than the steps' wall time.
TEST(PhaseClock, AStepsPhasesAddUpToItsTime) {
  const TrainConfig config = config_for("  type: ncs\n  shared: [64, 32]\n  tower: [8]\n  interaction: dot\n" + kTables);
  const Block batch = random_block(256, 3);
  MultiTaskModel model(config.model, batch.schema, DType::F32, 7, nullptr, Device::CPU);
  Optimizers opt = make_optimizers(config, model);
  auto comm = make_local_communicator();
  train_one_step(model, opt, batch, -1, 1, true, *comm);
  for (double s : model.phase_clock().seconds()) EXPECT_EQ(s, 0.0) << "the clock is off unless enabled";
  model.phase_clock().enable(Device::CPU);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = 2; step <= 6; ++step) train_one_step(model, opt, batch, -1, step, true, *comm);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double sum = 0;
  for (int p = 0; p < kStepPhases; ++p) {
    const double s = model.phase_clock().seconds()[static_cast<size_t>(p)];
    sum += s;
    if (static_cast<StepPhase>(p) != StepPhase::AllReduce)  // one rank: nothing to wait for
      EXPECT_GT(s, 0.0) << step_phase_name(static_cast<StepPhase>(p));
  }
  EXPECT_LE(sum, wall);
  EXPECT_GT(sum, 0.5 * wall) << "the phases cover the step";
}

}  // namespace
}  // namespace ncsrec
