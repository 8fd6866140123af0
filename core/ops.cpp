#include "core/ops.h"

#include "core/error.h"

namespace ncsrec::ops {
namespace {

void same_place(const Tensor& a, const Tensor& b, const char* op) {
  NCSREC_CHECK(a.dtype() == b.dtype() && a.device() == b.device(),
               op << ": operands " << a.describe() << " and " << b.describe() << " differ in dtype or device");
}
void same_size(const Tensor& a, const Tensor& b, const char* op) {
  same_place(a, b, op);
  NCSREC_CHECK(a.numel() == b.numel(), op << ": sizes differ: " << a.describe() << " vs " << b.describe());
}

void same_shape(const Tensor& a, const Tensor& b, const char* op) {
  same_place(a, b, op);
  NCSREC_CHECK(a.shape() == b.shape(), op << ": shapes differ: " << a.describe() << " vs " << b.describe());
}

// A kernel from the device's table, or a clear error when that backend leaves it null.
template <class Kernel>
Kernel kernel_or_throw(Kernel kernel, const char* op, Device device) {
  if (!kernel)
    throw UserError(NCSREC_STR_(op << " is not implemented on the " << device_name(device)
                                   << " backend; use device: cpu for this model"));
  return kernel;
}

// Checks the [B, D] experts of a gate against probs [B, E]; returns D.
int64_t check_experts(const std::vector<const Tensor*>& experts, const Tensor& probs, const char* op) {
  NCSREC_CHECK(probs.ndim() == 2 && probs.dim(1) >= 1 &&
                   static_cast<int64_t>(experts.size()) == probs.dim(1),
               op << ": " << experts.size() << " experts for gate weights " << probs.describe());
  NCSREC_CHECK(experts[0] != nullptr && experts[0]->ndim() == 2, op << ": expert 0 must be a 2-D tensor");
  for (size_t e = 0; e < experts.size(); ++e) {
    NCSREC_CHECK(experts[e] != nullptr, op << ": expert " << e << " is null");
    same_shape(*experts[e], *experts[0], op);
    same_place(*experts[e], probs, op);
    NCSREC_CHECK(experts[e]->dim(0) == probs.dim(0),
                 op << ": expert " << e << " " << experts[e]->describe() << " vs gate weights " << probs.describe());
  }
  return experts[0]->dim(1);
}

}  // namespace

void gemm(Tensor& C, const Tensor& A, bool ta, const Tensor& B, bool tb, double alpha, double beta) {
  same_place(C, A, "gemm");
  same_place(C, B, "gemm");
  NCSREC_CHECK(A.ndim() == 2 && B.ndim() == 2 && C.ndim() == 2, "gemm needs 2-D operands");
  const int64_t M = ta ? A.dim(1) : A.dim(0), K = ta ? A.dim(0) : A.dim(1);
  const int64_t Kb = tb ? B.dim(1) : B.dim(0), N = tb ? B.dim(0) : B.dim(1);
  NCSREC_CHECK(K == Kb && C.dim(0) == M && C.dim(1) == N,
               "gemm shapes: A " << A.describe() << (ta ? "ᵀ" : "") << ", B " << B.describe() << (tb ? "ᵀ" : "")
                                 << ", C " << C.describe());
  ops_for(C.device()).gemm(C.dtype(), ta, tb, M, N, K, alpha, A.raw(), B.raw(), beta, C.raw());
}

void linear_forward(Tensor& y, const Tensor& x, const Tensor& W, const Tensor* b, bool relu) {
  same_place(y, x, "linear_forward");
  same_place(y, W, "linear_forward");
  if (b) same_place(y, *b, "linear_forward");
  NCSREC_CHECK(x.ndim() == 2 && W.ndim() == 2 && y.ndim() == 2 && x.dim(1) == W.dim(0) && y.dim(0) == x.dim(0) &&
                   y.dim(1) == W.dim(1) && (!b || b->numel() == W.dim(1)),
               "linear_forward: x " << x.describe() << ", W " << W.describe() << ", y " << y.describe());
  ops_for(y.device()).gemm_bias_act(y.dtype(), false, false, x.dim(0), W.dim(1), x.dim(1), x.raw(), W.raw(),
                                    b ? b->raw() : nullptr, relu, matmul_precision(), y.raw());
}

void bias_add(Tensor& y, const Tensor& b) {
  same_place(y, b, "bias_add");
  NCSREC_CHECK(y.ndim() == 2 && b.numel() == y.dim(1), "bias_add: " << y.describe() << " + " << b.describe());
  ops_for(y.device()).bias_add(y.dtype(), y.raw(), b.raw(), y.dim(0), y.dim(1));
}

void bias_grad(Tensor& db, const Tensor& dy) {
  same_place(db, dy, "bias_grad");
  NCSREC_CHECK(dy.ndim() == 2 && db.numel() == dy.dim(1), "bias_grad: " << db.describe() << " from " << dy.describe());
  ops_for(db.device()).bias_grad(db.dtype(), db.raw(), dy.raw(), dy.dim(0), dy.dim(1));
}

void relu_forward(Tensor& y, const Tensor& x) {
  same_size(y, x, "relu_forward");
  ops_for(y.device()).relu_forward(y.dtype(), y.raw(), x.raw(), y.numel());
}

void relu_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
  same_size(dx, dy, "relu_backward");
  same_size(dx, y, "relu_backward");
  ops_for(dx.device()).relu_backward(dx.dtype(), dx.raw(), dy.raw(), y.raw(), dx.numel());
}

