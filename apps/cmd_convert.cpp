// `ncsrec convert`: CSV/TSV (gzip or plain) -> HDF5 shards under a schema YAML. The work is in
// core/data/convert.*; this file parses the arguments, shows progress on a terminal and prints
// the summary.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "apps/args.h"
#include "apps/commands.h"
#include "core/data/convert.h"
#include "core/error.h"

namespace ncsrec {
namespace {

const char* kConvertHelp = R"(usage: ncsrec convert --schema FILE --out DIR [--policy fail|skip] [--rejects FILE] INPUT...

Converts delimited text (CSV, TSV, Ali-CCP key:value lines; gzip or plain) into the HDF5
training shards of docs/data-format.md, as the schema FILE says (docs/data.md explains every
key; configs/data/ has schemas for UCI Census-Income KDD, Ali-CCP and Criteo).

Writes DIR/part-NNNN.h5, or DIR/<part>/part-NNNN.h5 per part of the schema's split, a _DONE
marker in each folder (last), and DIR/stats.yaml (the dense columns and their statistics).
DIR must be empty or absent. Several INPUT files are read in order as one input.

  --schema FILE     the schema YAML (required)
  --out DIR         the output folder (required)
  --policy P        what a bad row does: fail (default: stop, naming file, line, column and
                    value) or skip (set it aside, count it, keep going)
  --rejects FILE    skip: where bad rows go, verbatim (default DIR/rejects.txt); the reason
                    for each is in FILE.log
  --chunk-mb N      text handed to the parser threads at once (default 4)

Exit status: 0 done, 2 schema or usage error, 1 data error.
)";

}  // namespace

int cmd_convert(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") return std::fputs(kConvertHelp, stdout), 0;
  Args args("convert", argc, argv, 2, {"schema", "out", "policy", "rejects", "chunk-mb"}, {});
  ConvertOptions options;
  const ConvertSchema schema = load_convert_schema(args.required("schema"));
  options.out_dir = args.required("out");
  options.inputs = args.positionals();
  if (options.inputs.empty()) throw ConfigError("ncsrec convert: give at least one INPUT file (see --help)");
  const std::string policy = args.get("policy", "fail");
  if (policy != "fail" && policy != "skip")
    throw ConfigError("ncsrec convert: --policy must be fail or skip, got '" + policy + "'");
  options.policy = policy == "skip" ? BadRowPolicy::skip : BadRowPolicy::fail;
  options.rejects_path = args.get("rejects");
  if (!options.rejects_path.empty() && options.policy != BadRowPolicy::skip)
    throw ConfigError("ncsrec convert: --rejects goes with --policy skip");
  const int64_t chunk_mb = args.get_int("chunk-mb", 4);
  if (chunk_mb < 1 || chunk_mb > 1024) throw ConfigError("ncsrec convert: --chunk-mb must be in [1, 1024]");
  options.chunk_bytes = static_cast<size_t>(chunk_mb) << 20;

  const bool tty = ::isatty(STDERR_FILENO);
  auto last = std::chrono::steady_clock::now();
  if (tty) {
    options.progress = [&](const ConvertProgress& p) {
      const auto now = std::chrono::steady_clock::now();
      if (std::chrono::duration<double>(now - last).count() < 0.25) return;
      last = now;
      std::fprintf(stderr, "\r\033[Kconvert: pass %d/%d: %lld rows, %.0f rows/s (%s)", p.pass, p.passes,
                   static_cast<long long>(p.rows), p.seconds > 0 ? p.rows / p.seconds : 0.0, p.file.c_str());
    };
  }
  ConvertSummary summary;
  try {
    summary = convert(schema, options);
  } catch (...) {
    if (tty) std::fprintf(stderr, "\r\033[K");
    throw;
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  std::fputs(format_convert_summary(summary).c_str(), stdout);
  return 0;
}

}  // namespace ncsrec
