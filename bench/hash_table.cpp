// Benchmark (not a test): the time of one sparse training step of an embedding table does not
// grow with the table's size.
//
//   ncsrec_bench_hash [--rows 1000000,30000000] [--dim 16] [--batch 4096] [--steps 100]
//                     [--new 0.05] [--threads 2] [--ids spread|same]
//
// For each size N: a hash table prefilled with N ids (and, beside it, a fixed table of N rows),
// then --steps timed steps of what `ncsrec train` does to a table: a training lookup of --batch
// ids (uniform over the N ids with --ids spread, the default; with --ids same, uniform over the
// smallest size's ids, so every table gets the same batches and only its size differs; a
// fraction --new of them ids never seen, which are inserted),
// sum pooling, the backward segment sum, the gradient reduced to the table's rows, a sparse
// Adagrad update and updated_step. Reported: the median ms/step per size and table kind, and
// the ratio of the largest size to the smallest (1.0 = no growth). Memory: about
// N · (8 · dim + 40) bytes per table, plus the hash index (16 bytes per slot, at most half full).
// Results go to docs/results/hash_tables.md.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/layers/embedding_bag.h"
#include "core/random.h"
#include "embedding/sharded_table.h"

namespace ncsrec {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<int64_t> rows = {1000000, 30000000};
  int64_t dim = 16, batch = 4096, steps = 100;
  double fresh = 0.05;
  int threads = 2;
  bool same_ids = false;  // --ids same: batches drawn from the smallest size's ids for every size
};

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> out;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    out.push_back(std::strtoll(p, &end, 10));
    p = *end == ',' ? end + 1 : end;
    if (end == p && *p) break;
  }
  return out;
}

// Median ms of `steps` steps on `table` of n ids (after 10 untimed ones), reading ids below `draw`.
double time_steps(ShardedTable& table, const Options& o, int64_t n, int64_t draw, uint64_t seed) {
  OptimizerConfig c;
  c.type = "adagrad";
  c.lr = 0.05;
  auto adagrad = make_sparse_optimizer(c, table.shard());
  Rng rng(seed);
  std::vector<int64_t> ids(static_cast<size_t>(o.batch)), offsets(static_cast<size_t>(o.batch) + 1);
  for (int64_t r = 0; r <= o.batch; ++r) offsets[static_cast<size_t>(r)] = r;
  Tensor pooled = Tensor::empty({o.batch, o.dim}, DType::F32), dout = Tensor::empty({o.batch, o.dim}, DType::F32);
  for (int64_t i = 0; i < dout.numel(); ++i) dout.data<float>()[i] = static_cast<float>(rng.normal());
  std::vector<double> ms;
  int64_t next_new = n + 1;
  for (int64_t s = 0; s < o.steps + 10; ++s) {
    for (auto& id : ids)
      id = rng.uniform(0, 1) < o.fresh && table.hashed() ? next_new++ : static_cast<int64_t>(rng.below(static_cast<uint64_t>(draw)));
    const auto t0 = Clock::now();
    ShardedTable::Lookup lookup;
    table.lookup({{ids.data(), o.batch}}, nullptr, &lookup, true);
    embedding_bag_forward(pooled, 0, lookup.values, offsets.data(), lookup.ids[0].data(), o.batch, Pooling::Sum);
    const SparseGrad local = embedding_bag_backward(dout, {{offsets.data(), lookup.ids[0].data(), 0, Pooling::Sum}},
                                                    o.batch, lookup.values.dim(0), o.dim);
    const SparseGrad grad = table.reduce_gradient(lookup, local, nullptr);
    adagrad->step(table.shard(), grad);
    for (int64_t row : grad.rows) table.shard().updated_step()[static_cast<size_t>(row)] = s + 1;
    const double elapsed = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (s >= 10) ms.push_back(elapsed);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int run(const Options& o) {
  omp_set_num_threads(o.threads);
  // In the order the sizes were given, which may be either.
  const auto smallest_at = static_cast<size_t>(std::min_element(o.rows.begin(), o.rows.end()) - o.rows.begin());
  const auto largest_at = static_cast<size_t>(std::max_element(o.rows.begin(), o.rows.end()) - o.rows.begin());
  const int64_t smallest = o.rows[smallest_at];
  std::printf("sparse step of one table: batch %lld, dim %lld, f32, Adagrad, %.0f%% new ids (hash), %d thread(s), "
              "ids uniform over %s\n",
              static_cast<long long>(o.batch), static_cast<long long>(o.dim), 100 * o.fresh, o.threads,
              o.same_ids ? ("the first " + std::to_string(smallest) + " of every table").c_str() : "each table's rows");
  std::printf("%12s  %14s  %14s\n", "rows", "hash ms/step", "fixed ms/step");
  std::vector<double> hash_ms, fixed_ms;
  for (int64_t n : o.rows) {
    double h = 0, f = 0;
    {
      HashOptions opt;
      opt.capacity = n + o.batch * (o.steps + 10);
      ShardedTable table("bench", 0, o.dim, DType::F32, 1, 0.01, Placement::RowWise, 0, 0, 1, &opt);
      std::vector<int64_t> chunk;
      for (int64_t id = 0; id < n; ++id) {
        chunk.push_back(id);
        if (static_cast<int64_t>(chunk.size()) == (1 << 20) || id + 1 == n) {
          table.insert_owned(chunk);
          chunk.clear();
        }
      }
      h = time_steps(table, o, n, o.same_ids ? smallest : n, 7);
    }
    {
      ShardedTable table("bench", n, o.dim, DType::F32, 1, 0.01, Placement::RowWise, 0, 0, 1);
      f = time_steps(table, o, n, o.same_ids ? smallest : n, 7);
    }
    hash_ms.push_back(h);
    fixed_ms.push_back(f);
    std::printf("%12lld  %14.3f  %14.3f\n", static_cast<long long>(n), h, f);
    std::fflush(stdout);
  }
  std::printf("largest / smallest: hash %.2f, fixed %.2f\n", hash_ms[largest_at] / hash_ms[smallest_at],
              fixed_ms[largest_at] / fixed_ms[smallest_at]);
  return 0;
}

}  // namespace
}  // namespace ncsrec

int main(int argc, char** argv) {
  ncsrec::Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (!v) {
      std::fprintf(stderr, "%s needs a value (see the comment at the top of bench/hash_table.cpp)\n", a.c_str());
      return 2;
    }
    ++i;
    if (a == "--rows") o.rows = ncsrec::parse_list(v);
    else if (a == "--dim") o.dim = std::atoll(v);
    else if (a == "--batch") o.batch = std::atoll(v);
    else if (a == "--steps") o.steps = std::atoll(v);
    else if (a == "--new") o.fresh = std::atof(v);
    else if (a == "--threads") o.threads = std::atoi(v);
    else if (a == "--ids" && (std::string(v) == "spread" || std::string(v) == "same")) o.same_ids = std::string(v) == "same";
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (o.rows.empty() || o.dim <= 0 || o.batch <= 0 || o.steps <= 0) {
    std::fprintf(stderr, "bad options\n");
    return 2;
  }
  return ncsrec::run(o);
}