void sigmoid(Tensor& y, const Tensor& x) {
  same_size(y, x, "sigmoid");
  ops_for(y.device()).sigmoid(y.dtype(), y.raw(), x.raw(), y.numel());
}

void softmax_rows(Tensor& y, const Tensor& x) {
  same_size(y, x, "softmax_rows");
  NCSREC_CHECK(x.ndim() == 2, "softmax_rows needs a 2-D tensor, got " << x.describe());
  ops_for(y.device()).softmax_rows(y.dtype(), y.raw(), x.raw(), x.dim(0), x.dim(1));
}

void axpy(Tensor& y, double a, const Tensor& x) {
  same_size(y, x, "axpy");
  ops_for(y.device()).axpy(y.dtype(), y.numel(), a, x.raw(), y.raw());
}

void scale(Tensor& x, double a) { ops_for(x.device()).scale(x.dtype(), x.numel(), a, x.raw()); }

double sum(const Tensor& x) { return ops_for(x.device()).sum(x.dtype(), x.raw(), x.numel()); }

double sum_squares(const Tensor& x) { return ops_for(x.device()).sum_squares(x.dtype(), x.raw(), x.numel()); }

namespace {

// The f32 labels or weights of a loss head: n elements on the logits' device.
void check_loss_column(const Tensor& column, const Tensor& logits, const char* what, const char* op) {
  NCSREC_CHECK(column.dtype() == DType::F32 && column.device() == logits.device() && column.numel() == logits.numel(),
               op << ": " << what << " " << column.describe() << " for logits " << logits.describe()
                  << " (f32, as many, on the same device)");
}

void check_loss(const Tensor& logits, const Tensor& labels, const Tensor* weights, const Tensor& prob,
                const Tensor& grad, const char* op) {
  same_size(prob, logits, op);
  same_size(grad, logits, op);
  check_loss_column(labels, logits, "labels", op);
  if (weights) check_loss_column(*weights, logits, "weights", op);
}

const float* f32_or_null(const Tensor* t) { return t ? static_cast<const float*>(t->raw()) : nullptr; }

}  // namespace

namespace {

// x [B, C]; the [C] parameters of x's dtype and the f64 statistics, all where x is.
void check_norm(const char* op, const Tensor& x, const std::vector<const Tensor*>& per_column,
                const std::vector<std::pair<const Tensor*, int64_t>>& stats) {
  NCSREC_CHECK(x.ndim() == 2, op << ": x " << x.describe() << " is not 2-D");
  for (const Tensor* t : per_column) {
    same_place(*t, x, op);
    NCSREC_CHECK(t->numel() == x.dim(1), op << ": " << t->describe() << " for " << x.dim(1) << " columns");
  }
  for (const auto& [t, n] : stats)
    NCSREC_CHECK(t->dtype() == DType::F64 && t->device() == x.device() && t->numel() >= n,
                 op << ": statistics " << t->describe() << " for " << n << " f64 values on " << device_name(x.device()));
}

const double* f64(const Tensor& t) { return static_cast<const double*>(t.raw()); }
double* f64(Tensor& t) { return static_cast<double*>(t.raw()); }

}  // namespace

