// A whole model trained on the GPU (dense part, loss heads and embedding tables) against the
// same model on the CPU, for the NCS model and ESMM: after a few steps (NCS: joint and
// single-task, with masks; SGD, clipping) the dense weights, the embedding rows and the
// predictions agree to rounding (cuBLAS sums in another order than the CPU GEMM, so bits
// differ; tests/unit/test_device_training.cpp checks the host-side code bit for bit on a
// stand-in device). Skips without a GPU; ctest emu.kernels runs it on the emulated kernels
// (tests/emu/) with the CPU's GEMM.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/random.h"
#include "cuda/device.h"
#include "dist/communicator.h"
#include "models/multitask_model.h"
#include "train/step.h"
#include "train/train_config.h"
#include "tests/unit/tiny_data.h"

namespace ncsrec {
namespace {

Block random_block(int64_t rows, uint64_t seed) {
  return testing::random_block(rows, seed, {"user", "item"}, 4, 500);
}

double max_abs_difference(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::CPU), hb = b.to(Device::CPU);
  double d = 0;
  for (int64_t i = 0; i < ha.numel(); ++i)
    d = std::max(d, std::abs(static_cast<double>(ha.data<float>()[i]) - hb.data<float>()[i]));
  return d;
}

struct Case {
  const char* name;
  std::string model;        // the model: block of the config
  std::vector<int> schedule;  // per step: -1 joint, t task t alone
};

class CudaModel : public ::testing::TestWithParam<Case> {};

TEST_P(CudaModel, StepsOnTheGpuTrackTheCpuModel) {
  std::string why;
  if (!cuda_register_if_available(&why)) GTEST_SKIP() << "needs a GPU: " << why;
  const std::string yaml =
      "data: {train: [\"unused\"]}\nmodel:\n  embedding_dim: 8\n  interaction: dot\n" + GetParam().model +
      "  tables: {user: {rows: 500}, item: {rows: 500}}\n"
      "  tasks: {ctr: {label: click}, cvr: {label: conversion, given: ctr}}\n"
      "optimizer: {type: sgd, lr: 0.05}\nsparse_optimizer: {type: adagrad, lr: 0.05}\n"
      "train: {batch_size: 512, clip_grad_norm: 5}\n";
  const TrainConfig config = parse_train_config(yaml, "gpu.yaml");
  const Block first = random_block(512, 1);
  MultiTaskModel cpu(config.model, first.schema, DType::F32, 3, nullptr, Device::CPU);
  MultiTaskModel gpu(config.model, first.schema, DType::F32, 3, nullptr, Device::CUDA);
  for (int l = 0; l < cpu.num_masked_layers(); ++l)
    for (int t = 0; t < 2; ++t) {
      BitMask m = BitMask::zeros(cpu.mask(t, l).rows, cpu.mask(t, l).cols);
      Rng rng(50 + static_cast<uint64_t>(2 * l + t));
      for (int64_t i = 0; i < m.size(); ++i) m.set(i, rng.bernoulli(0.3));
      cpu.set_mask(t, l, m);
      gpu.set_mask(t, l, m);
    }
  Optimizers o_cpu = make_optimizers(config, cpu), o_gpu = make_optimizers(config, gpu);
  ASSERT_TRUE(gpu.tables_on_device()) << gpu.device_table_limits(config.sparse_optimizer);
  auto comm = make_local_communicator();
  const std::vector<int>& schedule = GetParam().schedule;
  for (size_t s = 0; s < schedule.size(); ++s) {
    const Block batch = random_block(512, 10 + s);
    const StepLoss a = train_one_step(cpu, o_cpu, batch, schedule[s], static_cast<int64_t>(s + 1), true, *comm);
    const StepLoss b = train_one_step(gpu, o_gpu, batch, schedule[s], static_cast<int64_t>(s + 1), true, *comm);
    EXPECT_NEAR(a.total, b.total, 1e-5 * std::max(1.0, std::abs(a.total))) << "step " << s + 1;
  }
  // SGD (Adam would turn rounding noise in near-zero gradients into whole steps of lr): the
  // weights differ by the rounding of the gradients, far below one step of a missed mask or a
  // wrong update (lr · |g|, of order 1e-3 here).
  EXPECT_LT(max_abs_difference(cpu.params().values(), gpu.params().values()), 1e-5);
  for (size_t t = 0; t < cpu.tables().size(); ++t)
    EXPECT_LT(max_abs_difference(cpu.tables()[t].shard().values(), gpu.tables()[t].shard().values()), 1e-5);
  std::vector<std::vector<float>> p_cpu, p_gpu;
  const Block eval = random_block(300, 77);
  cpu.predict(eval, p_cpu);
  gpu.predict(eval, p_gpu);
  for (size_t t = 0; t < p_cpu.size(); ++t)
    for (size_t i = 0; i < p_cpu[t].size(); ++i) ASSERT_NEAR(p_cpu[t][i], p_gpu[t][i], 1e-5) << t << " " << i;
}

INSTANTIATE_TEST_SUITE_P(Models, CudaModel,
                         ::testing::Values(Case{"ncs", "  type: ncs\n  shared: [256, 128]\n  tower: [32]\n",
                                                {-1, 0, 1, -1, 0, 1, -1, -1}},
                                           // ESMM trains its two losses together: joint steps only.
                                           Case{"esmm", "  type: esmm\n  tower: [256, 128, 32]\n",
                                                {-1, -1, -1, -1, -1, -1, -1, -1}}),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace ncsrec
