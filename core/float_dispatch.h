// NCSREC_FLOAT_DISPATCH(dtype, call_f32, call_f64): runs the call for the tensor element type of a
// table entry (core/dispatch.h), f32 or f64; anything else is an internal error. Shared by the
// CPU kernel files and cuda/.
#pragma once

#include "core/error.h"
#include "core/tensor.h"

#define NCSREC_FLOAT_DISPATCH(dtype, call_f32, call_f64)                          \
  do {                                                                            \
    if ((dtype) == ::ncsrec::DType::F32) { call_f32; }                            \
    else if ((dtype) == ::ncsrec::DType::F64) { call_f64; }                       \
    else NCSREC_CHECK(false, "floating-point op on " << ::ncsrec::dtype_name(dtype)); \
  } while (0)
