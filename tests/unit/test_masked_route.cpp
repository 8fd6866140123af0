// The masked layers' two routes (core/layers/masked_linear.h MaskedRoute): the CPU's entries of
// the fused route compute the plain route's bits; on a device (the stand-in of fake_device.h)
// the fused route really runs one call for every task of a layer, gives the plain route's
// results, and `auto` measures each shape once without touching the layer. The CUDA kernels are
// checked against the CPU entries by tests/gpu/test_cuda_masked_linear.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "core/error.h"
#include "core/layers/masked_linear.h"
#include "core/masks.h"
#include "core/ops.h"
#include "core/params.h"
#include "tests/random_inputs.h"
#include "tests/unit/config_checks.h"
#include "tests/unit/fake_device.h"
#include "tests/unit/route_scope.h"
#include "gradcheck.h"
#include "train/train_config.h"

namespace ncsrec {
namespace {

using testing::FakeDevice;
using testing::random_mask;

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::CPU), hb = b.to(Device::CPU);
  return ha.numel() == hb.numel() && std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) == 0;
}

// A host f64 tensor of NaNs: an output that must be written.
Tensor nan_tensor(Shape shape) {
  Tensor t = Tensor::empty(std::move(shape), DType::F64);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = std::nan("");
  return t;
}

using testing::RouteScope;

using testing::CountingDevice;
using testing::g_forward_calls;
using testing::g_input_grad_calls;
using testing::g_weight_grad_calls;

TEST(MaskedRoute, NamesParseAndRunMaskedRouteIsChecked) {
  EXPECT_EQ(masked_route_names(), (std::vector<std::string>{"auto", "plain", "fused"}));
  EXPECT_EQ(parse_masked_route("fused"), MaskedRoute::Fused);
  EXPECT_EQ(parse_masked_route("plain"), MaskedRoute::Plain);
  EXPECT_THROW(parse_masked_route("sparse"), ConfigError);
  const std::string base = "data: {train: [\"unused\"]}\nmodel:\n  type: ncs\n  shared: [8]\n  embedding_dim: 4\n"
                           "  tables: {user: {rows: 4}}\n  tasks: {ctr: {label: click}, cvr: {label: conversion}}\n";
  EXPECT_EQ(parse_train_config(base, "m.yaml").masked_route, "auto");
  EXPECT_EQ(parse_train_config("run: {masked_route: fused}\n" + base, "m.yaml").masked_route, "fused");
  testing::expect_config_error_naming("run: {masked_route: sparse}\n" + base, "run.masked_route");
}

