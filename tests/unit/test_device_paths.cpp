// The device code paths of the optimizers, gradient clipping and the masked layer, run on the
// stand-in device of fake_device.h (CPU kernels in the CUDA slot, host access to its tensors
// refused): each must give the CPU's bits, so what differs on a real GPU is the kernels alone
// (tests/gpu/ checks those). A missing host↔device copy fails here as "read or written from the
// host".
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/layers/masked_linear.h"
#include "core/optim.h"
#include "core/random.h"
#include "dist/communicator.h"
#include "tests/unit/fake_device.h"

namespace ncsrec {
namespace {

using testing::FakeDevice;

Tensor random_tensor(Shape shape, DType dtype, uint64_t seed) {
  Tensor t = Tensor::empty(std::move(shape), dtype, Device::CPU);
  Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = rng.uniform() * 2.0 - 1.0;
    if (dtype == DType::F32) t.data<float>()[i] = static_cast<float>(v);
    else t.data<double>()[i] = v;
  }
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::CPU), hb = b.to(Device::CPU);
  return ha.numel() == hb.numel() && ha.dtype() == hb.dtype() &&
         std::memcmp(ha.raw(), hb.raw(), static_cast<size_t>(ha.numel()) * dtype_size(ha.dtype())) == 0;
}

// copy_columns_from: the leading columns of every row, between any two devices (through the
// backend's copy_2d, or row by row where it has none); the other columns stay as they were.
TEST(DevicePaths, LeadingColumnsCopyBetweenDevicesAndLeaveTheRestAlone) {
  FakeDevice device;
  Tensor host = Tensor::empty({5, 7}, DType::F64);
  for (int64_t i = 0; i < 35; ++i) host.data<double>()[i] = static_cast<double>(i) + 0.5;
  for (const bool with_copy_2d : {true, false}) {
    if (!with_copy_2d) {
      OpTable t = ops_for(Device::CUDA);
      t.copy_2d = nullptr;
      register_ops(Device::CUDA, t);
    }
    Tensor on_device = Tensor::zeros({5, 7}, DType::F64, Device::CUDA);
    on_device.copy_columns_from(host, 3);
    Tensor back = Tensor::empty({5, 7}, DType::F64);
    for (int64_t i = 0; i < 35; ++i) back.data<double>()[i] = -1;
    back.copy_columns_from(on_device, 4);  // column 3 comes down as the device's zero
    for (int64_t r = 0; r < 5; ++r)
      for (int64_t c = 0; c < 7; ++c) {
        const double want = c < 3 ? static_cast<double>(r * 7 + c) + 0.5 : c == 3 ? 0.0 : -1.0;
        EXPECT_EQ(back.data<double>()[r * 7 + c], want) << "row " << r << " column " << c << ", copy_2d " << with_copy_2d;
      }
  }
  Tensor wide = Tensor::empty({5, 8}, DType::F64);
  EXPECT_THROW(wide.copy_columns_from(host, 3), InternalError);
}

TEST(DevicePaths, HostAccessToADeviceTensorIsRefusedWithTheCopyToMake) {
  FakeDevice device;
  Tensor t = Tensor::zeros({4}, DType::F32, Device::CUDA);
  try {
    (void)t.data<float>();
    FAIL() << "host access to a device tensor was allowed";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("to(Device::CPU)"), std::string::npos) << e.what();
  }
  EXPECT_EQ(t.to(Device::CPU).data<float>()[3], 0.0f);
}

class DeviceOptimizer : public ::testing::TestWithParam<const char*> {};

TEST_P(DeviceOptimizer, FiveStepsOnTheDeviceGiveTheCpuBits) {
  FakeDevice device;
  OptimizerConfig c;
  c.type = GetParam();
  c.lr = 0.05;
  c.weight_decay = 0.01;
  const int64_t n = 257;
  std::vector<uint8_t> decay(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) decay[static_cast<size_t>(i)] = i % 3 != 0;
  std::vector<uint8_t> update(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) update[static_cast<size_t>(i)] = i % 5 != 1;
  Tensor update_host = Tensor::empty({n}, DType::U8, Device::CPU);
  std::memcpy(update_host.raw(), update.data(), update.size());
  const Tensor update_device = update_host.to(Device::CUDA);

  auto cpu = make_dense_optimizer(c, n, DType::F32, Device::CPU);
  auto gpu = make_dense_optimizer(c, n, DType::F32, Device::CUDA);
  cpu->set_decay_mask(decay);
  gpu->set_decay_mask(decay);
  Tensor w_cpu = random_tensor({n}, DType::F32, 1);
  Tensor w_gpu = w_cpu.to(Device::CUDA);
  for (int step = 1; step <= 5; ++step) {
    const Tensor g = random_tensor({n}, DType::F32, 100 + static_cast<uint64_t>(step));
    cpu->step(w_cpu, g, step, update.data());
    gpu->step(w_gpu, g.to(Device::CUDA), step, static_cast<const uint8_t*>(update_device.raw()));
  }
  EXPECT_TRUE(same_bits(w_cpu, w_gpu));
  EXPECT_FALSE(same_bits(w_cpu, random_tensor({n}, DType::F32, 1))) << "the steps moved nothing";
  // A CPU buffer given to the device optimizer is refused, not read as device memory.
  EXPECT_THROW(gpu->step(w_cpu, random_tensor({n}, DType::F32, 7), 6), InternalError);
}

