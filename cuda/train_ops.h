// The CUDA entries of the dispatch table for training (cuda/train_ops.cu): the MMoE/PLE gate,
// the fused loss heads, the mask kernels and the dense optimizer steps, each the twin of its
// CPU entry (core/cpu_kernels.cpp, core/cpu_training_ops.cpp) and checked against it by
// tests/gpu/test_cuda_train_ops.cpp.
#pragma once

#include "core/dispatch.h"

namespace ncsrec {

void add_cuda_training_ops(OpTable& t);
// The fused linear forward through cuBLASLt (cuda/gemm_lt.cu).
void add_cuda_gemm_ops(OpTable& t);
// The masked multi-task linear layer's fused route (cuda/masked_linear.cu).
void add_cuda_masked_linear_ops(OpTable& t);
// The metrics (cuda/metrics.cu): AUC on the device.
void add_cuda_metric_ops(OpTable& t);

}  // namespace ncsrec