// The CPU's fused entries are the plain route op for op: the same bits as apply_mask and the
// products task by task, and nothing added to dW outside every mask.
TEST(MaskedRoute, TheCpusFusedEntriesGiveThePlainRoutesBits) {
  const int64_t rows = 13, in = 37, out = 21;
  const int tasks = 3;
  const Tensor W = testing::random_tensor({in, out}, 1), bias = testing::random_tensor({out}, 2);
  std::vector<BitMask> masks;
  std::vector<Tensor> x, dy;
  for (int t = 0; t < tasks; ++t) {
    masks.push_back(random_mask(in, out, 0.2 + 0.25 * t, 10 + t));
    x.push_back(testing::random_tensor({rows, in}, 20 + t));
    dy.push_back(testing::random_tensor({rows, out}, 30 + t));
  }
  std::vector<Tensor> y_plain, dx_plain, y_fused, dx_fused;
  Tensor dw_plain = testing::random_tensor({in, out}, 3), dw_fused = dw_plain.to(Device::CPU);
  const Tensor dw_before = dw_plain.to(Device::CPU);
  Tensor wm = Tensor::empty({in, out}, DType::F64), product = Tensor::empty({in, out}, DType::F64);
  for (int t = 0; t < tasks; ++t) {
    apply_mask(wm, W, masks[static_cast<size_t>(t)]);
    y_plain.push_back(Tensor::empty({rows, out}, DType::F64));
    ops::linear_forward(y_plain.back(), x[static_cast<size_t>(t)], wm, &bias, true);
    ops::gemm(product, x[static_cast<size_t>(t)], true, dy[static_cast<size_t>(t)], false);
    add_masked(dw_plain, product, masks[static_cast<size_t>(t)]);
    dx_plain.push_back(Tensor::empty({rows, in}, DType::F64));
    ops::gemm(dx_plain.back(), dy[static_cast<size_t>(t)], false, wm, true);
    y_fused.push_back(nan_tensor({rows, out}));
    dx_fused.push_back(nan_tensor({rows, in}));
  }
  std::vector<Tensor*> ys, dxs;
  std::vector<const Tensor*> xs, dys;
  std::vector<const uint8_t*> bits;
  for (int t = 0; t < tasks; ++t) {
    ys.push_back(&y_fused[static_cast<size_t>(t)]);
    dxs.push_back(&dx_fused[static_cast<size_t>(t)]);
    xs.push_back(&x[static_cast<size_t>(t)]);
    dys.push_back(&dy[static_cast<size_t>(t)]);
    bits.push_back(masks[static_cast<size_t>(t)].bits.data());
  }
  ops::masked_linear_forward(ys, xs, W, bits, &bias, true);
  ops::masked_linear_weight_grad(dw_fused, xs, dys, bits);
  ops::masked_linear_input_grad(dxs, dys, W, bits);
  for (int t = 0; t < tasks; ++t) {
    EXPECT_TRUE(same_bits(y_fused[static_cast<size_t>(t)], y_plain[static_cast<size_t>(t)])) << "y, task " << t;
    EXPECT_TRUE(same_bits(dx_fused[static_cast<size_t>(t)], dx_plain[static_cast<size_t>(t)])) << "dx, task " << t;
  }
  EXPECT_TRUE(same_bits(dw_fused, dw_plain));
  int64_t outside = 0;
  for (int64_t i = 0; i < in * out; ++i) {
    bool in_some = false;
    for (const BitMask& m : masks) in_some = in_some || m.get(i);
    if (in_some) continue;
    ++outside;
    EXPECT_EQ(dw_fused.data<double>()[i], dw_before.data<double>()[i]) << "element " << i << " is in no mask";
  }
  EXPECT_GT(outside, 0) << "the masks should leave some weight in none of them";
  // Lists that do not match are refused by name.
  EXPECT_THROW(ops::masked_linear_forward({ys[0]}, xs, W, bits, &bias, true), InternalError);
}

// A masked MLP of two tasks on the stand-in device against the same MLP on the CPU: with the
// fused route every layer makes one forward call, one weight-gradient call and one input-
// gradient call for both tasks, and outputs, input gradients and parameter gradients are the
// CPU's bits; with the plain route the fused entries are never called.
TEST(MaskedRoute, OnADeviceTheFusedRouteServesEveryTaskInOneCallWithThePlainRoutesBits) {
  for (const MaskedRoute route : {MaskedRoute::Fused, MaskedRoute::Plain}) {
    SCOPED_TRACE(masked_route_names()[static_cast<size_t>(route)]);
    CountingDevice device;
    RouteScope scope(route);
    ParamStore cpu_store, gpu_store;
    MaskedMLP cpu(cpu_store, "m", 9, {7, 5}, 2, true), gpu(gpu_store, "m", 9, {7, 5}, 2, true);
    cpu_store.finalize(DType::F64, Device::CPU, 3);
    gpu_store.finalize(DType::F64, Device::CUDA, 3);
    for (int t = 0; t < 2; ++t) {
      const std::vector<BitMask> masks = {random_mask(9, 7, 0.5, 40 + t), random_mask(7, 5, 0.6, 50 + t)};
      cpu.set_task_masks(t, masks);
      gpu.set_task_masks(t, masks);
    }
    const Tensor x = testing::random_tensor({6, 9}, 4);
    const Tensor x_dev = x.to(Device::CUDA);
    const Tensor dy0 = testing::random_tensor({6, 5}, 5), dy1 = testing::random_tensor({6, 5}, 6);
    const Tensor dy0_dev = dy0.to(Device::CUDA), dy1_dev = dy1.to(Device::CUDA);
    for (int t = 0; t < 2; ++t) cpu.forward(t, x);
    gpu.forward_tasks({0, 1}, x_dev);
    cpu.backward(0, dy0, true);
    cpu.backward(1, dy1, true);
    gpu.backward_tasks({0, 1}, {&dy0_dev, &dy1_dev}, true);
    const int layers = static_cast<int>(gpu.depth());
    EXPECT_EQ(g_forward_calls, route == MaskedRoute::Fused ? layers : 0);
    EXPECT_EQ(g_weight_grad_calls, route == MaskedRoute::Fused ? layers : 0);
    EXPECT_EQ(g_input_grad_calls, route == MaskedRoute::Fused ? layers : 0);
    for (int t = 0; t < 2; ++t) {
      EXPECT_TRUE(same_bits(gpu.output(t), cpu.layer(1).output(t))) << "output, task " << t;
      EXPECT_TRUE(same_bits(gpu.input_grad(t), cpu.layer(0).input_grad(t))) << "dx, task " << t;
    }
    EXPECT_TRUE(same_bits(gpu_store.grads(), cpu_store.grads())) << "parameter gradients";
    EXPECT_GT(cpu_store.grads().to(Device::CPU).numel(), 0);
  }
}