void batch_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& running_mean,
                        Tensor& running_var, double momentum, double eps, bool training, Tensor& mean, Tensor& inv_std,
                        Tensor* xhat, Tensor& y) {
  const char* op = "batch_norm_forward";
  check_norm(op, x, {&gamma, &beta, &running_mean, &running_var}, {{&mean, x.dim(1)}, {&inv_std, x.dim(1)}});
  same_shape(y, x, op);
  if (xhat) same_shape(*xhat, x, op);
  NCSREC_CHECK(!training || x.dim(0) >= 2, op << ": training on " << x.dim(0) << " rows");
  auto k = kernel_or_throw(ops_for(x.device()).batch_norm_forward, op, x.device());
  k(x.dtype(), x.raw(), x.dim(0), x.dim(1), gamma.raw(), beta.raw(), running_mean.raw(), running_var.raw(), momentum,
    eps, training, f64(mean), f64(inv_std), xhat ? xhat->raw() : nullptr, y.raw());
}

void batch_norm_backward(const Tensor& dy, const Tensor& xhat, const Tensor& gamma, const Tensor& inv_std, Tensor& sums,
                         Tensor& dgamma, Tensor& dbeta, Tensor& dx) {
  const char* op = "batch_norm_backward";
  check_norm(op, dy, {&gamma, &dgamma, &dbeta}, {{&inv_std, dy.dim(1)}, {&sums, 2 * dy.dim(1)}});
  same_shape(xhat, dy, op);
  same_shape(dx, dy, op);
  auto k = kernel_or_throw(ops_for(dy.device()).batch_norm_backward, op, dy.device());
  k(dy.dtype(), dy.raw(), xhat.raw(), dy.dim(0), dy.dim(1), gamma.raw(), f64(inv_std), f64(sums), dgamma.raw(),
    dbeta.raw(), dx.raw());
}

void layer_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor& inv_std,
                        Tensor& xhat, Tensor& y) {
  const char* op = "layer_norm_forward";
  check_norm(op, x, {&gamma, &beta}, {{&inv_std, x.dim(0)}});
  same_shape(y, x, op);
  same_shape(xhat, x, op);
  auto k = kernel_or_throw(ops_for(x.device()).layer_norm_forward, op, x.device());
  k(x.dtype(), x.raw(), x.dim(0), x.dim(1), gamma.raw(), beta.raw(), eps, f64(inv_std), xhat.raw(), y.raw());
}

void layer_norm_backward(const Tensor& dy, const Tensor& xhat, const Tensor& gamma, const Tensor& inv_std, Tensor& sums,
                         Tensor& dgamma, Tensor& dbeta, Tensor& dx) {
  const char* op = "layer_norm_backward";
  check_norm(op, dy, {&gamma, &dgamma, &dbeta}, {{&inv_std, dy.dim(0)}, {&sums, 2 * dy.dim(1)}});
  same_shape(xhat, dy, op);
  same_shape(dx, dy, op);
  auto k = kernel_or_throw(ops_for(dy.device()).layer_norm_backward, op, dy.device());
  k(dy.dtype(), dy.raw(), xhat.raw(), dy.dim(0), dy.dim(1), gamma.raw(), f64(inv_std), f64(sums), dgamma.raw(),
    dbeta.raw(), dx.raw());
}

void apg_rows_forward(Tensor& g, const Tensor& h, const Tensor& s) {
  const char* op = "apg_rows_forward";
  same_shape(g, h, op);
  same_place(s, h, op);
  const int64_t B = h.dim(0), K = h.dim(1);
  NCSREC_CHECK(h.ndim() == 2 && s.ndim() == 2 && s.dim(0) == B && s.dim(1) >= K * K,
               op << ": h " << h.describe() << ", s " << s.describe());
  auto k = kernel_or_throw(ops_for(h.device()).apg_rows_forward, op, h.device());
  k(h.dtype(), g.raw(), h.raw(), s.raw(), B, K, s.dim(1));
}

void apg_rows_backward(Tensor& ds, Tensor& dh, const Tensor& h, const Tensor& s, const Tensor& dg) {
  const char* op = "apg_rows_backward";
  same_shape(dh, h, op);
  same_shape(dg, h, op);
  same_shape(ds, s, op);
  const int64_t B = h.dim(0), K = h.dim(1);
  NCSREC_CHECK(h.ndim() == 2 && s.ndim() == 2 && s.dim(0) == B && s.dim(1) >= K * K,
               op << ": h " << h.describe() << ", s " << s.describe());
  auto k = kernel_or_throw(ops_for(h.device()).apg_rows_backward, op, h.device());
  k(h.dtype(), ds.raw(), dh.raw(), h.raw(), s.raw(), dg.raw(), B, K, s.dim(1));
}

