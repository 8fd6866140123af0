// Small models and random batches shared by the model tests (one process) and the
// data-parallel tests (several ranks): tiny tables, ids out of range and negative, rows with
// no ids, a task given another.
#pragma once

#include <string>
#include <vector>

#include "core/data/block.h"
#include "core/random.h"
#include "models/model_config.h"

namespace ncsrec::testing {

inline DataSchema test_schema() {
  DataSchema s;
  s.tasks = {"click", "conversion"};
  s.has_weight = true;
  s.dense_dim = 2;
  s.slots = {"user", "item", "tags"};
  return s;
}

// Tiny tables, one of them read by two slots with mean pooling.
inline ModelConfig model_config(const std::string& type, double ctr_weight = 1.3, double cvr_weight = 0.7) {
  ModelConfig m;
  m.type = type;
  m.embedding_dim = 3;
  m.embedding_init = 0.5;  // large enough that embeddings move the logits visibly
  const std::vector<int64_t> tower = type == "shared_bottom" ? std::vector<int64_t>{3} : std::vector<int64_t>{4, 3};
  m.tasks = {TaskSpec{"ctr", "click", "", tower, ctr_weight}, TaskSpec{"cvr", "conversion", "ctr", tower, cvr_weight}};
  m.tables = {TableSpec{"user_t", 7, {"user"}, Pooling::Sum}, TableSpec{"item_t", 9, {"item", "tags"}, Pooling::Mean}};
  if (type == "shared_bottom") m.bottom = {5};
  if (type == "ncs") {
    m.shared = {5, 4};
    m.masks.layers = {0, 1};
  }
  return m;
}

// Random rows: conversion implies click; 0-3 ids per multi-hot row (some rows empty), ids
// beyond the table size and negative (they map modulo the rows).
inline Block random_batch(const DataSchema& schema, int64_t rows, uint64_t seed) {
  Rng rng(seed);
  Block b = Block::with_schema(schema);
  b.rows = rows;
  for (int64_t r = 0; r < rows; ++r) {
    const bool click = r < 2 || (r > 2 && rng.bernoulli(0.5));  // rows 0, 1 click, row 2 does not
    const bool conversion = click && (r == 0 || (r > 1 && rng.bernoulli(0.5)));
    b.labels[0].push_back(click ? 1.0f : 0.0f);
    b.labels[1].push_back(conversion ? 1.0f : 0.0f);
    b.weight.push_back(static_cast<float>(rng.uniform(0.5, 2.0)));
    for (int64_t j = 0; j < schema.dense_dim; ++j) b.dense.push_back(static_cast<float>(rng.normal()));
    for (size_t s = 0; s < b.sparse.size(); ++s) {
      const int64_t n = s == 2 ? static_cast<int64_t>(rng.below(4)) : 1;
      for (int64_t k = 0; k < n; ++k) b.sparse[s].ids.push_back(static_cast<int64_t>(rng.below(41)) - 10);
      b.sparse[s].offsets.push_back(static_cast<int64_t>(b.sparse[s].ids.size()));
    }
  }
  b.validate("random_batch");
  return b;
}

}  // namespace ncsrec::testing
