// What a job launcher (mpirun, srun, torchrun) tells a process about its place in the job,
// read from the environment; used before any communicator exists (error reporting in main,
// the choice of GPU). A variable that is not a non-negative integer is passed over.
#pragma once

#include <climits>
#include <cstdlib>
#include <initializer_list>

namespace ncsrec {

inline int first_rank_variable(std::initializer_list<const char*> names) {
  for (const char* var : names) {
    const char* v = std::getenv(var);
    if (v && *v) {
      char* end = nullptr;
      const long r = std::strtol(v, &end, 10);
      if (end && *end == '\0' && r >= 0 && r <= INT_MAX) return static_cast<int>(r);
    }
  }
  return 0;
}

// True when this process was started by a launcher that runs MPI jobs (mpirun, srun --mpi).
inline bool launched_under_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

// The rank in the whole job (OpenMPI, PMIx, PMI); 0 when not under a launcher.
inline int launcher_rank() { return first_rank_variable({"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}); }

// The rank within this node (OpenMPI, Slurm, MPICH/Intel MPI, torchrun); 0 when not given.
inline int launcher_local_rank() {
  return first_rank_variable({"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "LOCAL_RANK"});
}

}  // namespace ncsrec