namespace {

// The three-tower head's operands: u [B, d], T of everything per task, w [B, T].
void check_three_tower(const char* op, const Tensor& u, const std::vector<const Tensor*>& v, const Tensor& w,
                       const std::vector<const Tensor*>& per_row, const std::vector<const Tensor*>& per_vector) {
  const auto T = static_cast<int64_t>(v.size());
  NCSREC_CHECK(u.ndim() == 2 && T >= 1 && w.ndim() == 2 && w.dim(0) == u.dim(0) && w.dim(1) == T,
               op << ": u " << u.describe() << ", " << T << " item vectors, weights " << w.describe());
  same_place(w, u, op);
  for (const Tensor* t : v) same_shape(*t, u, op);
  for (const Tensor* t : per_vector) same_shape(*t, u, op);
  for (const Tensor* t : per_row)
    if (t) {
      same_place(*t, u, op);
      NCSREC_CHECK(t->numel() == u.dim(0), op << ": " << t->describe() << " for " << u.dim(0) << " rows");
    }
}

template <class P>
std::vector<P> raws(const std::vector<const Tensor*>& ts) {
  std::vector<P> out;
  for (const Tensor* t : ts) out.push_back(t ? t->raw() : nullptr);
  return out;
}
std::vector<void*> raws(const std::vector<Tensor*>& ts) {
  std::vector<void*> out;
  for (Tensor* t : ts) out.push_back(t->raw());
  return out;
}

}  // namespace

void three_tower_forward(const Tensor& u, const std::vector<const Tensor*>& v, const std::vector<const Tensor*>& bias,
                         const Tensor& w, const std::vector<Tensor*>& logits, Tensor& mixed) {
  const char* op = "three_tower_forward";
  std::vector<const Tensor*> rows(logits.begin(), logits.end());
  rows.push_back(&mixed);
  check_three_tower(op, u, v, w, rows, {});
  NCSREC_CHECK(bias.size() == v.size() && logits.size() == v.size(), op << ": one bias and one logit per task");
  for (const Tensor* b : bias) {
    same_place(*b, u, op);
    NCSREC_CHECK(b->numel() == 1, op << ": bias " << b->describe());
  }
  auto k = kernel_or_throw(ops_for(u.device()).three_tower_forward, op, u.device());
  const auto vp = raws<const void*>(v), bp = raws<const void*>(bias);
  const auto lp = raws(logits);
  k(u.dtype(), u.raw(), vp.data(), bp.data(), w.raw(), u.dim(0), static_cast<int>(v.size()), u.dim(1), lp.data(),
    mixed.raw());
}

void three_tower_backward(const std::vector<const Tensor*>& dlogit, const Tensor* dmixed, const Tensor& u,
                          const std::vector<const Tensor*>& v, const std::vector<const Tensor*>& logits, const Tensor& w,
                          const std::vector<Tensor*>& dl, Tensor& dg, Tensor& du, const std::vector<Tensor*>& dv) {
  const char* op = "three_tower_backward";
  NCSREC_CHECK(dlogit.size() == v.size() && logits.size() == v.size() && dl.size() == v.size() && dv.size() == v.size(),
               op << ": one of each per task");
  std::vector<const Tensor*> rows(dlogit.begin(), dlogit.end());
  rows.insert(rows.end(), logits.begin(), logits.end());
  rows.insert(rows.end(), dl.begin(), dl.end());
  rows.push_back(dmixed);
  std::vector<const Tensor*> vectors(dv.begin(), dv.end());
  vectors.push_back(&du);
  check_three_tower(op, u, v, w, rows, vectors);
  same_shape(dg, w, op);
  auto k = kernel_or_throw(ops_for(u.device()).three_tower_backward, op, u.device());
  const auto gp = raws<const void*>(dlogit), vp = raws<const void*>(v), lp = raws<const void*>(logits);
  const auto dlp = raws(dl), dvp = raws(dv);
  k(u.dtype(), gp.data(), dmixed ? dmixed->raw() : nullptr, u.raw(), vp.data(), lp.data(), w.raw(), u.dim(0),
    static_cast<int>(v.size()), u.dim(1), dlp.data(), dg.raw(), du.raw(), dvp.data());
}

