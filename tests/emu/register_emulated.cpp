// For ncsrec_emu_tests (ctest emu.kernels): a cuda_register_if_available that puts the CPU's
// kernels in the CUDA slot (copies are memcpy) with the emulated kernels of cuda/train_ops.cu
// and cuda/masked_linear.cu in place of the CPU's entries, and the emulated tables of
// cuda/embedding_table.cu as the device's tables, so the GPU parity tests compare them.
#include <cstring>
#include <string>

#include "core/device_table.h"
#include "core/dispatch.h"
#include "cuda/embedding_table.h"

namespace ncsrec {

void add_emulated_training_ops(OpTable& t);
void add_emulated_masked_linear_ops(OpTable& t);

bool cuda_register_if_available(std::string*) {
  OpTable t = ops_for(Device::CPU);
  t.copy = [](void* d, const void* s, size_t n, CopyKind) { std::memcpy(d, s, n); };
  t.copy_2d = [](void* d, size_t d_pitch, const void* s, size_t s_pitch, size_t width, size_t rows, CopyKind) {
    for (size_t r = 0; r < rows; ++r)
      std::memcpy(static_cast<char*>(d) + r * d_pitch, static_cast<const char*>(s) + r * s_pitch, width);
  };
  add_emulated_training_ops(t);
  add_emulated_masked_linear_ops(t);
  register_ops(Device::CUDA, t);
  register_device_tables(Device::CUDA, make_cuda_device_table);
  return true;
}

int cuda_device_count() { return 1; }  // the emulated one

}  // namespace ncsrec
