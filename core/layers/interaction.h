// DLRM-style pairwise interaction of field embeddings (the NCS4CVR/LT4REC base network):
// for every row, the full F×F matrix of dot products between its F field vectors (diagonal
// and both triangles included, as in the paper's code), flattened row-major.
//
// Shapes: emb is read from columns [emb_col, emb_col + F·d) of `x` [B, x_cols] (field f at
// emb_col + f·d); the F·F products are written to columns [out_col, out_col + F·F) of `out`.
// Gradient contract: the input gradient is ACCUMULATED (+=) into the embedding columns of
// `dx`, because those columns already hold the gradient that reaches the embeddings directly.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace ncsrec {

void pairwise_dot_forward(Tensor& out, int64_t out_col, const Tensor& x, int64_t emb_col, int64_t fields,
                          int64_t dim);

// dout: [B, *] holding dL/d(products) at columns [out_col, out_col + F·F).
void pairwise_dot_backward(Tensor& dx, int64_t emb_col, const Tensor& dout, int64_t out_col, const Tensor& x,
                           int64_t fields, int64_t dim);

}  // namespace ncsrec
