// A small MPI program for the communicator's failure tests (comm_failure.sh): every rank meets
// two collectives, then rank 1 stops itself (`stop`: SIGSTOP) or dies (`kill`: SIGKILL) while
// the others enter an all-reduce. `ok` runs the same steps with no failure and exits 0.
// Each rank writes its process id to $NCSREC_PROBE_PID_DIR/rank<r>.pid (when set) so the
// driver can check that no process is left behind, and rank 1 writes the wall-clock time
// (milliseconds since the epoch) at which it stops or dies to $NCSREC_PROBE_PID_DIR/failed_at_ms,
// from which the driver times the others' exit.
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>
#include <vector>

#include "dist/communicator.h"

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "stop" && mode != "kill" && mode != "ok") {
    std::fprintf(stderr, "usage: %s stop|kill|ok\n", argv[0]);
    return 2;
  }
  try {
    auto comm = ncsrec::make_mpi_communicator();
    if (const char* dir = std::getenv("NCSREC_PROBE_PID_DIR")) {
      const std::string path = std::string(dir) + "/rank" + std::to_string(comm->rank()) + ".pid";
      if (FILE* f = std::fopen(path.c_str(), "w")) {
        std::fprintf(f, "%d\n", static_cast<int>(getpid()));
        std::fclose(f);
      }
    }
    std::vector<float> values(1024, 1.0f);
    comm->barrier();
    comm->all_reduce_sum(values.data(), static_cast<int64_t>(values.size()), ncsrec::DType::F32);
    if (comm->rank() == 1 && mode != "ok") {
      if (const char* dir = std::getenv("NCSREC_PROBE_PID_DIR")) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count();
        if (FILE* f = std::fopen((std::string(dir) + "/failed_at_ms").c_str(), "w")) {
          std::fprintf(f, "%lld\n", static_cast<long long>(ms));
          std::fclose(f);
        }
      }
      std::raise(mode == "stop" ? SIGSTOP : SIGKILL);
    }
    comm->all_reduce_sum(values.data(), static_cast<int64_t>(values.size()), ncsrec::DType::F32);
    if (values[0] != static_cast<float>(comm->world_size() * comm->world_size())) {
      std::fprintf(stderr, "rank %d: wrong sum %g\n", comm->rank(), values[0]);
      ncsrec::end_job_after_error(1);
      return 1;
    }
    return 0;
  } catch (const ncsrec::CommTimeout&) {  // the communicator already printed what happened
    ncsrec::end_job_after_error(1);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    ncsrec::end_job_after_error(1);
    return 1;
  }
}
