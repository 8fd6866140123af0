// Training through a sparse mask on the CPU: the three products of a masked linear layer
// (core/layers/masked_linear.h) computed from the mask's connections only, so that a task whose
// mask keeps 20% of the weights does about 20% of the multiply-adds. This is the CPU's "fused"
// route of the layer (run.masked_route); the plain route multiplies W ⊙ M_t densely.
//
//   forward      y = act(x·(W ⊙ M) + b)           [B, in] -> [B, out]   (written)
//   input grad   dx = dy·(W ⊙ M)ᵀ                  [B, out] -> [B, in]   (written)
//   weight grad  dW[k, j] += Σ_b x[b, k]·dy[b, j]  only where M[k, j] = 1 (exactly nothing
//                elsewhere: those elements are not touched)
//
// How. The batch is cut into tiles of rows; a tile of the dense operand is transposed into a
// feature-major block ([features, tile], in cache), so that one connection (k → j) is one
// broadcast of its weight and a few 16-wide multiply-adds over the tile's rows, with no index
// per multiply-add. The forward and the input gradient are the same kernel over two
// orientations of the mask (by output for the forward, by input for the input gradient); the
// weight gradient is a 256-row dot product per connection and tile (a sampled dense-dense
// product), the batch's tiles split into at most 8 fixed groups that threads sum without
// waiting for each other. Connections are grouped by blocks of the reduced dimension, so that
// the block of the transposed tile they read stays in L1 (128 inputs × 64 rows, 32 KiB).
// Several tasks of one layer go in one call: a shared block's first layer reads one x for every
// task, transposed once per tile for all of them, and its input gradient, the sum of the tasks',
// is summed as it is made. A chain of masked layers (MaskedMLP) passes its activations and
// their gradients between layers in the kernels' tiled layout (below), which the kernels read
// in place and write without transposing; a gradient is gated by the ReLU below as it is
// written. Measured on the 2-core AVX-512 machine at batch 4096 and random masks,
// against the plain route's dense products (SkylakeX kernels) alternately in one process
// (`ncsrec_bench_sparse --training`, 2 threads): 1.9–2.6× per product on the paper's three
// layers at 20%, 1.2–1.4× at 40%, 1.0–1.2× at 50% (docs/results/bench.md). Every multiply-add
// of a connection loads its operand (nothing to reuse from registers, unlike a dense GEMM): the
// connection loop alone runs about 3.5 G 16-wide multiply-adds per second per core there,
// against 4.0–4.4 G for multiply-adds that each load one operand from L1 and 5.4 G from
// registers only.
//
// Numerics: f32, FMA. Every output element is summed in one fixed order (connections in the
// order of the plan, partial sums in a fixed tree; the weight gradient's groups of tiles fixed
// by the batch's rows and added in group order), whatever the thread count: results are
// bit-identical run to run and across thread counts, and differ from the dense product by
// rounding only.
//
// Needs AVX-512F at run time (masked_sparse_available); the route falls back to the plain one
// elsewhere and for f64.
#pragma once

#include <cstdint>
#include <vector>

#include "core/masks.h"

