#include "core/device_table.h"

#include <array>
#include <mutex>

namespace ncsrec {
namespace {

std::mutex g_mutex;
std::array<DeviceTableFactory, 2> g_factories{};  // by Device

size_t slot_of(Device device) { return device == Device::CPU ? 0 : 1; }

}  // namespace

void register_device_tables(Device device, DeviceTableFactory factory) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_factories[slot_of(device)] = factory;
}

DeviceTableFactory device_table_factory(Device device) {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_factories[slot_of(device)];
}

}  // namespace ncsrec
