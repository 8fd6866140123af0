// E-CDCTR's historical embedding features (PAPERS.md §3, docs/ecdctr.md): frozen per-entity
// vectors from the last K snapshots of the tiny pre-training model (TPM), read by id from a
// data slot and appended to the model's input vector.
//
// The file is written by `ncsrec history` (train/history.h): per table, the ids (`keys`,
// ascending) and per id its K snapshot vectors, newest first, with a presence flag per
// snapshot (an id born after a snapshot is absent from it). Aggregation (`model.history.aggregate`):
//   mean       the mean of the id's present snapshots, computed once at load: one vector per id
//   attention  α_k = softmax over the present k of q·e_k, out = Σ α_k e_k, with a learned query
//              q per feature (parameter `history.<feature>.query`, zeros at the start, so the
//              attention starts as the mean); serving folds q in (serving_tables), so a scorer
//              reads one vector per id either way
// An id with no row in the table (or no present snapshot) reads zeros. A multi-hot slot sums its
// ids' vectors. The vectors themselves are never trained.
//
// Input columns: the features in config order, each its table's width (the TPM's embedding
// dim), after the dense features and before any dot products; with `interact`, right after the
// slot embeddings instead, as more fields of the dot-product interaction.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/data/block.h"
#include "core/params.h"
#include "core/tensor.h"

namespace ncsrec {

// `model.history`: which file, how to aggregate, and which table feeds from which data slot.
struct HistorySpec {
  std::string file;                 // a features.h5 of `ncsrec history` ("" = no history features)
  std::string aggregate = "mean";   // mean | attention
  std::vector<std::pair<std::string, std::string>> features;  // file table -> data slot, in input order
  // Ours: the features sit right after the slot embeddings and take part in the dot-product
  // interaction as more fields (needs interaction: dot and vectors of embedding_dim).
  bool interact = false;
  bool enabled() const { return !file.empty(); }
};

class HistoryFeatures {
 public:
  // Loads spec.file (a UserError naming `where` and the file for anything missing or malformed)
  // and, for attention, declares each feature's query in `params`.
  HistoryFeatures(const HistorySpec& spec, const DataSchema& schema, ParamStore& params, const std::string& where);

  int64_t width() const { return width_; }
  // The file's version: the snapshots it was built from (day and step of each, newest first).
  const std::string& version() const { return version_; }
  const std::string& file() const { return spec_.file; }
  // Per feature, in input order: its table's name and its width.
  std::vector<std::pair<std::string, int64_t>> widths() const;

  // x [B, cols] (f32 or f64): writes columns [col, col + width()).
  void forward(Tensor& x, int64_t col, const Block& batch) const;
  // dx [B, cols]: the input gradient; attention adds into each query's gradient (+=). Mean: nothing.
  void backward(const Tensor& dx, int64_t col, const Block& batch);

  // The serving form: per feature, one vector per id (attention folded with the current query).
  struct ServingTable {
    std::string name, slot, kind;  // kind: hash (keys are ids) | fixed (keys are rows: id mod rows)
    int64_t rows = 0, dim = 0;
    std::vector<int64_t> keys;
    std::vector<float> values;  // [keys, dim]
  };
  std::vector<ServingTable> serving_tables() const;

 private:
  struct Feature {
    std::string name, slot;
    int slot_index = -1;
    std::string kind;        // hash | fixed
    int64_t table_rows = 0;  // fixed: ids map to rows modulo this
    int64_t k = 0, dim = 0;
    std::vector<int64_t> keys;
    std::unordered_map<int64_t, int64_t> index;  // key -> position in keys
    std::vector<float> stacked;   // [N, K, dim] (attention)
    std::vector<uint8_t> present; // [N, K]
    std::vector<float> mean;      // [N, dim] (mean)
    Param* query = nullptr;       // attention
  };
  // The position of `id`'s row in f.keys, -1 when it has none.
  static int64_t position_of(const Feature& f, int64_t id);
  // out[dim] = Σ α_k e_k of the id at position `p`; alphas[K] receives α (0 for absent k).
  // q: the feature's query as doubles on the host (host_values).
  static void attend(const Feature& f, int64_t p, const double* q, double* out, double* alphas);

  HistorySpec spec_;
  std::string version_;
  std::vector<Feature> features_;
  int64_t width_ = 0;
};

}  // namespace ncsrec