namespace {
void check_columns(const Tensor& y, int64_t y_col, const Tensor& x, int64_t x_col, int64_t cols, const char* op) {
  same_place(y, x, op);
  NCSREC_CHECK(y.ndim() == 2 && x.ndim() == 2 && y.dim(0) == x.dim(0) && cols >= 0 && y_col >= 0 && x_col >= 0 &&
                   y_col + cols <= y.dim(1) && x_col + cols <= x.dim(1),
               op << ": columns [" << x_col << ", " << x_col + cols << ") of " << x.describe() << " to [" << y_col
                  << ", " << y_col + cols << ") of " << y.describe());
}
}  // namespace

void add_columns(Tensor& y, int64_t y_col, const Tensor& x, int64_t x_col, int64_t cols) {
  check_columns(y, y_col, x, x_col, cols, "add_columns");
  auto k = kernel_or_throw(ops_for(y.device()).add_columns, "add_columns", y.device());
  k(y.dtype(), y.raw(), y.dim(1), y_col, x.raw(), x.dim(1), x_col, y.dim(0), cols);
}

void multiply_accumulate(Tensor& y, const Tensor& a, const Tensor& b) {
  same_size(y, a, "multiply_accumulate");
  same_size(y, b, "multiply_accumulate");
  auto k = kernel_or_throw(ops_for(y.device()).multiply_accumulate, "multiply_accumulate", y.device());
  k(y.dtype(), y.raw(), a.raw(), b.raw(), y.numel());
}

void add_scalar(Tensor& x, double s) {
  auto k = kernel_or_throw(ops_for(x.device()).add_scalar, "add_scalar", x.device());
  k(x.dtype(), x.raw(), x.numel(), s);
}

void dropout(Tensor& out, const Tensor& in, double rate, uint64_t key) {
  same_size(out, in, "dropout");
  NCSREC_CHECK(rate >= 0 && rate < 1, "dropout: rate " << rate);
  auto k = kernel_or_throw(ops_for(in.device()).dropout, "dropout", in.device());
  k(in.dtype(), out.raw(), in.raw(), in.numel(), rate, key);
}

double sigmoid_bce(const Tensor& logits, const Tensor& labels, const Tensor* weights, double normalizer, Tensor& prob,
                   Tensor& grad) {
  check_loss(logits, labels, weights, prob, grad, "sigmoid_bce");
  auto k = kernel_or_throw(ops_for(logits.device()).sigmoid_bce, "sigmoid_bce", logits.device());
  return k(logits.dtype(), logits.raw(), static_cast<const float*>(labels.raw()), f32_or_null(weights), logits.numel(),
           normalizer, prob.raw(), grad.raw());
}

double focal_loss(const Tensor& logits, const Tensor& labels, const Tensor* weights, double alpha, double gamma,
                  double normalizer, Tensor& prob, Tensor& grad) {
  check_loss(logits, labels, weights, prob, grad, "focal_loss");
  auto k = kernel_or_throw(ops_for(logits.device()).focal_loss, "focal_loss", logits.device());
  return k(logits.dtype(), logits.raw(), static_cast<const float*>(labels.raw()), f32_or_null(weights), logits.numel(),
           alpha, gamma, normalizer, prob.raw(), grad.raw());
}

double sigmoid_mse(const Tensor& logits, const Tensor& labels, const Tensor* weights, double normalizer, Tensor& prob,
                   Tensor& grad) {
  check_loss(logits, labels, weights, prob, grad, "sigmoid_mse");
  auto k = kernel_or_throw(ops_for(logits.device()).sigmoid_mse, "sigmoid_mse", logits.device());
  return k(logits.dtype(), logits.raw(), static_cast<const float*>(labels.raw()), f32_or_null(weights), logits.numel(),
           normalizer, prob.raw(), grad.raw());
}

