// make_mpi_communicator in a build without MPI (NCSREC_MPI=OFF).
#include "core/error.h"
#include "dist/communicator.h"

namespace ncsrec {

std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions&) {
  throw UserError("this ncsrec was built without MPI (NCSREC_MPI=OFF): rebuild with -DNCSREC_MPI=ON to run under mpirun");
}

void end_job_after_error(int) {}  // no MPI job to end

}  // namespace ncsrec
