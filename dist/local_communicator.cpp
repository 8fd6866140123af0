#include "core/error.h"
#include "dist/communicator.h"

namespace ncsrec {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void all_reduce_sum(Tensor&) override {}
  void all_reduce_sum(double*, int64_t) override {}
  void broadcast(Tensor&, int root) override { NCSREC_CHECK(root == 0, "broadcast from rank " << root << " of 1"); }
  void barrier() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() { return std::make_unique<LocalCommunicator>(); }

}  // namespace ncsrec
