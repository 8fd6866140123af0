// A stand-in GPU for tests of the device code paths on machines without one: the CPU kernels
// registered in the CUDA slot of the dispatch table (copies of every kind become memcpy). Code
// written for a device then runs on host memory, and its host access to device tensors is still
// refused (Tensor::data checks the device), so a missing copy fails here as it would on a GPU.
// The real kernels are checked against the CPU ones by tests/gpu/.
#pragma once

#include <cstring>

#include "core/dispatch.h"

namespace ncsrec::testing {

class FakeDevice {
 public:
  FakeDevice() {
    if (device_available(Device::CUDA)) saved_ = ops_for(Device::CUDA);  // a real backend, put back after
    OpTable t = ops_for(Device::CPU);
    t.copy = [](void* dst, const void* src, size_t bytes, CopyKind) { std::memcpy(dst, src, bytes); };
    register_ops(Device::CUDA, t);
  }
  ~FakeDevice() { register_ops(Device::CUDA, saved_); }
  FakeDevice(const FakeDevice&) = delete;
  FakeDevice& operator=(const FakeDevice&) = delete;

 private:
  OpTable saved_{};
};

}  // namespace ncsrec::testing
