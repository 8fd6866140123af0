#include "core/dispatch.h"

#include <algorithm>
#include <atomic>

#include "core/error.h"

namespace ncsrec {

const OpTable& cpu_op_table();  // core/cpu_kernels.cpp

namespace {
OpTable& cuda_slot() {
  static OpTable table;
  return table;
}
}  // namespace

const OpTable& ops_for(Device device) {
  if (device == Device::CPU) return cpu_op_table();
  const OpTable& t = cuda_slot();
  if (!t.alloc)
    throw UserError("the CUDA backend is not available (built without CUDA, or no GPU/driver on this machine); "
                    "use device: cpu");
  return t;
}

namespace {
std::atomic<int> g_matmul_precision{kMatmulFp32};
}  // namespace

void set_matmul_precision(MatmulPrecision precision) {
  NCSREC_CHECK(precision == kMatmulFp32 || precision == kMatmulTf32 || precision == kMatmulBf16,
               "matmul precision " << precision);
  g_matmul_precision = precision;
}

const std::vector<std::string>& matmul_precision_names() {
  static const std::vector<std::string> names = {"fp32", "tf32", "bf16"};
  return names;
}

MatmulPrecision parse_matmul_precision(const std::string& name) {
  const std::vector<std::string>& names = matmul_precision_names();
  const auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) throw ConfigError("matmul precision '" + name + "': expected fp32, tf32 or bf16");
  return static_cast<MatmulPrecision>(it - names.begin());
}

MatmulPrecision matmul_precision() { return static_cast<MatmulPrecision>(g_matmul_precision.load()); }

bool device_available(Device device) { return device == Device::CPU || cuda_slot().alloc != nullptr; }

void register_ops(Device device, const OpTable& table) {
  NCSREC_CHECK(device == Device::CUDA, "only the CUDA slot can be registered");
  cuda_slot() = table;
}

}  // namespace ncsrec
