// The CUDA backend's entry points: GPU discovery and registration of the CUDA op table.
//
// Nothing here requires a GPU or a driver: without one, cuda_device_count() returns 0 and
// cuda_register_if_available() returns false with the reason, registering nothing, so one
// CUDA-enabled binary still runs everything on the CPU.
#pragma once

#include <string>

namespace ncsrec {

// Number of usable CUDA devices; 0 when there is no GPU, no driver, or any error (never throws).
int cuda_device_count();

// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" for logs; "cuda device N (unavailable: ...)"
// if the properties cannot be read.
std::string cuda_device_description(int device);

// The device this process uses: the node-local rank (OMPI_COMM_WORLD_LOCAL_RANK, else
// SLURM_LOCALID, else 0) modulo `count`.
int cuda_select_device_index(int count);

// When a GPU exists: selects the device, creates the cuBLAS handle and registers the CUDA
// OpTable for Device::CUDA, returning true (idempotent: later calls return true at once).
// When none: returns false, writes the reason to *why_not (if given) and registers nothing.
// Errors while setting up an existing GPU throw InternalError.
bool cuda_register_if_available(std::string* why_not = nullptr);

}  // namespace ncsrec