EsmmLosses esmm_loss(const Tensor& logit_ctr, const Tensor& logit_cvr, const Tensor& click, const Tensor& ctcvr,
                     const Tensor* weights, double normalizer, double ctcvr_weight, Tensor& p_ctr, Tensor& p_cvr,
                     Tensor& p_ctcvr, Tensor& grad_ctr, Tensor& grad_cvr) {
  const char* op = "esmm_loss";
  check_loss(logit_ctr, click, weights, p_ctr, grad_ctr, op);
  check_loss(logit_cvr, ctcvr, weights, p_cvr, grad_cvr, op);
  same_size(logit_cvr, logit_ctr, op);
  same_size(p_ctcvr, logit_ctr, op);
  auto k = kernel_or_throw(ops_for(logit_ctr.device()).esmm_loss, op, logit_ctr.device());
  double losses[2] = {0, 0};
  k(logit_ctr.dtype(), logit_ctr.raw(), logit_cvr.raw(), static_cast<const float*>(click.raw()),
    static_cast<const float*>(ctcvr.raw()), f32_or_null(weights), logit_ctr.numel(), normalizer, ctcvr_weight,
    p_ctr.raw(), p_cvr.raw(), p_ctcvr.raw(), grad_ctr.raw(), grad_cvr.raw(), losses);
  return {losses[0], losses[1]};
}

void gate_mixture_forward(Tensor& out, Tensor& probs, const Tensor& logits,
                          const std::vector<const Tensor*>& experts) {
  same_shape(probs, logits, "gate_mixture_forward");
  const int64_t D = check_experts(experts, probs, "gate_mixture_forward");
  const int64_t B = logits.dim(0), E = logits.dim(1);
  same_place(out, logits, "gate_mixture_forward");
  NCSREC_CHECK(out.ndim() == 2 && out.dim(0) == B && out.dim(1) == D,
               "gate_mixture_forward: out " << out.describe() << " for " << B << " rows of width " << D);
  std::vector<const void*> ptrs(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) ptrs[static_cast<size_t>(e)] = experts[static_cast<size_t>(e)]->raw();
  const OpTable& t = ops_for(out.device());
  kernel_or_throw(t.gate_mixture_forward, "gate_mixture_forward", out.device())(
      out.dtype(), out.raw(), probs.raw(), logits.raw(), ptrs.data(), B, E, D);
}

void gate_mixture_backward(Tensor& dlogits, const std::vector<Tensor*>& dexperts, const Tensor& dout,
                           const Tensor& probs, const std::vector<const Tensor*>& experts) {
  same_shape(dlogits, probs, "gate_mixture_backward");
  const int64_t D = check_experts(experts, probs, "gate_mixture_backward");
  const int64_t B = probs.dim(0), E = probs.dim(1);
  same_shape(dout, *experts[0], "gate_mixture_backward");
  NCSREC_CHECK(static_cast<int64_t>(dexperts.size()) == E,
               "gate_mixture_backward: " << dexperts.size() << " expert gradients for " << E << " experts");
  std::vector<const void*> in(static_cast<size_t>(E));
  std::vector<void*> grads(static_cast<size_t>(E), nullptr);
  for (size_t e = 0; e < static_cast<size_t>(E); ++e) {
    in[e] = experts[e]->raw();
    if (dexperts[e]) {
      same_shape(*dexperts[e], *experts[e], "gate_mixture_backward");
      grads[e] = dexperts[e]->raw();
    }
  }
  const OpTable& t = ops_for(dlogits.device());
  kernel_or_throw(t.gate_mixture_backward, "gate_mixture_backward", dlogits.device())(
      dlogits.dtype(), dlogits.raw(), grads.data(), dout.raw(), probs.raw(), in.data(), B, E, D);
}

// ---- the masked multi-task linear layer's fused route ----------------------------------------

