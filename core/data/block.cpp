// Block: the columnar in-memory rows of a shard or a batch. Appending rows one at a time is
// how the reader builds shuffled batches out of a window, so append_row is the hot path here.
#include "core/data/block.h"

#include <algorithm>

#include "core/error.h"

namespace ncsrec {
namespace {

int index_of(const std::vector<std::string>& names, const std::string& name) {
  auto it = std::find(names.begin(), names.end(), name);
  return it == names.end() ? -1 : static_cast<int>(it - names.begin());
}

template <class T>
size_t vector_bytes(const std::vector<T>& v) {
  return v.capacity() * sizeof(T);
}

}  // namespace

int DataSchema::task_index(const std::string& name) const { return index_of(tasks, name); }
int DataSchema::slot_index(const std::string& name) const { return index_of(slots, name); }
int DataSchema::meta_index(const std::string& name) const { return index_of(meta, name); }
int DataSchema::truth_index(const std::string& name) const { return index_of(truth, name); }

Block Block::with_schema(const DataSchema& schema) {
  Block b;
  b.schema = schema;
  b.labels.resize(schema.tasks.size());
  b.sparse.resize(schema.slots.size());
  for (auto& col : b.sparse) col.offsets.assign(1, 0);
  b.meta.resize(schema.meta.size());
  b.truth.resize(schema.truth.size());
  return b;
}

void Block::clear() {
  rows = 0;
  first_position = 0;
  for (auto& l : labels) l.clear();
  weight.clear();
  dense.clear();
  for (auto& col : sparse) {
    col.offsets.assign(1, 0);
    col.ids.clear();
  }
  for (auto& m : meta) m.clear();
  for (auto& t : truth) t.clear();
}

void Block::append_row(const Block& src, int64_t r) {
  NCSREC_CHECK(r >= 0 && r < src.rows, "append_row: row " << r << " of a block of " << src.rows);
  // A full schema comparison per row would dominate batch assembly; column counts catch misuse.
  NCSREC_CHECK(src.labels.size() == labels.size() && src.sparse.size() == sparse.size() &&
                   src.meta.size() == meta.size() && src.truth.size() == truth.size() &&
                   src.schema.dense_dim == schema.dense_dim && src.schema.has_weight == schema.has_weight,
               "append_row: schemas differ");
  for (size_t t = 0; t < labels.size(); ++t) labels[t].push_back(src.labels[t][r]);
  if (schema.has_weight) weight.push_back(src.weight[r]);
  if (schema.dense_dim > 0) {
    const auto d = schema.dense_dim;
    dense.insert(dense.end(), src.dense.begin() + r * d, src.dense.begin() + (r + 1) * d);
  }
  for (size_t s = 0; s < sparse.size(); ++s) {
    const SparseColumn& from = src.sparse[s];
    SparseColumn& to = sparse[s];
    to.ids.insert(to.ids.end(), from.ids.begin() + from.offsets[r], from.ids.begin() + from.offsets[r + 1]);
    to.offsets.push_back(static_cast<int64_t>(to.ids.size()));
  }
  for (size_t m = 0; m < meta.size(); ++m) meta[m].push_back(src.meta[m][r]);
  for (size_t t = 0; t < truth.size(); ++t) truth[t].push_back(src.truth[t][r]);
  ++rows;
}

void Block::validate(const std::string& where) const {
  const auto n = static_cast<size_t>(rows);
  NCSREC_USER_CHECK(rows >= 0, where << ": negative row count " << rows);
  NCSREC_USER_CHECK(labels.size() == schema.tasks.size(),
                    where << ": " << labels.size() << " label columns for " << schema.tasks.size() << " tasks");
  for (size_t t = 0; t < labels.size(); ++t)
    NCSREC_USER_CHECK(labels[t].size() == n, where << ": labels/" << schema.tasks[t] << " has " << labels[t].size()
                                                   << " rows, expected " << rows);
  NCSREC_USER_CHECK(weight.size() == (schema.has_weight ? n : 0),
                    where << ": weight has " << weight.size() << " values, expected "
                          << (schema.has_weight ? rows : 0));
  NCSREC_USER_CHECK(schema.dense_dim >= 0, where << ": negative dense_dim " << schema.dense_dim);
  NCSREC_USER_CHECK(dense.size() == n * static_cast<size_t>(schema.dense_dim),
                    where << ": dense has " << dense.size() << " values, expected " << rows << " x "
                          << schema.dense_dim);
  NCSREC_USER_CHECK(sparse.size() == schema.slots.size(),
                    where << ": " << sparse.size() << " sparse columns for " << schema.slots.size() << " slots");
  for (size_t s = 0; s < sparse.size(); ++s) {
    const auto& col = sparse[s];
    const std::string name = "sparse/" + schema.slots[s];
    NCSREC_USER_CHECK(col.offsets.size() == n + 1,
                      where << ": " << name << "/offsets has " << col.offsets.size() << " entries, expected " << n + 1);
    NCSREC_USER_CHECK(col.offsets[0] == 0, where << ": " << name << "/offsets does not start at 0");
    for (size_t i = 0; i < n; ++i)
      NCSREC_USER_CHECK(col.offsets[i] <= col.offsets[i + 1],
                        where << ": " << name << "/offsets decreases at row " << i);
    NCSREC_USER_CHECK(static_cast<size_t>(col.offsets[n]) == col.ids.size(),
                      where << ": " << name << "/ids has " << col.ids.size() << " ids but offsets end at "
                            << col.offsets[n]);
  }
  NCSREC_USER_CHECK(meta.size() == schema.meta.size(),
                    where << ": " << meta.size() << " meta columns for " << schema.meta.size() << " names");
  for (size_t m = 0; m < meta.size(); ++m)
    NCSREC_USER_CHECK(meta[m].size() == n, where << ": meta/" << schema.meta[m] << " has " << meta[m].size()
                                                 << " rows, expected " << rows);
  NCSREC_USER_CHECK(truth.size() == schema.truth.size(),
                    where << ": " << truth.size() << " truth columns for " << schema.truth.size() << " names");
  for (size_t t = 0; t < truth.size(); ++t)
    NCSREC_USER_CHECK(truth[t].size() == n, where << ": truth/" << schema.truth[t] << " has " << truth[t].size()
                                                  << " rows, expected " << rows);
}

size_t Block::bytes() const {
  size_t total = sizeof(Block);
  for (const auto& l : labels) total += vector_bytes(l);
  total += vector_bytes(weight) + vector_bytes(dense);
  for (const auto& col : sparse) total += vector_bytes(col.offsets) + vector_bytes(col.ids);
  for (const auto& m : meta) total += vector_bytes(m);
  for (const auto& t : truth) total += vector_bytes(t);
  return total;
}

}  // namespace ncsrec