namespace ncsrec {

// One orientation of a mask: for each of `rows` outputs of a product, its connections to the
// `cols` inputs it sums over, grouped by blocks of `block` inputs: the connections of output r
// in block b are [ptr[b·(rows+1) + r], ptr[b·(rows+1) + r + 1]), inputs ascending, each with its
// input's offset inside the block (local) and its element of the [in, out] weight (pos).
struct MaskOrientation {
  int64_t rows = 0, cols = 0, block = 0;
  std::vector<int32_t> ptr;    // blocks · (rows + 1)
  std::vector<int32_t> local;  // nnz: input index − block start
  std::vector<int32_t> pos;    // nnz: k·out + j in W [in, out]
  int64_t blocks() const { return (cols + block - 1) / block; }
  int64_t nnz() const { return static_cast<int64_t>(pos.size()); }
};

// The mask of an [in, out] weight in the three orientations the products read.
struct MaskedSparsePlan {
  int64_t in = 0, out = 0;
  MaskOrientation by_output;  // forward: outputs j over inputs k
  MaskOrientation by_input;   // input gradient: inputs k over outputs j
  MaskOrientation for_grad;   // weight gradient: outputs j over inputs k, small blocks
  int64_t nnz() const { return by_output.nnz(); }
};

MaskedSparsePlan plan_masked_sparse(const BitMask& mask);

// Whether this CPU runs the kernels (AVX-512F).
bool masked_sparse_available();

// The kernels' own layout of a [rows, n] array, which a chain of masked layers (MaskedMLP on
// this route) keeps between its layers, so that no activation or gradient inside the chain is
// transposed twice: tiles of kMaskedTileRows rows, tile i the [n, 64] block
// a[64·i + s, k] at [i·n·64 + k·64 + s]. The rows are counted up to a multiple of
// kMaskedTiledRows (the weight gradient reads four tiles at a time); rows past `rows` are zeros.
// Every tiled array starts on a 64-byte boundary.
constexpr int64_t kMaskedTileRows = 64;
constexpr int64_t kMaskedTiledRows = 256;
// Rows in the tiled layout of `rows` rows (up to a multiple of kMaskedTiledRows), and floats in
// the tiled layout of a [rows, n] array.
int64_t masked_tiled_rows(int64_t rows);
int64_t masked_tiled_floats(int64_t rows, int64_t n);
// Row-major [rows, n] to the tiled layout (padding rows written as zeros), and back.
void to_masked_tiled(const float* a, int64_t rows, int64_t n, float* tiled);
void from_masked_tiled(const float* tiled, int64_t rows, int64_t n, float* a);

// One task's operands in a call for several tasks of one layer. Tasks whose input (x, or dy
// with its gate) is the same array as the previous task's share the transposition of each of
// its tiles: the first layer of a shared block reads one x for every task. Each operand is
// row-major unless its `_tiled` flag says it is in the tiled layout above.
struct MaskedSparseTask {
  const MaskedSparsePlan* plan = nullptr;
  const float* x = nullptr;       // the layer's input [rows, in] (forward, weight gradient)
  const float* dy = nullptr;      // the gradient of its output [rows, out] (the gradients)
  const float* relu_y = nullptr;  // the layer's ReLU output, the gate of dy; null: no activation
  float* y = nullptr;             // forward: the task's output [rows, out]
  float* dx = nullptr;            // input gradient: the task's own [rows, in] (when not summed)
  bool x_tiled = false;           // x is tiled
  bool y_tiled = false;           // the forward writes y tiled
  bool dy_tiled = false;          // dy is tiled and already gated (relu_y must be null)
  bool dx_tiled = false;          // the input gradient writes dx tiled, as dx ⊙ (dx_gate > 0)
  const float* dx_gate = nullptr; // tiled [rows, in]: the ReLU output of the layer below; null: none
};

// The products of several tasks of one layer (same in and out). The results are bit-identical
// to one call per task, in task order: the forward writes each task's y; the weight gradient
// adds each task's dW and db, task after task; the input gradient writes each task's dx, or
// with dx_sum, Σ_t dx_t added in task order (as summing the tasks' dx would) without writing
// any task's own.
void masked_sparse_forward(const std::vector<MaskedSparseTask>& tasks, int64_t rows, const float* w,
                           const float* bias, bool relu);
void masked_sparse_input_grad(const std::vector<MaskedSparseTask>& tasks, int64_t rows, const float* w,
                              float* dx_sum);
void masked_sparse_weight_grad(const std::vector<MaskedSparseTask>& tasks, int64_t rows, float* dw, float* db);

// One task (see the top of the file); every array is row-major and dense. `bias` may be null.
void masked_sparse_forward(const MaskedSparsePlan& plan, int64_t rows, const float* x, const float* w,
                           const float* bias, bool relu, float* y);
// The gradients take dy, the gradient of the layer's output, and with `relu_y` (the layer's ReLU
// output, or null for no activation) use dy ⊙ (relu_y > 0) in its place, made as the tiles are
// transposed. The weight gradient also adds the bias gradient, colsum of that, to `db` when
// db is not null.
void masked_sparse_input_grad(const MaskedSparsePlan& plan, int64_t rows, const float* dy, const float* relu_y,
                              const float* w, float* dx);
void masked_sparse_weight_grad(const MaskedSparsePlan& plan, int64_t rows, const float* x, const float* dy,
                               const float* relu_y, float* dw, float* db);

}  // namespace ncsrec
