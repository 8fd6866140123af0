#include "train/retrieval_eval.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <sstream>

#include "core/blas_core.h"
#include "core/data/generator_truth.h"
#include "core/data/hdf5_shard.h"
#include "core/error.h"
#include "core/hdf5_util.h"
#include "train/json.h"

namespace ncsrec {

namespace {

// The generator's data layout (core/data/synthetic.cpp): the slots the catalog fills, and the
// dense columns an item row carries.
constexpr int kDensePrice = 0, kDenseAge = 3, kDenseWidth = 4;

struct Request {
  int64_t user = 0;
  int day = 0, hour = 0, device = 0;
  bool ads = false;
};

int slot_or_fail(const DataSchema& schema, const std::string& name) {
  const int s = schema.slot_index(name);
  if (s < 0)
    throw UserError("retrieval eval: the eval data has no slot '" + name +
                    "'; --retrieval needs data written by `ncsrec gen` (its generator.h5 gives the true relevance)");
  return s;
}

int64_t one_id(const Block& b, int slot, int64_t r) {
  const SparseColumn& c = b.sparse[static_cast<size_t>(slot)];
  if (c.offsets[static_cast<size_t>(r) + 1] - c.offsets[static_cast<size_t>(r)] != 1)
    throw UserError("retrieval eval: a request row does not have exactly one id in a single-id slot");
  return c.ids[static_cast<size_t>(c.offsets[static_cast<size_t>(r)])];
}

// One row per item that exists on `day`: the item's own slots and dense columns as the data
// writes them; every other slot one id 0 and every other column 0 (the item towers do not read them).
Block item_catalog(const GeneratorTruth& g, const DataSchema& schema, int day, std::vector<int64_t>& ids) {
  const int item = slot_or_fail(schema, "item_id"), category = slot_or_fail(schema, "item_category"),
            tags = slot_or_fail(schema, "item_tags");
  if (schema.dense_dim != kDenseWidth)
    throw UserError("retrieval eval: the eval data has " + std::to_string(schema.dense_dim) +
                    " dense features, the generator writes " + std::to_string(kDenseWidth));
  Block b = Block::with_schema(schema);
  ids.clear();
  for (int64_t i = 0; i < g.items(); ++i) {
    if (g.item_birth_day(i) > day) continue;  // not born yet: never shown that day
    ids.push_back(i);
    for (auto& l : b.labels) l.push_back(0.0f);
    if (schema.has_weight) b.weight.push_back(1.0f);
    for (int64_t j = 0; j < kDenseWidth; ++j) b.dense.push_back(0.0f);
    b.dense[b.dense.size() - kDenseWidth + kDensePrice] = static_cast<float>(g.item_log_price(i));
    b.dense[b.dense.size() - kDenseWidth + kDenseAge] =
        static_cast<float>(std::min<int64_t>(30, day - g.item_birth_day(i))) / 30.f;
    for (size_t s = 0; s < b.sparse.size(); ++s) {
      SparseColumn& c = b.sparse[s];
      if (static_cast<int>(s) == tags) {
        int64_t n = 0;
        const int64_t* t = g.item_tags(i, &n);
        c.ids.insert(c.ids.end(), t, t + n);
      } else {
        c.ids.push_back(static_cast<int>(s) == item ? i : static_cast<int>(s) == category ? g.item_category(i) : 0);
      }
      c.offsets.push_back(static_cast<int64_t>(c.ids.size()));
    }
    for (auto& m : b.meta) m.push_back(0);
    for (auto& t : b.truth) t.push_back(0.0f);
    ++b.rows;
  }
  b.validate("retrieval item catalog");
  return b;
}

// The requests: the first row of each distinct user in the eval files, up to `n`, checked
// against the generator (a generator.h5 of other data would give meaningless relevance).
Block requests(const GeneratorTruth& g, const std::vector<std::string>& files, int64_t n,
               std::vector<Request>& out, std::string& day) {
  int64_t rows = 0;
  const DataSchema schema = read_shard_schema(files.at(0), &rows);
  const int user = slot_or_fail(schema, "user_id"), item = slot_or_fail(schema, "item_id"),
            hour = slot_or_fail(schema, "hour"), device = slot_or_fail(schema, "device"),
            position = slot_or_fail(schema, "position");
  const int meta_day = schema.meta_index("day"), meta_domain = schema.meta_index("domain");
  const int truth_click = schema.truth_index("click");
  if (meta_day < 0 || meta_domain < 0 || truth_click < 0)
    throw UserError("retrieval eval: the eval data lacks meta/day, meta/domain or truth/click; --retrieval needs "
                    "data written by `ncsrec gen`");
  Block chosen = Block::with_schema(schema);
  std::set<int64_t> seen;
  int64_t yyyymmdd = -1;
  for (const auto& file : files) {
    Block b;
    const DataSchema s = read_shard_schema(file, &rows);
    if (s != schema) throw UserError("retrieval eval: " + file + " has another schema than " + files[0]);
    read_shard_rows(file, 0, rows, b);
    for (int64_t r = 0; r < b.rows && chosen.rows < n; ++r) {
      const int64_t u = one_id(b, user, r);
      if (!seen.insert(u).second) continue;
      const int64_t d = b.meta[static_cast<size_t>(meta_day)][static_cast<size_t>(r)];
      if (yyyymmdd < 0) yyyymmdd = d;
      if (d != yyyymmdd)
        throw UserError("retrieval eval: the eval data spans several days (" + std::to_string(yyyymmdd) + ", " +
                        std::to_string(d) + "); give one day folder with --data");
      Request q;
      q.user = u;
      q.day = g.day_index(d);
      q.hour = static_cast<int>(one_id(b, hour, r));
      q.device = static_cast<int>(one_id(b, device, r));
      q.ads = b.meta[static_cast<size_t>(meta_domain)][static_cast<size_t>(r)] != 0;
      const int64_t i = one_id(b, item, r);
      const double stored = b.truth[static_cast<size_t>(truth_click)][static_cast<size_t>(r)];
      const double p = g.truth(u, i, q.day, q.hour, q.device, static_cast<int>(one_id(b, position, r)), q.ads).click;
      if (std::abs(p - stored) > 1e-4 * std::max(1.0, stored))
        throw UserError("retrieval eval: " + file + " row " + std::to_string(r) + ": p(click) is " +
                        std::to_string(stored) + " in the data but " + std::to_string(p) +
                        " from the generator file: --retrieval must name the generator.h5 written with this data");
      out.push_back(q);
      chosen.append_row(b, r);
    }
    if (chosen.rows >= n) break;
  }
  if (chosen.rows == 0) throw UserError("retrieval eval: the eval data has no rows");
  day = std::to_string(yyyymmdd);
  return chosen;
}

// Scores [q, items] = user[:, cols] · items[:, cols]ᵀ for the column range [c0, c0 + w).
void score(std::vector<float>& out, const Tensor& user, int64_t q0, int64_t q, const Tensor& items, int64_t c0,
           int64_t w) {
  const int64_t n = user.dim(1), I = items.dim(0);
  out.resize(static_cast<size_t>(q * I));
  // Single-threaded BLAS calls on blocks of queries (OpenMP threads the products; core/cpu_kernels.cpp).
  use_single_threaded_blas();
  constexpr int64_t kBlock = 64;
#pragma omp parallel for schedule(dynamic)
  for (int64_t b = 0; b < q; b += kBlock) {
    const int64_t rows = std::min(kBlock, q - b);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(I),
                static_cast<int>(w), 1.0f, user.data<float>() + (q0 + b) * n + c0, static_cast<int>(n),
                items.data<float>() + c0, static_cast<int>(n), 0.0f, out.data() + b * I, static_cast<int>(I));
  }
}

void write_serving_form(const std::string& path, const MultiTaskModel& model, const std::vector<int64_t>& item_ids,
                        const Tensor& items, const std::vector<Request>& reqs, const Tensor& users) {
  const std::string tmp = path + ".tmp";
  {
    h5::File f = h5::File::create(tmp);
    const uint64_t I = static_cast<uint64_t>(items.dim(0)), Q = static_cast<uint64_t>(users.dim(0)),
                   n = static_cast<uint64_t>(items.dim(1));
    const uint64_t T = model.config().tasks.size(), d = (n - 1) / T;
    f.write("items/id", item_ids.data(), {I});
    f.write("items/index", items.data<float>(), {I, n});
    for (uint64_t t = 0; t < T; ++t) {  // each task's item embeddings on their own
      std::vector<float> v(static_cast<size_t>(I * d));
      for (uint64_t i = 0; i < I; ++i)
        std::copy(items.data<float>() + i * n + t * d, items.data<float>() + i * n + (t + 1) * d, v.begin() + static_cast<std::ptrdiff_t>(i * d));
      f.write("items/" + model.config().tasks[t].name, v.data(), {I, d});
    }
    std::vector<int64_t> uid;
    for (const auto& r : reqs) uid.push_back(r.user);
    f.write("queries/user_id", uid.data(), {Q});
    f.write("queries/vector", users.data<float>(), {Q, n});
    f.set_attr("/", "layout", "score = queries/vector · items/index = Σ_t w_t·(u·v_t + b_t); items/<task> = v_t");
    f.close();
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw UserError("cannot rename " + tmp + " to " + path + ": " + ec.message());
}

}  // namespace

RetrievalReport evaluate_retrieval(MultiTaskModel& model, const std::vector<std::string>& eval_files,
                                   const RetrievalOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const ModelConfig& mc = model.config();
  if (mc.type != "three_tower")
    throw ConfigError("ncsrec eval --retrieval: the model is of type " + mc.type +
                      "; retrieval metrics need a retrieval model (type three_tower)");
  if (model.dtype() != DType::F32) throw UserError("retrieval eval runs in f32");
  if (eval_files.empty()) throw UserError("retrieval eval: no eval data");
  const GeneratorTruth g = GeneratorTruth::load(options.generator);
  RetrievalReport report;
  report.ks = options.ks;
  std::vector<Request> reqs;
  const Block queries = requests(g, eval_files, options.queries, reqs, report.day);
  const int day = reqs.front().day;
  std::vector<int64_t> item_ids;
  const Block catalog = item_catalog(g, queries.schema, day, item_ids);
  report.queries = queries.rows;
  report.items = catalog.rows;

  Tensor users, items;
  model.retrieval_user(queries, users);
  model.retrieval_items(catalog, items);
  if (!options.export_path.empty()) write_serving_form(options.export_path, model, item_ids, items, reqs, users);

  // Lists: the mixed score (all columns), then each task's own u·v_t (its columns; the gate's
  // positive scale w_t and the bias do not change a query's ranking).
  const int64_t T = static_cast<int64_t>(mc.tasks.size()), d = (users.dim(1) - 1) / T;
  struct ListSpec {
    std::string name;
    int64_t c0, w;
  };
  std::vector<ListSpec> lists;
  if (T > 1) lists.push_back({"mixed", 0, users.dim(1)});
  // The first T loss names are the tasks' impression-level names (ctr, ctcvr).
  for (int64_t t = 0; t < T; ++t) lists.push_back({model.loss_names()[static_cast<size_t>(t)], t * d, d});
  const size_t K = options.ks.size(), L = lists.size();
  // sums[list][relevance][k]: recall, ndcg
  std::vector<double> recall(L * 2 * K, 0.0), ndcg(L * 2 * K, 0.0);

  const int64_t I = catalog.rows, Q = queries.rows, chunk = 64;
  std::vector<std::vector<float>> scores(L);
  const size_t per_query = L * 2 * K;
  std::vector<double> at_q(static_cast<size_t>(chunk) * per_query * 2);  // [query][list][relevance][k]: recall, ndcg
  for (int64_t q0 = 0; q0 < Q; q0 += chunk) {
    const int64_t q = std::min(chunk, Q - q0);
    for (size_t l = 0; l < L; ++l) score(scores[l], users, q0, q, items, lists[l].c0, lists[l].w);
#pragma omp parallel
    {
      std::vector<double> click(static_cast<size_t>(I)), conv(static_cast<size_t>(I));
#pragma omp for schedule(dynamic)
      for (int64_t j = 0; j < q; ++j) {
        const Request& r = reqs[static_cast<size_t>(q0 + j)];
        g.truth_for_items(r.user, r.day, r.hour, r.device, 0, r.ads, item_ids.data(), I, click.data(), conv.data());
        for (int64_t i = 0; i < I; ++i) conv[static_cast<size_t>(i)] *= click[static_cast<size_t>(i)];
        double* out = at_q.data() + static_cast<size_t>(j) * per_query * 2;
        for (size_t l = 0; l < L; ++l)
          for (size_t rel = 0; rel < 2; ++rel) {
            const auto at = retrieval_at_k(scores[l].data() + j * I, rel == 0 ? click.data() : conv.data(), I, options.ks);
            for (size_t k = 0; k < K; ++k) {
              out[((l * 2 + rel) * K + k) * 2] = at[k].recall;
              out[((l * 2 + rel) * K + k) * 2 + 1] = at[k].ndcg;
            }
          }
      }
    }
    for (int64_t j = 0; j < q; ++j)  // in query order: the means do not depend on the thread count
      for (size_t x = 0; x < per_query; ++x) {
        recall[x] += at_q[(static_cast<size_t>(j) * per_query + x) * 2];
        ndcg[x] += at_q[(static_cast<size_t>(j) * per_query + x) * 2 + 1];
      }
  }
  for (size_t l = 0; l < L; ++l)
    for (size_t rel = 0; rel < 2; ++rel) {
      RetrievalList out;
      out.list = lists[l].name;
      out.relevance = rel == 0 ? "click" : "conversion";
      for (size_t k = 0; k < K; ++k)
        out.at_k.push_back({recall[(l * 2 + rel) * K + k] / static_cast<double>(Q),
                            ndcg[(l * 2 + rel) * K + k] / static_cast<double>(Q)});
      report.lists.push_back(out);
    }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

std::string format_retrieval_table(const RetrievalReport& report) {
  std::ostringstream os;
  char buf[64];
  os << "list        relevance ";
  for (int64_t k : report.ks) {
    std::snprintf(buf, sizeof buf, " %9s %9s", ("R@" + std::to_string(k)).c_str(), ("NDCG@" + std::to_string(k)).c_str());
    os << buf;
  }
  os << "\n";
  for (const auto& l : report.lists) {
    std::snprintf(buf, sizeof buf, "%-11s %-10s", l.list.c_str(), l.relevance.c_str());
    os << buf;
    for (const auto& a : l.at_k) {
      std::snprintf(buf, sizeof buf, " %9.4f %9.4f", a.recall, a.ndcg);
      os << buf;
    }
    os << "\n";
  }
  return os.str();
}

std::string retrieval_json(const RetrievalReport& report) {
  JsonObject lists;
  for (const auto& l : report.lists) {
    JsonObject m;
    for (size_t k = 0; k < report.ks.size(); ++k) {
      m.add("recall@" + std::to_string(report.ks[k]), l.at_k[k].recall);
      m.add("ndcg@" + std::to_string(report.ks[k]), l.at_k[k].ndcg);
    }
    lists.add(l.list + "/" + l.relevance, m);
  }
  return JsonObject()
      .add("queries", report.queries)
      .add("items", report.items)
      .add("day", report.day)
      .add("seconds", report.seconds)
      .add("lists", lists)
      .str();
}

}  // namespace ncsrec
