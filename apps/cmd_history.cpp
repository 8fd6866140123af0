// ncsrec history: E-CDCTR's historical embedding features from TPM snapshots (train/history.h).
#include <cstdio>
#include <string>
#include <vector>

#include "apps/args.h"
#include "apps/commands.h"
#include "core/error.h"
#include "train/history.h"

namespace ncsrec {

namespace {

const char* kHistoryHelp = R"(usage: ncsrec history --snapshot DIR [--snapshot DIR ...] --tables T1,T2 --out DIR

Builds E-CDCTR's historical embedding features (docs/ecdctr.md): for every id of the tables T1,
T2, ... its vectors in the given snapshots (newest first), for models that read them through
model.history. A snapshot is a folder with snapshot.h5 (an `ncsrec export` of the tiny
pre-training model) and _DONE; a folder without _DONE is still being written and is refused.
Writes DIR/features.h5 and DIR/_DONE (as DIR.tmp, then renamed); DIR must not exist.
)";

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const std::string part = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!part.empty()) out.push_back(part);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace

int cmd_history(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") return std::fputs(kHistoryHelp, stdout), 0;
  Args args("history", argc, argv, 2, {"snapshot", "tables", "out"}, {});
  args.no_positionals();
  const std::vector<std::string> snapshots = args.all("snapshot");
  if (snapshots.empty()) throw ConfigError("ncsrec history: --snapshot is required (see --help)");
  const std::vector<std::string> tables = split(args.required("tables"));
  if (tables.empty()) throw ConfigError("ncsrec history: --tables names no table");
  const std::string out = args.required("out");
  const HistorySummary s = build_history_features(snapshots, tables, out);
  std::string rows;
  for (size_t i = 0; i < tables.size(); ++i)
    rows += (i ? ", " : "") + tables[i] + " " + std::to_string(s.rows[i]) + " ids";
  std::printf("history features of %lld snapshot(s) (%s) to %s: %s\n", static_cast<long long>(s.k), s.version.c_str(),
              out.c_str(), rows.c_str());
  return 0;
}

}  // namespace ncsrec
