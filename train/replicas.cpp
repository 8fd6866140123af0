#include "train/replicas.h"

#include <cstring>
#include <vector>

#include "core/crc32c.h"
#include "core/dispatch.h"
#include "core/error.h"

namespace ncsrec {

void average_state_over_ranks(MultiTaskModel& model, Communicator& comm) {
  if (comm.world_size() == 1) return;
  std::vector<Param*> state;
  int64_t n = 0;
  for (Param& p : model.params().params())
    if (!p.trainable) {
      state.push_back(&p);
      n += p.value.numel();
    }
  if (state.empty()) return;
  const size_t es = dtype_size(model.dtype());
  std::vector<char> buffer(static_cast<size_t>(n) * es);
  // The state is where the model is: copied through the host (a few values per layer).
  const Device device = model.params().values().device();
  auto copy = [&](void* dst, const void* src, size_t bytes, CopyKind kind) {
    if (device == Device::CPU) std::memcpy(dst, src, bytes);
    else ops_for(device).copy(dst, src, bytes, kind);
  };
  size_t at = 0;
  for (Param* p : state) {
    copy(buffer.data() + at, p->value.raw(), p->value.nbytes(), CopyKind::DeviceToHost);
    at += p->value.nbytes();
  }
  comm.all_reduce_sum(buffer.data(), n, model.dtype());
  const double inv = 1.0 / comm.world_size();
  if (model.dtype() == DType::F32)
    for (int64_t i = 0; i < n; ++i) reinterpret_cast<float*>(buffer.data())[i] *= static_cast<float>(inv);
  else
    for (int64_t i = 0; i < n; ++i) reinterpret_cast<double*>(buffer.data())[i] *= inv;
  at = 0;
  for (Param* p : state) {
    copy(p->value.raw(), buffer.data() + at, p->value.nbytes(), CopyKind::HostToDevice);
    at += p->value.nbytes();
  }
}

uint32_t replica_checksum(MultiTaskModel& model) {
  const Tensor& values = model.params().values();
  const Tensor host = values.device() == Device::CPU ? values : values.to(Device::CPU);
  uint32_t crc = crc32c(host.raw(), host.nbytes());
  for (int t = 0; t < static_cast<int>(model.config().tasks.size()); ++t)
    for (int l = 0; l < model.num_masked_layers(); ++l) {
      const BitMask& m = model.mask(t, l);
      crc = crc32c(m.bits.data(), m.bits.size(), crc);
    }
  return crc;
}

void check_replicas_agree(MultiTaskModel& model, Communicator& comm, int64_t step) {
  if (comm.world_size() == 1) return;
  const double crc = replica_checksum(model);
  double range[2] = {crc, -crc};  // max and -min in one call
  comm.all_reduce_max(range, 2);
  NCSREC_CHECK(range[0] == -range[1], "the ranks' dense weights or masks differ after step "
                                          << step << " (checksums from " << -range[1] << " to " << range[0]
                                          << "): the replicas diverged");
}

}  // namespace ncsrec