// auto measures a layer shape at its first use, once (a batch of other rows takes the same
// route), in scratch memory: the layer's parameter gradients stay as they were.
TEST(MaskedRoute, AutoMeasuresEachShapeOnceAndLeavesTheLayerAlone) {
  FakeDevice device;
  RouteScope scope(MaskedRoute::Auto);
  ParamStore store;
  MaskedLinear layer(store, "auto_probe", 11, 13, 2, Activation::ReLU);
  store.finalize(DType::F64, Device::CUDA, 8);
  layer.set_mask(0, random_mask(11, 13, 0.4, 60));
  layer.set_mask(1, random_mask(11, 13, 0.4, 61));
  const size_t before = masked_route_choices().size();
  const Tensor x = testing::random_tensor({5, 11}, 9).to(Device::CUDA);
  layer.forward_tasks({0, 1}, {&x, &x});
  ASSERT_EQ(masked_route_choices().size(), before + 1);
  layer.forward_tasks({0, 1}, {&x, &x});
  const Tensor x7 = testing::random_tensor({7, 11}, 10).to(Device::CUDA);
  layer.forward_tasks({0, 1}, {&x7, &x7});  // other rows: the same shape's route
  ASSERT_EQ(masked_route_choices().size(), before + 1);
  layer.forward(0, x);  // one task: another shape
  const std::vector<MaskedRouteChoice> choices = masked_route_choices();
  ASSERT_EQ(choices.size(), before + 2);
  const MaskedRouteChoice& c = choices[before];
  EXPECT_EQ(c.device, "cuda");
  EXPECT_EQ(c.dtype, "f64");
  EXPECT_EQ(c.tasks, 2);
  EXPECT_EQ(c.rows, 5);
  EXPECT_EQ(c.in, 11);
  EXPECT_EQ(c.out, 13);
  EXPECT_GT(c.plain_ms, 0);
  EXPECT_GT(c.fused_ms, 0);
  EXPECT_EQ(c.fused, c.fused_ms <= 0.95 * c.plain_ms);
  EXPECT_EQ(choices[before + 1].tasks, 1);
  const Tensor grads = store.grads().to(Device::CPU);
  for (int64_t i = 0; i < grads.numel(); ++i) ASSERT_EQ(grads.data<double>()[i], 0.0) << "gradient " << i;
  EXPECT_NE(describe_masked_route_choices().find("11→13, 2 tasks, 5 rows (cuda f64)"), std::string::npos)
      << describe_masked_route_choices();
}

}  // namespace
}  // namespace ncsrec
