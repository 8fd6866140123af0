#include "core/layers/interaction.h"

#include "core/dispatch.h"
#include "core/error.h"

namespace ncsrec {

void pairwise_dot_forward(Tensor& out, int64_t out_col, const Tensor& x, int64_t emb_col, int64_t fields,
                          int64_t dim) {
  NCSREC_CHECK(out.device() == x.device(), "pairwise_dot_forward: out " << out.describe() << ", x " << x.describe());
  NCSREC_CHECK(out.dtype() == x.dtype() && out.ndim() == 2 && x.ndim() == 2 && out.dim(0) == x.dim(0) &&
                   emb_col + fields * dim <= x.dim(1) && out_col + fields * fields <= out.dim(1),
               "pairwise_dot_forward shapes: out " << out.describe() << ", x " << x.describe());
  ops_for(x.device()).pairwise_dot_forward(x.dtype(), out.raw(), out.dim(1), out_col, x.raw(), x.dim(1), emb_col,
                                           x.dim(0), fields, dim);
}

void pairwise_dot_backward(Tensor& dx, int64_t emb_col, const Tensor& dout, int64_t out_col, const Tensor& x,
                           int64_t fields, int64_t dim) {
  NCSREC_CHECK(dx.dtype() == x.dtype() && dout.dtype() == x.dtype() && dx.dim(0) == x.dim(0) &&
                   dout.dim(0) == x.dim(0) && emb_col + fields * dim <= dx.dim(1) &&
                   out_col + fields * fields <= dout.dim(1),
               "pairwise_dot_backward shapes: dx " << dx.describe() << ", dout " << dout.describe());
  NCSREC_CHECK(dx.device() == x.device() && dout.device() == x.device(),
               "pairwise_dot_backward: dx " << dx.describe() << ", dout " << dout.describe() << ", x " << x.describe());
  ops_for(x.device()).pairwise_dot_backward(x.dtype(), dx.raw(), dx.dim(1), emb_col, dout.raw(), dout.dim(1), out_col,
                                            x.raw(), x.dim(1), x.dim(0), fields, dim);
}

}  // namespace ncsrec
