// A value per device (one slot for the CPU, one for CUDA), set and read under a lock: the
// registries through which a backend installs what core calls without including it (the
// device embedding tables of core/device_table.h, the device CSR layers of core/sparse.h).
#pragma once

#include <array>
#include <mutex>

#include "core/tensor.h"

namespace ncsrec {

template <class T>
class PerDevice {
 public:
  void set(Device device, T value) {
    std::lock_guard<std::mutex> lock(mutex_);
    values_[slot(device)] = value;
  }
  T get(Device device) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return values_[slot(device)];
  }

 private:
  static size_t slot(Device device) { return device == Device::CPU ? 0 : 1; }
  mutable std::mutex mutex_;
  std::array<T, 2> values_{};
};

}  // namespace ncsrec
