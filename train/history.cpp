// `ncsrec history` (train/history.h): merge K snapshot exports into one features file.
#include "train/history.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "core/hdf5_util.h"
#include "train/checkpoint.h"

namespace ncsrec {
namespace fs = std::filesystem;

namespace {

constexpr int64_t kHistoryFormatVersion = 1;  // models/history_features.cpp reads this version

struct SnapshotTable {
  std::string kind;
  int64_t rows = 0, dim = 0;
  std::vector<int64_t> keys;
  std::vector<float> values;  // [keys, dim]
};

std::string join(const std::vector<std::string>& v, const char* sep = ",") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

}  // namespace

HistorySummary build_history_features(const std::vector<std::string>& snapshots, const std::vector<std::string>& tables,
                                      const std::string& out_dir) {
  if (snapshots.empty()) throw UserError("history: no --snapshot given");
  if (tables.empty()) throw UserError("history: no --tables given");
  if (out_dir.empty()) throw UserError("history: --out is empty");
  if (fs::exists(out_dir))
    throw UserError("history: " + out_dir + " exists already; history features are written once (remove it, or choose "
                    "another --out)");
  h5::silence_errors();
  const auto K = static_cast<int64_t>(snapshots.size());
  HistorySummary summary;
  summary.k = K;
  std::vector<std::string> days, versions;
  std::vector<int64_t> steps;
  // snapshot k -> table -> its rows
  std::vector<std::map<std::string, SnapshotTable>> loaded(snapshots.size());
  for (size_t k = 0; k < snapshots.size(); ++k) {
    const std::string& dir = snapshots[k];
    if (!fs::is_directory(dir)) throw UserError("history: snapshot " + dir + " is not a folder");
    if (!fs::exists(dir + "/_DONE"))
      throw UserError("history: snapshot " + dir + " has no _DONE: it is still being written (or its writer failed); "
                      "use the snapshots marked done");
    const std::string path = dir + "/snapshot.h5";
    if (!fs::exists(path)) throw UserError("history: snapshot " + dir + " has no snapshot.h5 (an `ncsrec export` of the TPM)");
    const h5::File f = h5::File::open_read(path);
    if (!f.has_attr("meta", "format") || f.attr_string("meta", "format") != "ncsrec-export")
      throw UserError("history: " + path + " is not an `ncsrec export` file");
    if (f.attr_string("meta", "kind") != "full")
      throw UserError("history: " + path + " is a delta export; a snapshot is a full export");
    const std::string day = f.attr_string("meta", "day");
    const int64_t step = f.attr_int("meta", "step");
    days.push_back(day);
    steps.push_back(step);
    versions.push_back((day.empty() ? "?" : day) + "@" + std::to_string(step));
    for (const std::string& name : tables) {
      const std::string g = "tables/" + name;
      if (!f.exists(g + "/keys")) throw UserError("history: " + path + " has no table '" + name + "'");
      SnapshotTable t;
      t.kind = f.attr_string(g, "kind");
      t.rows = f.attr_int(g, "rows");
      t.dim = f.attr_int(g, "dim");
      t.keys = f.read_i64(g + "/keys");
      t.values = f.read_f32(g + "/values");
      if (t.values.size() != t.keys.size() * static_cast<size_t>(t.dim))
        throw UserError("history: " + path + ": table " + name + " has values of the wrong size for its keys");
      if (k > 0) {
        const SnapshotTable& first = loaded[0].at(name);
        if (first.kind != t.kind || first.dim != t.dim || (t.kind == "fixed" && first.rows != t.rows))
          throw UserError("history: table " + name + " is " + t.kind + " [" + std::to_string(t.rows) + ", " +
                          std::to_string(t.dim) + "] in " + path + " but " + first.kind + " [" + std::to_string(first.rows) +
                          ", " + std::to_string(first.dim) + "] in " + snapshots[0] + ": snapshots of different models");
      }
      loaded[k].emplace(name, std::move(t));
    }
  }
  summary.version = join(versions);

  const std::string tmp = out_dir + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw UserError("history: cannot create " + tmp + ": " + ec.message());
  {
    h5::File out = h5::File::create(tmp + "/features.h5");
    out.set_attr("/", "format", std::string("ncsrec-history"));
    out.set_attr("/", "format_version", kHistoryFormatVersion);
    out.set_attr("/", "k", K);
    out.set_attr("/", "version", summary.version);
    out.set_attr("/", "snapshot_dirs", join(snapshots));
    out.set_attr("/", "snapshot_days", join(days));
    out.set_attr_i64s("/", "snapshot_steps", steps);
    for (const std::string& name : tables) {
      // The union of the snapshots' keys; each snapshot's vector where it has the key.
      std::vector<int64_t> keys;
      for (const auto& snap : loaded) keys.insert(keys.end(), snap.at(name).keys.begin(), snap.at(name).keys.end());
      std::sort(keys.begin(), keys.end());
      keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
      const SnapshotTable& first = loaded[0].at(name);
      const int64_t dim = first.dim, N = static_cast<int64_t>(keys.size());
      std::vector<float> values(static_cast<size_t>(N * K * dim), 0.0f);
      std::vector<uint8_t> present(static_cast<size_t>(N * K), 0);
      for (int64_t k = 0; k < K; ++k) {
        const SnapshotTable& t = loaded[static_cast<size_t>(k)].at(name);
        for (size_t i = 0; i < t.keys.size(); ++i) {
          const auto p = static_cast<int64_t>(std::lower_bound(keys.begin(), keys.end(), t.keys[i]) - keys.begin());
          present[static_cast<size_t>(p * K + k)] = 1;
          std::copy(t.values.begin() + static_cast<int64_t>(i) * dim, t.values.begin() + static_cast<int64_t>(i + 1) * dim,
                    values.begin() + (p * K + k) * dim);
        }
      }
      const std::string g = "tables/" + name;
      out.write(g + "/keys", keys.data(), {static_cast<uint64_t>(N)});
      out.write(g + "/values", values.data(), {static_cast<uint64_t>(N), static_cast<uint64_t>(K), static_cast<uint64_t>(dim)});
      out.write(g + "/present", present.data(), {static_cast<uint64_t>(N), static_cast<uint64_t>(K)});
      out.set_attr(g, "kind", first.kind);
      out.set_attr(g, "rows", first.rows);
      out.set_attr(g, "dim", dim);
      summary.rows.push_back(N);
    }
    out.close();
  }
  fsync_path(tmp + "/features.h5", false, "history features");
  {
    std::ofstream done(tmp + "/_DONE");
    if (!done) throw UserError("history: cannot write " + tmp + "/_DONE");
  }
  fsync_path(tmp + "/_DONE", false, "history features");
  fsync_path(tmp, true, "history features");
  fs::rename(tmp, out_dir, ec);
  if (ec) throw UserError("history: cannot rename " + tmp + " to " + out_dir + ": " + ec.message());
  const fs::path parent = fs::absolute(out_dir).parent_path();
  fsync_path(parent.string(), true, "history features");
  return summary;
}

}  // namespace ncsrec
