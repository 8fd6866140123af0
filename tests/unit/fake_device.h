// A stand-in GPU for tests of the device code paths on machines without one: the CPU kernels
// registered in the CUDA slot of the dispatch table (copies of every kind become memcpy). Code
// written for a device then runs on host memory, and its host access to device tensors is still
// refused (Tensor::data checks the device), so a missing copy fails here as it would on a GPU.
// The real kernels are checked against the CPU ones by tests/gpu/.
#pragma once

#include <atomic>
#include <cstring>

#include "core/dispatch.h"

namespace ncsrec::testing {

class FakeDevice {
 public:
  FakeDevice() {
    if (device_available(Device::CUDA)) saved_ = ops_for(Device::CUDA);  // a real backend, put back after
    OpTable t = ops_for(Device::CPU);
    t.copy = [](void* dst, const void* src, size_t bytes, CopyKind) { std::memcpy(dst, src, bytes); };
    t.copy_2d = [](void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                   CopyKind) {
      for (size_t r = 0; r < rows; ++r)
        std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
    };
    register_ops(Device::CUDA, t);
  }
  ~FakeDevice() { register_ops(Device::CUDA, saved_); }
  FakeDevice(const FakeDevice&) = delete;
  FakeDevice& operator=(const FakeDevice&) = delete;

 private:
  OpTable saved_{};
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
