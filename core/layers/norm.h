// Normalisation layers over the feature (column) axis of x [B, C]:
//   BatchNorm  normalises each column by its batch statistics (training) or by running
//              statistics (evaluation), then y = gamma ⊙ x̂ + beta.
//   LayerNorm  normalises each row by its own mean and variance, then y = gamma ⊙ x̂ + beta.
// Parameters `<name>.gamma` [C] (ones) and `<name>.beta` [C] (zeros), without weight decay
// (they are 1-D); BatchNorm also keeps `<name>.running_mean` / `<name>.running_var` [C] as
// non-trainable state, so they are checkpointed with the weights but never optimised.
// Gradient contract: dgamma and dbeta accumulate (+=); dx is written.
//
// f32 and f64, on any device with the ops (core/ops.h batch_norm_*, layer_norm_*). Statistics
// are accumulated in double, column sums in row order, so the result is the same bits for any
// thread count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/params.h"
#include "core/tensor.h"

namespace ncsrec {

enum class Norm : uint8_t { None, Batch, Layer };

class BatchNorm {
 public:
  // running ← momentum·running + (1 − momentum)·batch statistic, at each training forward.
  BatchNorm(ParamStore& store, const std::string& name, int64_t features, double momentum = 0.99,
            double eps = 1e-5);
  // Training: normalise by the batch mean and biased variance (needs B >= 2), and update the
  // running mean and the running UNBIASED variance. Evaluation: normalise by the running
  // statistics. Returns this layer's buffer [B, C], valid until the next forward.
  const Tensor& forward(const Tensor& x, bool training);
  // Only after a training forward: the full gradient through the batch statistics.
  // Accumulates dgamma, dbeta; returns dx [B, C] (this layer's buffer).
  const Tensor& backward(const Tensor& dy);

  int64_t features() const { return features_; }
  Param* gamma() const { return gamma_; }
  Param* beta() const { return beta_; }
  Param* running_mean() const { return running_mean_; }
  Param* running_var() const { return running_var_; }

 private:

  std::string name_;
  int64_t features_;
  double momentum_, eps_;
  Param* gamma_ = nullptr;
  Param* beta_ = nullptr;
  Param* running_mean_ = nullptr;
  Param* running_var_ = nullptr;
  bool trained_ = false;  // the last forward was a training forward
  // f64 where x is: mean and 1/σ [C] of the last forward, the backward's column sums [2C].
  Tensor mean_buf_, mean_, inv_std_buf_, inv_std_, sums_buf_, sums_;
  Tensor xhat_buf_, xhat_, y_buf_, y_, dx_buf_, dx_;
};

class LayerNorm {
 public:
  LayerNorm(ParamStore& store, const std::string& name, int64_t features, double eps = 1e-5);
  // Returns this layer's buffer [B, C], valid until the next forward.
  const Tensor& forward(const Tensor& x);
  // Accumulates dgamma, dbeta; returns dx [B, C] (this layer's buffer).
  const Tensor& backward(const Tensor& dy);

  int64_t features() const { return features_; }
  Param* gamma() const { return gamma_; }
  Param* beta() const { return beta_; }

 private:

  std::string name_;
  int64_t features_;
  double eps_;
  Param* gamma_ = nullptr;
  Param* beta_ = nullptr;
  // f64 where x is: 1/σ of each row [B] of the last forward, the backward's column sums [2C].
  Tensor inv_std_buf_, inv_std_, sums_buf_, sums_;
  Tensor xhat_buf_, xhat_, y_buf_, y_, dx_buf_, dx_;
};

}  // namespace ncsrec
