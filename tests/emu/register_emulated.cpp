// For ncsrec_emu_tests (ctest emu.kernels): a cuda_register_if_available that puts the CPU's
// kernels in the CUDA slot (copies are memcpy) with the emulated kernels of cuda/train_ops.cu
// and cuda/masked_linear.cu in place of the CPU's entries, so the GPU parity tests compare them.
#include <cstring>
#include <string>

#include "core/dispatch.h"

namespace ncsrec {

void add_emulated_training_ops(OpTable& t);
void add_emulated_masked_linear_ops(OpTable& t);

bool cuda_register_if_available(std::string*) {
  OpTable t = ops_for(Device::CPU);
  t.copy = [](void* d, const void* s, size_t n, CopyKind) { std::memcpy(d, s, n); };
  add_emulated_training_ops(t);
  add_emulated_masked_linear_ops(t);
  register_ops(Device::CUDA, t);
  return true;
}

}  // namespace ncsrec