INSTANTIATE_TEST_SUITE_P(Types, DeviceOptimizer, ::testing::Values("sgd", "adam", "adagrad"));

// The norm on the device, over a mask in device memory.
TEST(DevicePaths, ClippingOnTheDeviceMeasuresAndScalesLikeTheCpu) {
  FakeDevice device;
  Tensor g_cpu = random_tensor({1000}, DType::F64, 3);
  Tensor g_gpu = g_cpu.to(Device::CUDA);
  Tensor mask = Tensor::empty({1000}, DType::U8, Device::CPU);
  std::fill_n(mask.data<uint8_t>(), 1000, uint8_t{1});
  mask.data<uint8_t>()[10] = 0;
  const Tensor mask_gpu = mask.to(Device::CUDA);
  const double n_cpu = clip_grad_norm(g_cpu, 2.0, mask.data<uint8_t>());
  const double n_gpu = clip_grad_norm(g_gpu, 2.0, static_cast<const uint8_t*>(mask_gpu.raw()));
  EXPECT_EQ(n_cpu, n_gpu);
  EXPECT_GT(n_cpu, 2.0) << "the test must clip";
  EXPECT_TRUE(same_bits(g_cpu, g_gpu));
}

// Two tasks through one masked layer, forward and backward, then a mask change between steps:
// the device copy of the bits must follow it.
TEST(DevicePaths, MaskedLayerOnTheDeviceGivesTheCpuOutputsAndGradients) {
  FakeDevice device;
  const int64_t B = 6, in = 9, out = 5;
  auto build = [&](Device d, ParamStore& store) {
    auto layer = std::make_unique<MaskedLinear>(store, "l", in, out, 2, Activation::ReLU);
    store.finalize(DType::F64, d, 11);
    return layer;
  };
  ParamStore s_cpu, s_gpu;
  auto l_cpu = build(Device::CPU, s_cpu);
  auto l_gpu = build(Device::CUDA, s_gpu);
  auto masks = [&](uint64_t seed) {
    BitMask m = BitMask::zeros(in, out);
    Rng rng(seed);
    for (int64_t i = 0; i < in * out; ++i) m.set(i, rng.uniform() < 0.6);
    return m;
  };
  const Tensor x = random_tensor({B, in}, DType::F64, 5);
  const Tensor dy = random_tensor({B, out}, DType::F64, 6);
  const Tensor x_gpu = x.to(Device::CUDA), dy_gpu = dy.to(Device::CUDA);
  for (int round = 0; round < 2; ++round) {
    for (int t = 0; t < 2; ++t) {
      const BitMask m = masks(20 + static_cast<uint64_t>(round * 2 + t));
      l_cpu->set_mask(t, m);
      l_gpu->set_mask(t, m);
    }
    s_cpu.zero_grad();
    s_gpu.zero_grad();
    for (int t = 0; t < 2; ++t) {
      EXPECT_TRUE(same_bits(l_cpu->forward(t, x), l_gpu->forward(t, x_gpu))) << "task " << t << " round " << round;
    }
    for (int t = 1; t >= 0; --t) {
      EXPECT_TRUE(same_bits(l_cpu->backward(t, dy), l_gpu->backward(t, dy_gpu))) << "dx, task " << t;
    }
    EXPECT_TRUE(same_bits(s_cpu.grads(), s_gpu.grads())) << "round " << round;
  }
  // In-place pruning through mutable_mask reaches the device too.
  l_cpu->mutable_mask(0).set(0, !l_cpu->mask(0).get(0));
  l_gpu->mutable_mask(0).set(0, !l_gpu->mask(0).get(0));
  EXPECT_TRUE(same_bits(l_cpu->forward(0, x), l_gpu->forward(0, x_gpu)));
}

// Two "ranks" whose all-reduce doubles the buffer (the sum of two equal replicas), recording the
// memory it was handed.
class DoublingComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  const char* kind() const override { return "doubling"; }
  const void* seen = nullptr;

 protected:
  void do_all_reduce(void* data, int64_t n, DType dtype, bool) override {
    seen = data;
    for (int64_t i = 0; i < n; ++i) static_cast<double*>(data)[i] *= 2;
    (void)dtype;
  }
  void do_all_to_all_v(const void*, const int64_t*, void*, const int64_t*, DType) override {}
  void do_all_gather(const void*, int64_t, void*, DType) override {}
  void do_broadcast(void*, int64_t, DType, int) override {}
  void do_barrier() override {}
};

TEST(DevicePaths, AHostCommunicatorSumsADeviceTensorThroughAHostCopy) {
  FakeDevice device;
  const Tensor host = random_tensor({5}, DType::F64, 9);
  Tensor t = host.to(Device::CUDA);
  DoublingComm comm;
  comm.all_reduce_sum(t);
  EXPECT_NE(comm.seen, t.raw()) << "MPI was handed device memory";
  const Tensor back = t.to(Device::CPU);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(back.data<double>()[i], 2 * host.data<double>()[i]);
}

}  // namespace
}  // namespace ncsrec
