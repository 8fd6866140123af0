#include "train/evaluate.h"

#include <glob.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <set>
#include <sstream>

#include "core/data/hdf5_shard.h"
#include "core/data/reader.h"
#include "core/error.h"

namespace ncsrec {
namespace fs = std::filesystem;

std::vector<std::string> expand_data_paths(const std::vector<std::string>& entries, const std::string& what) {
  std::vector<std::string> files;
  std::set<std::string> seen;  // overlapping entries (a day and a pattern matching it) count once
  for (const auto& entry : entries) {
    std::vector<std::string> matches;
    glob_t g{};
    if (::glob(entry.c_str(), 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) matches.emplace_back(g.gl_pathv[i]);
    ::globfree(&g);
    if (matches.empty())
      throw UserError(what + ": '" + entry + "' matches no file or folder (run `ncsrec gen` first for generated data?)");
    for (const auto& m : matches) {
      const std::vector<std::string> found = fs::is_directory(m) ? list_day_shards(m) : std::vector<std::string>{m};
      for (const auto& f : found)
        if (seen.insert(fs::weakly_canonical(f).string()).second) files.push_back(f);
    }
  }
  return files;
}

namespace {

struct ViewSpec {
  std::string name;
  std::vector<int> tasks;       // product of these tasks' probabilities (1 or 2)
  std::vector<int> label_cols;  // product of these labels
  int filter_col = -1;          // rows where this label is 1 (-1 = all rows)
  std::vector<int> truth_cols;  // product of these truth columns (empty = no Bayes AUC)
};

std::vector<ViewSpec> make_views(const ModelConfig& m, const DataSchema& schema) {
  std::vector<ViewSpec> views;
  auto task_index = [&](const std::string& name) {
    for (size_t i = 0; i < m.tasks.size(); ++i)
      if (m.tasks[i].name == name) return static_cast<int>(i);
    return -1;
  };
  if (m.type == "three_tower") {
    // Every task scores its event over all impressions: a task given another is the product of
    // the two labels (ctr given, cvr: ctcvr), evaluated on every row.
    for (size_t t = 0; t < m.tasks.size(); ++t) {
      ViewSpec v;
      v.name = m.tasks[t].name;
      v.tasks = {static_cast<int>(t)};
      v.label_cols = {schema.task_index(m.tasks[t].label)};
      std::vector<int> truth = {schema.truth_index(m.tasks[t].label)};
      const int g = task_index(m.tasks[t].given);
      if (g >= 0) {
        v.name = joint_task_name(m.tasks[static_cast<size_t>(g)].name, m.tasks[t].name);
        v.label_cols.insert(v.label_cols.begin(), schema.task_index(m.tasks[static_cast<size_t>(g)].label));
        truth.insert(truth.begin(), schema.truth_index(m.tasks[static_cast<size_t>(g)].label));
      }
      if (std::find(truth.begin(), truth.end(), -1) == truth.end()) v.truth_cols = truth;
      views.push_back(v);
    }
    return views;
  }
  for (size_t t = 0; t < m.tasks.size(); ++t) {
    ViewSpec v;
    v.name = m.tasks[t].name;
    v.tasks = {static_cast<int>(t)};
    v.label_cols = {schema.task_index(m.tasks[t].label)};
    const int g = task_index(m.tasks[t].given);
    if (g >= 0) v.filter_col = schema.task_index(m.tasks[static_cast<size_t>(g)].label);
    const int truth = schema.truth_index(m.tasks[t].label);
    if (truth >= 0) v.truth_cols = {truth};
    views.push_back(v);
  }
  for (size_t t = 0; t < m.tasks.size(); ++t) {
    const int g = task_index(m.tasks[t].given);
    if (g < 0) continue;
    ViewSpec v;
    v.name = joint_task_name(m.tasks[static_cast<size_t>(g)].name, m.tasks[t].name);
    v.tasks = {g, static_cast<int>(t)};
    v.label_cols = {schema.task_index(m.tasks[static_cast<size_t>(g)].label), schema.task_index(m.tasks[t].label)};
    const int t1 = schema.truth_index(m.tasks[static_cast<size_t>(g)].label), t2 = schema.truth_index(m.tasks[t].label);
    if (t1 >= 0 && t2 >= 0) v.truth_cols = {t1, t2};
    views.push_back(v);
  }
  return views;
}

// Rank r read slice r of every global batch, so the global order is: batch 0 of rank 0, batch
// 0 of rank 1, ..., batch 1 of rank 0, ... A view's GlobalOrder holds every rank's count of
// values per batch (gathered once); gather_in_global_order then gives every rank all ranks'
// values in that order, the sequence one process would have seen.
struct GlobalOrder {
  size_t ranks = 1, batches = 0;
  std::vector<int64_t> counts;  // [rank * batches + batch]
};

GlobalOrder global_order(Communicator& comm, const std::vector<int64_t>& my_counts) {
  GlobalOrder o;
  o.ranks = static_cast<size_t>(comm.world_size());
  o.batches = my_counts.size();
  std::vector<int64_t> sizes;
  o.counts = all_gather_v(comm, my_counts, &sizes);
  for (size_t r = 0; r < o.ranks; ++r)
    NCSREC_CHECK(sizes[r] == static_cast<int64_t>(o.batches), "evaluation: rank " << r << " read " << sizes[r]
                                                                                   << " batches, rank " << comm.rank()
                                                                                   << " read " << o.batches);
  return o;
}

template <class T>
std::vector<T> gather_in_global_order(Communicator& comm, const GlobalOrder& order, const std::vector<T>& mine) {
  std::vector<int64_t> sizes;
  const std::vector<T> all = all_gather_v(comm, mine, &sizes);
  std::vector<size_t> at(order.ranks, 0);  // next value of each rank's segment
  for (size_t r = 1; r < order.ranks; ++r) at[r] = at[r - 1] + static_cast<size_t>(sizes[r - 1]);
  std::vector<T> out;
  out.reserve(all.size());
  for (size_t b = 0; b < order.batches; ++b)
    for (size_t r = 0; r < order.ranks; ++r) {
      const size_t c = static_cast<size_t>(order.counts[r * order.batches + b]);
      out.insert(out.end(), all.begin() + static_cast<std::ptrdiff_t>(at[r]),
                 all.begin() + static_cast<std::ptrdiff_t>(at[r] + c));
      at[r] += c;
    }
  return out;
}

}  // namespace

EvalReport evaluate(MultiTaskModel& model, const std::vector<std::string>& files, const TrainConfig& config,
                    Communicator& comm) {
  const auto start = std::chrono::steady_clock::now();
  ReaderOptions ro;
  ro.files = files;
  ro.batch_size = config.train.eval_batch_size;
  ro.rank = comm.rank();
  ro.world_size = comm.world_size();
  ro.shuffle = false;
  ro.drop_last = false;
  ro.window_rows = config.data.window_rows;
  Reader reader(ro);
  const DataSchema& schema = reader.schema();
  const std::vector<ViewSpec> views = make_views(model.config(), schema);
  const int group_col = config.data.group_meta.empty() ? -1 : schema.meta_index(config.data.group_meta);

  std::vector<TaskMetrics> metrics(views.size());
  std::vector<std::vector<int64_t>> batch_counts(views.size());  // values added per batch, per view
  std::vector<std::vector<float>> truth_scores(views.size()), truth_labels(views.size());
  std::vector<std::vector<float>> probs;
  std::vector<float> s, y, ts;
  std::vector<int64_t> groups;
  Block batch;
  EvalReport report;
  while (reader.next(batch)) {
    model.predict(batch, probs);
    report.rows += batch.rows;
    for (size_t v = 0; v < views.size(); ++v) {
      const ViewSpec& vs = views[v];
      s.clear(); y.clear(); ts.clear(); groups.clear();
      for (int64_t r = 0; r < batch.rows; ++r) {
        const size_t ri = static_cast<size_t>(r);
        if (vs.filter_col >= 0 && batch.labels[static_cast<size_t>(vs.filter_col)][ri] <= 0.5f) continue;
        float score = 1, label = 1, truth = 1;
        for (int t : vs.tasks) score *= probs[static_cast<size_t>(t)][ri];
        for (int c : vs.label_cols) label *= batch.labels[static_cast<size_t>(c)][ri] > 0.5f ? 1.0f : 0.0f;
        for (int c : vs.truth_cols) truth *= batch.truth[static_cast<size_t>(c)][ri];
        s.push_back(score);
        y.push_back(label);
        if (!vs.truth_cols.empty()) ts.push_back(truth);
        if (group_col >= 0) groups.push_back(batch.meta[static_cast<size_t>(group_col)][ri]);
      }
      batch_counts[v].push_back(static_cast<int64_t>(s.size()));
      if (s.empty()) continue;  // a view can have no rows in a batch (and a rank an empty batch)
      metrics[v].add(s.data(), y.data(), group_col >= 0 ? groups.data() : nullptr, static_cast<int64_t>(s.size()));
      truth_scores[v].insert(truth_scores[v].end(), ts.begin(), ts.end());
      truth_labels[v].insert(truth_labels[v].end(), y.begin(), y.end());
    }
  }
  // Over several ranks every rank gathers every view's values in the global order and computes
  // the metrics itself: exact AUC over the whole eval set, the same numbers one process gives.
  if (comm.world_size() > 1) {
    comm.all_reduce_sum(&report.rows, 1);
    for (size_t v = 0; v < views.size(); ++v) {
      const TaskMetrics& m = metrics[v];
      int64_t grouped = m.size() == 0 || m.has_groups() ? 1 : 0;  // a rank with no values has no say
      comm.all_reduce_sum(&grouped, 1);
      const bool with_groups = grouped == comm.world_size();
      const GlobalOrder order = global_order(comm, batch_counts[v]);
      const std::vector<float> p = gather_in_global_order(comm, order, m.probabilities());
      const std::vector<float> y = gather_in_global_order(comm, order, m.labels());
      std::vector<int64_t> g;
      if (with_groups) g = gather_in_global_order(comm, order, m.groups());
      metrics[v].clear();
      metrics[v].add(p.data(), y.data(), with_groups ? g.data() : nullptr, static_cast<int64_t>(p.size()));
      if (!views[v].truth_cols.empty()) {
        truth_scores[v] = gather_in_global_order(comm, order, truth_scores[v]);
        truth_labels[v] = gather_in_global_order(comm, order, truth_labels[v]);
      }
    }
  }
  for (size_t v = 0; v < views.size(); ++v) {
    ViewResult r;
    r.name = views[v].name;
    r.metrics = metrics[v].compute();
    r.bayes_auc = views[v].truth_cols.empty()
                      ? std::numeric_limits<double>::quiet_NaN()
                      : auc_exact(truth_scores[v].data(), truth_labels[v].data(), nullptr,
                                  static_cast<int64_t>(truth_scores[v].size()));
    report.views.push_back(r);
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

std::string format_eval_table(const EvalReport& report) {
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof line, "%-8s %10s %9s %9s %8s %8s %9s %7s\n", "task", "rows", "AUC", "Bayes", "gap", "GAUC",
                "logloss", "calib");
  os << line;
  for (const auto& v : report.views) {
    const auto& m = v.metrics;
    auto num = [](double x, int prec) {
      if (!std::isfinite(x)) return std::string("-");
      char b[32];
      std::snprintf(b, sizeof b, "%.*f", prec, x);
      return std::string(b);
    };
    std::snprintf(line, sizeof line, "%-8s %10lld %9s %9s %8s %8s %9s %7s\n", v.name.c_str(),
                  static_cast<long long>(m.count), num(m.auc, 4).c_str(), num(v.bayes_auc, 4).c_str(),
                  num(v.bayes_auc - m.auc, 4).c_str(), num(m.gauc, 4).c_str(), num(m.logloss, 4).c_str(),
                  num(m.calibration, 3).c_str());
    os << line;
  }
  return os.str();
}

}  // namespace ncsrec
