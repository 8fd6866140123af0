// Historical embedding features (models/history_features.h): loading the file of
// `ncsrec history`, and the forward/backward of the mean and attention aggregations.
//
// Attention backward, for one id with present snapshots e_k, scores s_k = q·e_k,
// α = softmax(s), out = Σ α_k e_k and upstream gradient g = dL/dout:
//   a_k = g·e_k,  dL/ds_k = α_k (a_k − Σ_j α_j a_j),  dL/dq = Σ_k dL/ds_k e_k.
#include "models/history_features.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/hdf5_util.h"
#include "core/layers/embedding_bag.h"

namespace ncsrec {

namespace {

constexpr int64_t kHistoryFormatVersion = 1;

}  // namespace

HistoryFeatures::HistoryFeatures(const HistorySpec& spec, const DataSchema& schema, ParamStore& params,
                                 const std::string& where)
    : spec_(spec) {
  h5::silence_errors();
  const std::string what = where + "model.history.file: " + spec.file;
  h5::File f = [&] {
    try {
      return h5::File::open_read(spec.file);
    } catch (const UserError& e) {
      throw UserError(what + ": cannot open it (" + e.what() + "); build it with `ncsrec history`");
    }
  }();
  if (!f.has_attr("/", "format") || f.attr_string("/", "format") != "ncsrec-history")
    throw UserError(what + " is not a history-features file of `ncsrec history`");
  if (f.attr_int("/", "format_version") != kHistoryFormatVersion)
    throw UserError(what + " has format version " + std::to_string(f.attr_int("/", "format_version")) + "; this ncsrec reads " +
                    std::to_string(kHistoryFormatVersion));
  version_ = f.attr_string("/", "version");
  for (const auto& [name, slot] : spec.features) {
    Feature ft;
    ft.name = name;
    ft.slot = slot;
    ft.slot_index = schema.slot_index(slot);
    if (ft.slot_index < 0)
      throw ConfigError(where + "model.history.features." + name + ": the data has no sparse slot '" + slot + "'");
    const std::string base = "tables/" + name;
    if (!f.exists(base + "/keys"))
      throw UserError(what + " has no table '" + name + "' (it has: " + [&] {
        std::string have;
        for (const auto& n : f.list("tables")) have += (have.empty() ? "" : ", ") + n;
        return have;
      }() + ")");
    ft.kind = f.attr_string(base, "kind");
    ft.table_rows = f.attr_int(base, "rows");
    ft.keys = f.read_i64(base + "/keys");
    const std::vector<uint64_t> d = f.dims(base + "/values");
    const auto n = static_cast<uint64_t>(ft.keys.size());
    if (d.size() != 3 || d[0] != n || f.dims(base + "/present") != std::vector<uint64_t>{n, d[1]})
      throw UserError(what + ": table " + name + " has values or present of the wrong shape for its " +
                      std::to_string(n) + " keys");
    ft.k = static_cast<int64_t>(d[1]);
    ft.dim = static_cast<int64_t>(d[2]);
    ft.stacked = f.read_f32(base + "/values");
    ft.present = f.read_u8(base + "/present");
    for (size_t i = 0; i < ft.keys.size(); ++i) ft.index.emplace(ft.keys[i], static_cast<int64_t>(i));
    if (spec.aggregate == "mean") {
      // Precomputed once: one vector per id, as serving reads it.
      ft.mean.assign(ft.keys.size() * static_cast<size_t>(ft.dim), 0.0f);
      for (size_t i = 0; i < ft.keys.size(); ++i) {
        std::vector<double> sum(static_cast<size_t>(ft.dim), 0.0);
        int64_t count = 0;
        for (int64_t k = 0; k < ft.k; ++k) {
          if (!ft.present[i * static_cast<size_t>(ft.k) + static_cast<size_t>(k)]) continue;
          ++count;
          const float* e = ft.stacked.data() + (i * static_cast<size_t>(ft.k) + static_cast<size_t>(k)) * static_cast<size_t>(ft.dim);
          for (int64_t j = 0; j < ft.dim; ++j) sum[static_cast<size_t>(j)] += e[j];
        }
        for (int64_t j = 0; j < ft.dim && count > 0; ++j)
          ft.mean[i * static_cast<size_t>(ft.dim) + static_cast<size_t>(j)] = static_cast<float>(sum[static_cast<size_t>(j)] / static_cast<double>(count));
      }
      ft.stacked.clear();
      ft.stacked.shrink_to_fit();
    } else {
      ft.query = params.add("history." + name + ".query", {ft.dim}, Init::Zeros);
      ft.query->decay = false;
    }
    width_ += ft.dim;
    features_.push_back(std::move(ft));
  }
}

std::vector<std::pair<std::string, int64_t>> HistoryFeatures::widths() const {
  std::vector<std::pair<std::string, int64_t>> w;
  for (const Feature& f : features_) w.emplace_back(f.name, f.dim);
  return w;
}

int64_t HistoryFeatures::position_of(const Feature& f, int64_t id) {
  const int64_t key = f.kind == "fixed" ? embedding_row(id, f.table_rows) : id;
  const auto it = f.index.find(key);
  return it == f.index.end() ? -1 : it->second;
}

void HistoryFeatures::attend(const Feature& f, int64_t p, const double* q, double* out, double* alphas) {
  const size_t K = static_cast<size_t>(f.k), D = static_cast<size_t>(f.dim);
  const float* e = f.stacked.data() + static_cast<size_t>(p) * K * D;
  const uint8_t* present = f.present.data() + static_cast<size_t>(p) * K;
  double top = -INFINITY;
  for (size_t k = 0; k < K; ++k) {
    alphas[k] = 0;
    if (!present[k]) continue;
    double s = 0;
    for (size_t j = 0; j < D; ++j) s += q[j] * e[k * D + j];
    alphas[k] = s;
    top = std::max(top, s);
  }
  double z = 0;
  for (size_t k = 0; k < K; ++k)
    if (present[k]) z += (alphas[k] = std::exp(alphas[k] - top));
  for (size_t j = 0; j < D; ++j) out[j] = 0;
  if (z == 0) return;  // no present snapshot: zeros
  for (size_t k = 0; k < K; ++k) {
    if (!present[k]) continue;
    alphas[k] /= z;
    for (size_t j = 0; j < D; ++j) out[j] += alphas[k] * e[k * D + j];
  }
}

void HistoryFeatures::forward(Tensor& x, int64_t col, const Block& batch) const {
  const int64_t B = batch.rows, cols = x.dim(1);
  const bool f32 = x.dtype() == DType::F32;
  std::vector<double> out, alphas;
  int64_t at = col;
  for (const Feature& f : features_) {
    const SparseColumn& c = batch.sparse[static_cast<size_t>(f.slot_index)];
    out.assign(static_cast<size_t>(f.dim), 0.0);
    std::vector<double> row(static_cast<size_t>(f.dim));
    alphas.resize(static_cast<size_t>(f.k));
    const std::vector<double> query = f.query ? host_values(f.query->value) : std::vector<double>();
    for (int64_t r = 0; r < B; ++r) {
      std::fill(row.begin(), row.end(), 0.0);
      for (int64_t i = c.offsets[static_cast<size_t>(r)]; i < c.offsets[static_cast<size_t>(r) + 1]; ++i) {
        const int64_t p = position_of(f, c.ids[static_cast<size_t>(i)]);
        if (p < 0) continue;
        if (f.query) {
          attend(f, p, query.data(), out.data(), alphas.data());
          for (int64_t j = 0; j < f.dim; ++j) row[static_cast<size_t>(j)] += out[static_cast<size_t>(j)];
        } else {
          const float* m = f.mean.data() + static_cast<size_t>(p * f.dim);
          for (int64_t j = 0; j < f.dim; ++j) row[static_cast<size_t>(j)] += m[j];
        }
      }
      for (int64_t j = 0; j < f.dim; ++j) {
        if (f32) x.data<float>()[r * cols + at + j] = static_cast<float>(row[static_cast<size_t>(j)]);
        else x.data<double>()[r * cols + at + j] = row[static_cast<size_t>(j)];
      }
    }
    at += f.dim;
  }
}

void HistoryFeatures::backward(const Tensor& dx, int64_t col, const Block& batch) {
  const int64_t B = batch.rows, cols = dx.dim(1);
  const bool f32 = dx.dtype() == DType::F32;
  int64_t at = col;
  for (Feature& f : features_) {
    if (!f.query) {
      at += f.dim;
      continue;
    }
    const SparseColumn& c = batch.sparse[static_cast<size_t>(f.slot_index)];
    const size_t K = static_cast<size_t>(f.k), D = static_cast<size_t>(f.dim);
    std::vector<double> out(D), alphas(K), a(K), dq(D, 0.0), g(D);
    const std::vector<double> query = host_values(f.query->value);
    for (int64_t r = 0; r < B; ++r) {
      for (size_t j = 0; j < D; ++j)
        g[j] = f32 ? dx.data<float>()[r * cols + at + static_cast<int64_t>(j)] : dx.data<double>()[r * cols + at + static_cast<int64_t>(j)];
      for (int64_t i = c.offsets[static_cast<size_t>(r)]; i < c.offsets[static_cast<size_t>(r) + 1]; ++i) {
        const int64_t p = position_of(f, c.ids[static_cast<size_t>(i)]);
        if (p < 0) continue;
        attend(f, p, query.data(), out.data(), alphas.data());
        const float* e = f.stacked.data() + static_cast<size_t>(p) * K * D;
        double mean_a = 0;
        for (size_t k = 0; k < K; ++k) {
          a[k] = 0;
          if (alphas[k] == 0) continue;
          for (size_t j = 0; j < D; ++j) a[k] += g[j] * e[k * D + j];
          mean_a += alphas[k] * a[k];
        }
        for (size_t k = 0; k < K; ++k) {
          if (alphas[k] == 0) continue;
          const double ds = alphas[k] * (a[k] - mean_a);
          for (size_t j = 0; j < D; ++j) dq[j] += ds * e[k * D + j];
        }
      }
    }
    add_host_values(f.query->grad, dq);
    at += f.dim;
  }
}

std::vector<HistoryFeatures::ServingTable> HistoryFeatures::serving_tables() const {
  std::vector<ServingTable> tables;
  for (const Feature& f : features_) {
    ServingTable t;
    t.name = f.name;
    t.slot = f.slot;
    t.kind = f.kind;
    t.rows = f.table_rows;
    t.dim = f.dim;
    t.keys = f.keys;
    if (!f.query) {
      t.values = f.mean;
    } else {
      t.values.resize(f.keys.size() * static_cast<size_t>(f.dim));
      std::vector<double> out(static_cast<size_t>(f.dim)), alphas(static_cast<size_t>(f.k));
      const std::vector<double> query = host_values(f.query->value);
      for (size_t p = 0; p < f.keys.size(); ++p) {
        attend(f, static_cast<int64_t>(p), query.data(), out.data(), alphas.data());
        for (int64_t j = 0; j < f.dim; ++j) t.values[p * static_cast<size_t>(f.dim) + static_cast<size_t>(j)] = static_cast<float>(out[static_cast<size_t>(j)]);
      }
    }
    tables.push_back(std::move(t));
  }
  return tables;
}

}  // namespace ncsrec
