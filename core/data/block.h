// Block: rows of training data in columnar form, the in-memory twin of one HDF5 shard (see
// docs/data-format.md). A batch is a Block too. Labels are held as float whatever their
// on-disk type (uint8 for binary tasks, float32 for graded ones).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ncsrec {

struct DataSchema {
  std::vector<std::string> tasks;        // labels/<task>
  bool has_weight = false;               // weight
  int64_t dense_dim = 0;                 // dense [N, D]; 0 = absent
  std::vector<std::string> slots;        // sparse/<slot>/{offsets,ids}
  std::vector<std::string> meta;         // meta/<name> (int64)
  std::vector<std::string> truth;        // truth/<task>: true probabilities (generated data only)
  bool operator==(const DataSchema& o) const {
    return tasks == o.tasks && has_weight == o.has_weight && dense_dim == o.dense_dim && slots == o.slots &&
           meta == o.meta && truth == o.truth;
  }
  bool operator!=(const DataSchema& o) const { return !(*this == o); }
  int task_index(const std::string& name) const;  // -1 if absent
  int slot_index(const std::string& name) const;
  int meta_index(const std::string& name) const;
  int truth_index(const std::string& name) const;
};

struct SparseColumn {
  std::vector<int64_t> offsets;  // rows + 1, offsets[0] == 0
  std::vector<int64_t> ids;      // offsets[rows]
};

struct Block {
  DataSchema schema;
  int64_t rows = 0;
  std::vector<std::vector<float>> labels;  // [task][row]
  std::vector<float> weight;               // [row] or empty
  std::vector<float> dense;                // [row * dense_dim + j]
  std::vector<SparseColumn> sparse;        // [slot]
  std::vector<std::vector<int64_t>> meta;  // [meta][row]
  std::vector<std::vector<float>> truth;   // [truth][row]
  int64_t first_position = 0;              // global position in the epoch's order of the first row (batches)

  // An empty block shaped for `schema`.
  static Block with_schema(const DataSchema& schema);
  void clear();  // zero rows, same schema
  // Appends row `r` of `src` (same schema).
  void append_row(const Block& src, int64_t r);
  // Structural checks (sizes agree, offsets monotone); throws UserError naming `where`.
  void validate(const std::string& where) const;
  // Approximate heap bytes held.
  size_t bytes() const;
};

}  // namespace ncsrec