namespace {

// Checks one list of per-task [rows, width] operands against W's dtype and device; returns rows.
template <class TensorPtr>
int64_t check_task_operands(const std::vector<TensorPtr>& list, size_t tasks, int64_t width, const Tensor& W,
                            const char* op, const char* name) {
  NCSREC_CHECK(list.size() == tasks, op << ": " << list.size() << " " << name << " for " << tasks << " tasks");
  for (size_t t = 0; t < tasks; ++t) NCSREC_CHECK(list[t] != nullptr, op << ": " << name << "[" << t << "] is null");
  const int64_t rows = list.front()->ndim() == 2 ? list.front()->dim(0) : -1;
  for (size_t t = 0; t < tasks; ++t) {
    same_place(*list[t], W, op);
    NCSREC_CHECK(list[t]->ndim() == 2 && list[t]->dim(0) == rows && list[t]->dim(1) == width,
                 op << ": " << name << "[" << t << "] " << list[t]->describe() << ", expected [" << rows << ", "
                    << width << "] for a weight " << W.describe());
  }
  return rows;
}

// Checks the weight W [in, out], one mask per task, and the two per-task operand lists of an
// entry (`a` of width a_width, `b` of width b_width, the same rows); returns the rows.
template <class A, class B>
int64_t check_masked_operands(const Tensor& W, const std::vector<const uint8_t*>& bits, const std::vector<A>& a,
                              int64_t a_width, const char* a_name, const std::vector<B>& b, int64_t b_width,
                              const char* b_name, const char* op) {
  NCSREC_CHECK(W.ndim() == 2, op << ": weight " << W.describe() << " must be 2-D");
  const size_t tasks = a.size();
  NCSREC_CHECK(tasks >= 1 && bits.size() == tasks, op << ": " << bits.size() << " masks for " << tasks << " tasks");
  for (size_t t = 0; t < tasks; ++t) NCSREC_CHECK(bits[t] != nullptr, op << ": task " << t << "'s mask bits are null");
  const int64_t rows = check_task_operands(a, tasks, a_width, W, op, a_name);
  NCSREC_CHECK(check_task_operands(b, tasks, b_width, W, op, b_name) == rows,
               op << ": " << b_name << " and " << a_name << " differ in rows");
  return rows;
}

template <class TensorPtr>
std::vector<void*> raw_pointers(const std::vector<TensorPtr>& list) {
  std::vector<void*> p;
  for (const auto* t : list) p.push_back(const_cast<void*>(static_cast<const void*>(t->raw())));
  return p;
}

}  // namespace

bool fused_masked_linear_available(Device device) {
  if (!device_available(device)) return false;
  const OpTable& t = ops_for(device);
  return t.masked_linear_forward && t.masked_linear_input_grad && t.masked_linear_weight_grad;
}

void masked_linear_forward(const std::vector<Tensor*>& y, const std::vector<const Tensor*>& x, const Tensor& W,
                           const std::vector<const uint8_t*>& bits, const Tensor* b, bool relu) {
  const char* op = "masked_linear_forward";
  const int64_t rows = check_masked_operands(W, bits, x, W.dim(0), "x", y, W.dim(1), "y", op);
  if (b) {
    same_place(*b, W, op);
    NCSREC_CHECK(b->numel() == W.dim(1), op << ": bias " << b->describe() << " for a weight " << W.describe());
  }
  const auto xs = raw_pointers(x), ys = raw_pointers(y);
  kernel_or_throw(ops_for(W.device()).masked_linear_forward, op, W.device())(
      W.dtype(), static_cast<int>(bits.size()), rows, W.dim(0), W.dim(1), xs.data(), W.raw(), bits.data(),
      b ? b->raw() : nullptr, relu, ys.data());
}

void masked_linear_input_grad(const std::vector<Tensor*>& dx, const std::vector<const Tensor*>& dy, const Tensor& W,
                              const std::vector<const uint8_t*>& bits) {
  const char* op = "masked_linear_input_grad";
  const int64_t rows = check_masked_operands(W, bits, dy, W.dim(1), "dy", dx, W.dim(0), "dx", op);
  const auto dys = raw_pointers(dy), dxs = raw_pointers(dx);
  kernel_or_throw(ops_for(W.device()).masked_linear_input_grad, op, W.device())(
      W.dtype(), static_cast<int>(bits.size()), rows, W.dim(0), W.dim(1), dys.data(), W.raw(), bits.data(),
      dxs.data());
}

void masked_linear_weight_grad(Tensor& dW, const std::vector<const Tensor*>& x, const std::vector<const Tensor*>& dy,
                               const std::vector<const uint8_t*>& bits) {
  const char* op = "masked_linear_weight_grad";
  const int64_t rows = check_masked_operands(dW, bits, x, dW.dim(0), "x", dy, dW.dim(1), "dy", op);
  const auto xs = raw_pointers(x), dys = raw_pointers(dy);
  kernel_or_throw(ops_for(dW.device()).masked_linear_weight_grad, op, dW.device())(
      dW.dtype(), static_cast<int>(bits.size()), rows, dW.dim(0), dW.dim(1), xs.data(), dys.data(), bits.data(),
      dW.raw());
}

}  // namespace ncsrec::ops
