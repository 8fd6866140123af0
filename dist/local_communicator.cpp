#include <cstring>

#include "core/error.h"
#include "dist/communicator.h"

namespace ncsrec {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  const char* kind() const override { return "local"; }

 protected:
  void do_all_reduce(void*, int64_t, DType, bool) override {}
  void do_all_to_all_v(const void* send, const int64_t* send_counts, void* recv, const int64_t* recv_counts,
                       DType dtype) override {
    NCSREC_CHECK(send_counts[0] == recv_counts[0],
                 "all-to-all on one rank sends " << send_counts[0] << " elements and receives " << recv_counts[0]);
    if (send_counts[0] > 0 && send != recv) std::memmove(recv, send, static_cast<size_t>(send_counts[0]) * dtype_size(dtype));
  }
  void do_all_gather(const void* send, int64_t count, void* recv, DType dtype) override {
    if (count > 0 && send != recv) std::memmove(recv, send, static_cast<size_t>(count) * dtype_size(dtype));
  }
  void do_broadcast(void*, int64_t, DType, int) override {}
  void do_barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() { return std::make_unique<LocalCommunicator>(); }

}  // namespace ncsrec
