#include "core/layers/interaction.h"

#include "core/error.h"

namespace ncsrec {
namespace {

template <class T>
void forward_t(T* out, int64_t out_stride, int64_t out_col, const T* x, int64_t x_stride, int64_t emb_col, int64_t B,
               int64_t F, int64_t d) {
#pragma omp parallel for schedule(static) if (B * F * F * d >= (1 << 16))
  for (int64_t b = 0; b < B; ++b) {
    const T* e = x + b * x_stride + emb_col;
    T* o = out + b * out_stride + out_col;
    for (int64_t i = 0; i < F; ++i)
      for (int64_t j = i; j < F; ++j) {
        T s = 0;
        for (int64_t k = 0; k < d; ++k) s += e[i * d + k] * e[j * d + k];
        o[i * F + j] = s;
        o[j * F + i] = s;
      }
  }
}

template <class T>
void backward_t(T* dx, int64_t dx_stride, int64_t emb_col, const T* dout, int64_t dout_stride, int64_t out_col,
                const T* x, int64_t x_stride, int64_t B, int64_t F, int64_t d) {
  // d(e_i·e_j)/de_i = e_j, and entry (i, j) and (j, i) both depend on e_i.
#pragma omp parallel for schedule(static) if (B * F * F * d >= (1 << 16))
  for (int64_t b = 0; b < B; ++b) {
    const T* e = x + b * x_stride + emb_col;
    const T* g = dout + b * dout_stride + out_col;
    T* de = dx + b * dx_stride + emb_col;
    for (int64_t i = 0; i < F; ++i)
      for (int64_t j = 0; j < F; ++j) {
        const T w = g[i * F + j] + g[j * F + i];
        for (int64_t k = 0; k < d; ++k) de[i * d + k] += w * e[j * d + k];
      }
  }
}

}  // namespace

void pairwise_dot_forward(Tensor& out, int64_t out_col, const Tensor& x, int64_t emb_col, int64_t fields,
                          int64_t dim) {
  NCSREC_CHECK(out.device() == Device::CPU && x.device() == Device::CPU, "pairwise_dot_forward runs on the CPU");
  NCSREC_CHECK(out.dtype() == x.dtype() && out.ndim() == 2 && x.ndim() == 2 && out.dim(0) == x.dim(0) &&
                   emb_col + fields * dim <= x.dim(1) && out_col + fields * fields <= out.dim(1),
               "pairwise_dot_forward shapes: out " << out.describe() << ", x " << x.describe());
  if (x.dtype() == DType::F32)
    forward_t(out.data<float>(), out.dim(1), out_col, x.data<float>(), x.dim(1), emb_col, x.dim(0), fields, dim);
  else
    forward_t(out.data<double>(), out.dim(1), out_col, x.data<double>(), x.dim(1), emb_col, x.dim(0), fields, dim);
}

void pairwise_dot_backward(Tensor& dx, int64_t emb_col, const Tensor& dout, int64_t out_col, const Tensor& x,
                           int64_t fields, int64_t dim) {
  NCSREC_CHECK(dx.dtype() == x.dtype() && dout.dtype() == x.dtype() && dx.dim(0) == x.dim(0) &&
                   dout.dim(0) == x.dim(0) && emb_col + fields * dim <= dx.dim(1) &&
                   out_col + fields * fields <= dout.dim(1),
               "pairwise_dot_backward shapes: dx " << dx.describe() << ", dout " << dout.describe());
  if (x.dtype() == DType::F32)
    backward_t(dx.data<float>(), dx.dim(1), emb_col, dout.data<float>(), dout.dim(1), out_col, x.data<float>(),
               x.dim(1), x.dim(0), fields, dim);
  else
    backward_t(dx.data<double>(), dx.dim(1), emb_col, dout.data<double>(), dout.dim(1), out_col, x.data<double>(),
               x.dim(1), x.dim(0), fields, dim);
}

}  // namespace ncsrec
