#include "core/device_table.h"

#include <algorithm>
#include <tuple>

#include "core/per_device.h"

namespace ncsrec {
namespace {

PerDevice<DeviceTableFactory> g_factories;

}  // namespace

void register_device_tables(Device device, DeviceTableFactory factory) { g_factories.set(device, factory); }

DeviceTableFactory device_table_factory(Device device) { return g_factories.get(device); }

std::vector<int64_t> least_recently_seen(const int64_t* keys, const int64_t* last_seen_day, const int64_t* updated_step,
                                         int64_t rows, const std::vector<int64_t>& kept, int64_t n) {
  std::vector<int64_t> candidates;
  for (int64_t r = 0; r < rows; ++r)
    if (!std::binary_search(kept.begin(), kept.end(), keys[r])) candidates.push_back(r);
  n = std::min<int64_t>(n, static_cast<int64_t>(candidates.size()));
  auto older = [&](int64_t a, int64_t b) {
    return std::tie(last_seen_day[a], updated_step[a], keys[a]) < std::tie(last_seen_day[b], updated_step[b], keys[b]);
  };
  std::nth_element(candidates.begin(), candidates.begin() + n, candidates.end(), older);
  candidates.resize(static_cast<size_t>(n));
  return candidates;
}

}  // namespace ncsrec
