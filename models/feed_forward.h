// FeedForward: the MLP every tower, bottom and expert is built from, with the options a real
// ranking model needs on its hidden layers: normalisation (BatchNorm or LayerNorm), dropout,
// and APG (PAPERS.md §4) in place of the plain Linear.
//
// A hidden layer is   (Linear | ApgLinear) → norm → ReLU → dropout,
// the output layer (the last, unless `final_activation`) is a plain Linear. Without norm,
// dropout and APG this is exactly MLP (core/layers/linear.h), parameter names included:
// `<prefix>.<i>.weight` / `.bias`. Norms add `<prefix>.<i>.bn.*` / `.ln.*`; an APG layer is named
// `<prefix>.<i>` (`<prefix>.<i>.U`, `<prefix>.<i>.hyper.*`, ...).
//
// APG's condition is self-wise (each layer's own input) or group-wise: a tensor the caller
// passes in `Pass::condition` (the chosen features' embeddings); its gradient, summed over the
// stack's APG layers, is left in dcondition() for the caller to route back.
//
// Gradient contract as Linear: parameter gradients accumulate, dx is written.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/layers/apg.h"
#include "core/layers/dropout.h"
#include "core/layers/linear.h"
#include "core/layers/norm.h"
#include "core/params.h"

namespace ncsrec {

struct LayerOptions {
  Norm norm = Norm::None;
  double norm_momentum = 0.99;  // BatchNorm running statistics
  double dropout = 0.0;
  bool apg = false;             // hidden layers are ApgLinear
  ApgOptions apg_options;
  int64_t condition_dim = 0;    // apg: width of the group-wise condition; 0 = self-wise
};

// What one forward pass needs beyond its input.
struct Pass {
  bool training = false;           // BatchNorm: batch statistics; dropout: on
  uint64_t dropout_key = 0;        // differs per step: the dropout masks' counter
  const Tensor* condition = nullptr;  // apg group-wise condition [B, condition_dim]
};

class FeedForward {
 public:
  FeedForward(ParamStore& store, const std::string& prefix, int64_t in, const std::vector<int64_t>& sizes,
              bool final_activation, const LayerOptions& options = {});
  ~FeedForward();
  FeedForward(const FeedForward&) = delete;
  FeedForward& operator=(const FeedForward&) = delete;

  const Tensor& forward(const Tensor& x, const Pass& pass);
  const Tensor& backward(const Tensor& dy, bool need_dx = true);
  // Group-wise APG: dL/d(condition) [B, condition_dim] of the last backward, summed over this
  // stack's APG layers. Undefined when the stack has no group-wise APG layer.
  const Tensor& dcondition() const { return dcond_.any ? dcond_.sum : none_; }

  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  // Multiply-adds per input row at serving (APG folded), for cost tables.
  int64_t multiply_adds_per_row() const;

 private:
  struct Stage;
  std::string prefix_;
  int64_t in_ = 0, out_ = 0;
  LayerOptions options_;
  std::vector<std::unique_ptr<Stage>> stages_;
  GradientSum dcond_;
  Tensor none_;
};

}  // namespace ncsrec
