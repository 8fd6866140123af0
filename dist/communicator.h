// Communicators: the collectives the trainer needs, behind one interface. This issue ships the
// local (one process) implementation; MPI and NCCL implementations come with distributed
// training. Buffers live on the communicator's device.
#pragma once

#include <cstdint>
#include <memory>

#include "core/tensor.h"

namespace ncsrec {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // In-place sum across ranks.
  virtual void all_reduce_sum(Tensor& buffer) = 0;
  virtual void all_reduce_sum(double* values, int64_t n) = 0;
  virtual void broadcast(Tensor& buffer, int root) = 0;
  virtual void barrier() = 0;
};

// The communicator of a single process (world size 1): every collective is the identity.
std::unique_ptr<Communicator> make_local_communicator();

}  // namespace ncsrec
