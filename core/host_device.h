// NCSREC_HOST_DEVICE marks small inline functions that cuda/ compiles for the device too, so that
// the CPU reference and the CUDA kernels run the same arithmetic (core/random.h, the loss math).
// Such functions call only what both sides have: std:: math functions, no std::max/min (not
// usable in device code without relaxed constexpr).
#pragma once

#ifdef __CUDACC__
#define NCSREC_HOST_DEVICE __host__ __device__
#else
#define NCSREC_HOST_DEVICE
#endif
