// The `ncsrec` command: parses arguments and calls train/. User errors are caught here, once,
// and printed without a stack trace: exit 2 for configuration and usage errors, 1 for other
// user errors (data, paths, checkpoints), 3 for internal errors (bugs: please report them).
#include <unistd.h>

#include <cstdlib>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "apps/args.h"
#include "apps/commands.h"
#include "core/data/hdf5_shard.h"
#include "core/data/reader.h"
#include "core/data/synthetic.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/hdf5_util.h"
#include "core/masks.h"
#include "core/launcher.h"
#include "dist/communicator.h"
#ifdef NCSREC_HAVE_NCCL
#include "dist/nccl_communicator.h"
#endif
#include "train/checkpoint.h"
#include "train/retrieval_eval.h"
#include "core/blas_core.h"
#include "train/evaluate.h"
#include "train/json.h"
#include "train/step.h"
#include "train/trainer.h"

namespace ncsrec {
namespace {
namespace fs = std::filesystem;

const char* kUsage = R"(usage: ncsrec <command> [options]

Trains multi-task CTR/CVR ranking models (single-task, shared-bottom, ESMM) on HDF5 data.

commands:
  train     train a model from a YAML config; writes a run folder
  eval      evaluate a trained run or checkpoint on its eval data (or --data)
  predict   write per-task probabilities of a checkpoint for a data set
  export    write the serving view of a checkpoint to one HDF5 file (docs/export.md)
  history   E-CDCTR's historical embedding features from snapshots of a pre-trained model (docs/ecdctr.md)
  gen       generate the built-in synthetic data set (true probabilities included)
  convert   turn CSV/TSV logs (gzip or plain) into HDF5 shards under a schema (docs/data.md)
  inspect   describe a data shard, a day folder, a checkpoint or a mask file
  bench     training-step speed (samples/s) of an NCS model on in-memory batches

`ncsrec <command> --help` describes each command. Docs: README.md and docs/.
)";

const char* kTrainHelp = R"(usage: ncsrec train --config FILE [--set key.path=value ...] [--run-dir DIR]
       ncsrec train --resume --run-dir DIR [--set key.path=value ...]

Trains the model described by FILE (see docs/config.md). Writes into the run folder
(default runs/<config name>-<timestamp>): config.yaml (as run), metrics.jsonl, summary.json
and checkpoints/final (and checkpoints/step-<N> with train.checkpoint_every). Prints per-task
AUC beside the Bayes-optimal AUC when the data came from `ncsrec gen`.

  --config FILE          the YAML config (required unless --resume)
  --set key.path=value   override a config key (repeatable), e.g. --set train.epochs=2
  --run-dir DIR          the run folder
  --init-from CKPT       start from checkpoint CKPT (same as --set init.from=CKPT): its
                         weights, optimizer state and masks, by parameter name (docs/daily.md)
  --day YYYY-MM-DD       the day this run trains on: replaces {day}, {prev_day} and {next_day}
                         in the data paths, and is recorded in the checkpoints
  --resume               continue the run in DIR from its newest checkpoint, with its
                         config.yaml; --set may change only train.max_steps, train.epochs,
                         train.log_every, train.checkpoint_every, train.keep_checkpoints,
                         run.threads, run.comm_timeout, run.device, run.matmul,
                         run.dense_comm, run.masked_route, run.bucket_mb and data.eval
                         (checkpoints are the same on every device)

SIGTERM or SIGUSR1 stops training at the next step on every rank, saves
checkpoints/step-<N> and exits with status 75; `--resume` goes on from there.
)";

const char* kEvalHelp = R"(usage: ncsrec eval (--run-dir DIR | --checkpoint DIR) [--data PATH ...] [--out FILE] [--sparse]
       ncsrec eval (--run-dir DIR | --checkpoint DIR) --retrieval GENERATOR_H5 [--queries N]
                   [--data DAY] [--out FILE] [--export FILE]

Evaluates a checkpoint (default: DIR/checkpoints/final) on the eval data of its config,
or on --data (day folders, shard files or glob patterns). Prints the results table and
writes it as JSON to --out (default: <run dir>/eval.json when --run-dir is given).
--sparse runs the masked layers of an ncs model as CSR products of each task's W ⊙ M.

--retrieval (three_tower models on generated data): recall@K and NDCG@K (K = 10, 50, 200)
of the model's top K among every item of the eval day against the true top K, for click
and conversion relevance computed from GENERATOR_H5 (the generator.h5 beside the data),
over --queries requests (default 2000: the first row of each distinct user of the eval
day). JSON goes to --out (default: <run dir>/retrieval.json). --export FILE writes the
serving form: items/index (the vectors to put in a nearest-neighbour index), items/<task>,
items/id, and the requests' user vectors queries/vector (docs/dmmp.md).
)";

const char* kPredictHelp = R"(usage: ncsrec predict (--run-dir DIR | --checkpoint DIR) --data PATH [--data PATH ...] --out FILE [--sparse]

Writes one CSV line per row of the data, in file order: row index, then the probability
of every task (ESMM: pCTR, pCVR, and pCTCVR). --sparse: as for eval.
)";

const char* kGenHelp = R"(usage: ncsrec gen --out DIR [--seed N] [--conflict C] [--days N] [--rows-per-day N]
                  [--users N] [--items N] [--ads-fraction F] [--shard-rows N]

Generates the built-in synthetic data set (docs/generator.md): DIR/content/day=*/ and
DIR/ads/day=*/ with click and conversion labels, the true probabilities (truth/*) and the
generator's parameters (DIR/generator.h5). Unset options take the frozen defaults.
)";

const char* kInspectHelp = R"(usage: ncsrec inspect PATH

PATH is a data shard (.h5), a day folder, a checkpoint folder or a mask file (masks/*.h5 of
an IMP run). Prints its schema and size, or the checkpoint's metadata, masks and tensors. For
masks: per layer, each task's density and the split of connections into shared (in every
task's mask), task-private and dead.
)";

bool wants_help(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") return true;
  return false;
}

void print_help(const char* text) { std::fputs(text, stdout); }

std::string default_run_dir(const std::string& config_path) {
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  return "runs/" + fs::path(config_path).stem().string() + "-" + stamp;
}

// A date YYYY-MM-DD moved by `days`; "" when `day` is not such a date.
std::string shift_day(const std::string& day, int days) {
  std::tm tm{};
  if (day.size() != 10 || !strptime(day.c_str(), "%Y-%m-%d", &tm)) return "";
  tm.tm_hour = 12;  // away from midnight: no DST edge
  std::time_t t = timegm(&tm) + static_cast<std::time_t>(days) * 86400;
  std::tm out{};
  gmtime_r(&t, &out);
  char b[16];
  std::strftime(b, sizeof b, "%Y-%m-%d", &out);
  return std::string(b) == day || days != 0 ? std::string(b) : "";
}

// `text` with {day}, {prev_day} and {next_day} replaced for `day`.
std::string substitute_day(std::string text, const std::string& day, const std::string& config_path) {
  if (day.empty())
    throw ConfigError(config_path + ": the data paths use {day}, {prev_day} or {next_day}: give --day YYYY-MM-DD");
  if (shift_day(day, 0) != day)
    throw ConfigError("train --day " + day + ": expected a date YYYY-MM-DD");
  for (const auto& [key, value] :
       {std::pair<std::string, std::string>{"{day}", day}, {"{prev_day}", shift_day(day, -1)}, {"{next_day}", shift_day(day, 1)}})
    for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + value.size()))
      text.replace(at, key.size(), value);
  return text;
}

// sysexits.h EX_TEMPFAIL: not finished, try again (with --resume).
constexpr int kExitPreempted = 75;

// The communicator that sums a GPU model's dense gradient across ranks (run.dense_comm): NCCL on
// the device's buffers, or none (the host communicator, through host memory). Collective over
// `comm`: every rank reads the same config and the same world size, so all choose alike.
std::unique_ptr<Communicator> make_dense_communicator(const TrainConfig& config, Communicator& comm,
                                                      const CommOptions& options) {
  if (config.dense_comm == "host" || comm.world_size() == 1) return nullptr;
  // Every rank takes part in the choice: with run.device auto a rank without a GPU trains on its
  // CPU, and then every rank sums over the host communicator.
  int64_t on_gpu = training_device(config) == Device::CUDA ? 1 : 0;
  comm.all_reduce_sum(&on_gpu, 1);
  if (on_gpu == 0) return nullptr;
  if (on_gpu < comm.world_size()) {
    const std::string what = std::to_string(on_gpu) + " of the " + std::to_string(comm.world_size()) +
                             " ranks train on a GPU";
    if (config.dense_comm == "nccl") throw ConfigError("run.dense_comm is nccl but only " + what);
    if (comm.rank() == 0)
      std::fprintf(stderr, "note: %s: the dense gradient is summed over %s through host memory\n", what.c_str(),
                   comm.kind());
    return nullptr;
  }
#ifdef NCSREC_HAVE_NCCL
  // NCCL needs a GPU of its own for every rank: ranks of one node sharing a GPU (more ranks than
  // GPUs) sum over the host communicator instead (auto), or are refused (nccl).
  // Every rank contributes to the gather, also one that cannot name its GPU or its host (-1):
  // then every rank throws after it, instead of the others waiting for it.
  int64_t mine = -1;
  std::string why_not;
  char host[256] = {};
  try {
    if (gethostname(host, sizeof(host) - 1) != 0) throw UserError("gethostname failed");
    mine = static_cast<int64_t>(std::hash<std::string>{}(host) & 0xffffffffffff) * 4096 + nccl_device_for_this_rank();
  } catch (const UserError& e) {
    why_not = e.what();
  }
  std::vector<int64_t> all(static_cast<size_t>(comm.world_size()));
  comm.all_gather(&mine, 1, all.data(), DType::I64);
  std::sort(all.begin(), all.end());
  if (all.front() < 0)
    throw UserError("run.dense_comm: a rank cannot tell its host and GPU for NCCL" +
                    (why_not.empty() ? std::string() : " (here: " + why_not + ")") +
                    "; set run.dense_comm: host to sum the dense gradient over " + comm.kind());
  if (std::adjacent_find(all.begin(), all.end()) != all.end()) {
    const std::string what = "ranks of one node share a GPU (more ranks than GPUs), and NCCL needs a GPU per rank";
    if (config.dense_comm == "nccl") throw ConfigError("run.dense_comm is nccl but " + what + "; set run.dense_comm: auto or host");
    if (comm.rank() == 0)
      std::fprintf(stderr, "note: %s: the dense gradient is summed over %s through host memory\n", what.c_str(),
                   comm.kind());
    return nullptr;
  }
  try {
    return make_nccl_communicator(comm, options);
  } catch (const UserError& e) {
    throw UserError(std::string(e.what()) + "\n  (run.dense_comm: host sums the dense gradient through host "
                    "memory over " + comm.kind() + " instead)");
  }
#else
  (void)options;
  if (config.dense_comm == "nccl")
    throw ConfigError("run.dense_comm is nccl but this ncsrec was built without NCCL; set run.dense_comm: host "
                      "(or auto)");
  return nullptr;
#endif
}

int cmd_train(int argc, char** argv) {
  if (wants_help(argc, argv)) return print_help(kTrainHelp), 0;
  catch_stop_signals();
  Args args("train", argc, argv, 2, {"config", "set", "run-dir", "init-from", "day"}, {"resume"});
  args.no_positionals();
  TrainOptions options;
  options.resume = args.has("resume");
  std::string config_path, run_dir;
  if (options.resume) {
    if (!args.has("run-dir")) throw ConfigError("train --resume: give --run-dir DIR, the run to continue");
    if (args.has("config"))
      throw ConfigError("train --resume continues with the run's own config.yaml; drop --config (change what may "
                        "change with --set)");
    run_dir = args.get("run-dir");
    config_path = run_dir + "/config.yaml";
    if (!fs::is_regular_file(config_path))
      throw ConfigError("train --resume: " + config_path + " does not exist: is " + run_dir + " a run folder?");
    // Keys that do not change what the saved state means (docs/checkpoints.md).
    static const std::vector<std::string> kMayChange = {"train.max_steps",        "train.epochs",
                                                        "train.log_every",        "train.checkpoint_every",
                                                        "train.keep_checkpoints", "run.threads",
                                                        "run.comm_timeout",       "run.device",
                                                        "run.matmul",             "run.dense_comm",
                                                        "run.masked_route",       "run.bucket_mb",
                                                        "data.eval"};
    for (const std::string& o : args.all("set")) {
      const std::string key = o.substr(0, o.find('='));
      if (std::find(kMayChange.begin(), kMayChange.end(), key) == kMayChange.end()) {
        std::string list;
        for (size_t i = 0; i < kMayChange.size(); ++i)
          list += (i == 0 ? "" : i + 1 == kMayChange.size() ? " and " : ", ") + kMayChange[i];
        throw ConfigError("train --resume: --set " + key + ": a resumed run keeps its config; only " + list +
                          " may change");
      }
    }
    if (args.has("init-from") || args.has("day"))
      throw ConfigError("train --resume: --init-from and --day belong to the run's start; a resumed run keeps them");
  } else {
    config_path = args.required("config");
  }
  std::vector<std::string> overrides = args.all("set");
  if (args.has("init-from")) overrides.push_back("init.from=\"" + args.get("init-from") + "\"");
  std::string resolved;
  TrainConfig config = load_train_config(config_path, overrides, &resolved);
  options.day = args.get("day", "");
  if (!options.day.empty() || resolved.find("{day}") != std::string::npos ||
      resolved.find("{prev_day}") != std::string::npos || resolved.find("{next_day}") != std::string::npos) {
    resolved = substitute_day(resolved, options.day, config_path);
    config = parse_train_config(resolved, config_path);
  }
  select_device(config.device, config.matmul, config.masked_route, "run.device is cuda", "; set run.device: cpu (or auto)");
  if (!options.resume) run_dir = args.get("run-dir", default_run_dir(config_path));
  CommOptions comm_options;
  comm_options.timeout_seconds = config.comm_timeout;
  auto comm = make_default_communicator(comm_options);
  const std::unique_ptr<Communicator> dense_comm = make_dense_communicator(config, *comm, comm_options);
  options.dense_comm = dense_comm.get();
  if (comm->rank() == 0) {
    std::fprintf(stderr, "run folder: %s\n", run_dir.c_str());
    if (comm->world_size() > 1)
      std::fprintf(stderr, "%d ranks (%s), a global batch of %d x %lld\n", comm->world_size(), comm->kind(),
                   comm->world_size(), static_cast<long long>(config.train.batch_size));
  }
  const TrainSummary s = run_training(config, resolved, run_dir, *comm, options);
  if (s.preempted) {
    if (comm->rank() == 0)
      std::fprintf(stderr, "preempted at step %lld: saved %s; continue with: ncsrec train --resume --run-dir %s\n",
                   static_cast<long long>(s.steps), s.checkpoint.c_str(), run_dir.c_str());
    return kExitPreempted;
  }
  if (comm->rank() != 0) return 0;  // rank 0 speaks for the job
  const std::string threads = config.threads > 0 ? std::to_string(config.threads) + " threads" : "default threads";
  const int64_t from = s.resumed_from_step >= 0 ? s.resumed_from_step : s.first_step;
  const std::string steps = from > 0 ? "steps " + std::to_string(from + 1) + "-" + std::to_string(s.steps) +
                                           (s.resumed_from_step >= 0 ? " (resumed)" : " (after the init checkpoint's)")
                                     : std::to_string(s.steps) + " steps";
  std::printf("\ntrained %s, %lld samples in %.1f s: %.0f samples/s (training loop, %s)\n", steps.c_str(),
              static_cast<long long>(s.samples), s.train_seconds, s.samples_per_second, threads.c_str());
  if (s.eval.rows > 0) {
    std::printf("eval on %lld rows (%.1f s):\n%s", static_cast<long long>(s.eval.rows), s.eval.seconds,
                format_eval_table(s.eval).c_str());
  }
  std::printf("run folder: %s (summary.json, metrics.jsonl, checkpoints/final)\n", run_dir.c_str());
  return 0;
}

struct LoadedRun {
  TrainConfig config;
  std::unique_ptr<MultiTaskModel> model;
  CheckpointMeta meta;
};

LoadedRun load_run(const Args& args, const std::vector<std::string>& data_files) {
  std::string checkpoint = args.get("checkpoint");
  if (checkpoint.empty()) {
    if (!args.has("run-dir")) throw ConfigError("give --run-dir DIR or --checkpoint DIR (see --help)");
    checkpoint = args.get("run-dir") + "/checkpoints/final";
  }
  LoadedRun run;
  int64_t rows = 0;
  const DataSchema schema = read_shard_schema(data_files.at(0), &rows);
  // The run evaluates where it trained when this machine can: with run.device cuda or auto, on
  // a GPU if one is here and the model runs there, else on the CPU (a checkpoint is the same on
  // every device, so a GPU-trained one evaluates on a machine without a GPU). --sparse (CSR
  // layers) runs where the model does: on a GPU through cuSPARSE (cuda/sparse.h).
  TrainConfig saved = parse_train_config(read_checkpoint_meta(checkpoint).config_yaml, checkpoint + " (saved config)");
  Device device = Device::CPU;
  if (saved.device != "cpu") {
    const std::string trained_on = saved.device;
    saved.device = "auto";
    select_device(saved.device, saved.matmul, saved.masked_route, "", "");
    device = training_device(saved);
    if (device != Device::CPU)
      std::fprintf(stderr, "the dense layers run on the GPU (the run's run.device: %s)\n", trained_on.c_str());
  }
  run.model = load_model(checkpoint, schema, nullptr, &run.config, &run.meta, device);
  configure_threads(run.config.threads);
  if (args.has("sparse")) run.model->enable_sparse_inference();
  return run;
}

int cmd_eval(int argc, char** argv) {
  if (wants_help(argc, argv)) return print_help(kEvalHelp), 0;
  Args args("eval", argc, argv, 2, {"run-dir", "checkpoint", "data", "out", "retrieval", "queries", "export"}, {"sparse"});
  args.no_positionals();
  std::vector<std::string> entries = args.all("data");
  if (entries.empty()) {
    const std::string ckpt = args.has("checkpoint") ? args.get("checkpoint") : args.get("run-dir") + "/checkpoints/final";
    if (!args.has("checkpoint") && !args.has("run-dir")) throw ConfigError("give --run-dir DIR or --checkpoint DIR");
    const CheckpointMeta meta = read_checkpoint_meta(ckpt);
    entries = parse_train_config(meta.config_yaml, ckpt).data.eval;
    if (entries.empty()) throw ConfigError("the run's config has no data.eval: give --data PATH");
  }
  const std::vector<std::string> files = expand_data_paths(entries, "--data");
  LoadedRun run = load_run(args, files);
  if (args.has("retrieval")) {
    RetrievalOptions options;
    options.generator = args.get("retrieval");
    if (args.has("queries")) {
      const std::string q = args.get("queries");
      char* end = nullptr;
      options.queries = std::strtoll(q.c_str(), &end, 10);
      if (q.empty() || *end != '\0' || options.queries < 1)
        throw ConfigError("--queries: expected a positive integer, got '" + q + "'");
    }
    options.export_path = args.get("export", "");
    const RetrievalReport report = evaluate_retrieval(*run.model, files, options);
    std::printf("retrieval on day %s: %lld requests x %lld items (%.1f s), checkpoint at step %lld:\n%s",
                report.day.c_str(), static_cast<long long>(report.queries), static_cast<long long>(report.items),
                report.seconds, static_cast<long long>(run.meta.step), format_retrieval_table(report).c_str());
    const std::string out = args.get("out", args.has("run-dir") ? args.get("run-dir") + "/retrieval.json" : "");
    if (!out.empty()) {
      std::ofstream f(out);
      f << retrieval_json(report) << "\n";
      if (!f) throw UserError("cannot write " + out);
    }
    if (!options.export_path.empty()) std::printf("serving form written to %s\n", options.export_path.c_str());
    return 0;
  }
  if (args.has("queries") || args.has("export")) throw ConfigError("--queries and --export go with --retrieval");
  auto comm = make_local_communicator();
  const EvalReport report = evaluate(*run.model, files, run.config, *comm);
  std::printf("eval on %lld rows (%.1f s), checkpoint at step %lld:\n%s", static_cast<long long>(report.rows),
              report.seconds, static_cast<long long>(run.meta.step), format_eval_table(report).c_str());
  std::string out = args.get("out", args.has("run-dir") ? args.get("run-dir") + "/eval.json" : "");
  if (!out.empty()) {
    JsonObject views;
    for (const auto& v : report.views)
      views.add(v.name, JsonObject().add("count", v.metrics.count).add("auc", v.metrics.auc)
                            .add("bayes_auc", v.bayes_auc).add("gauc", v.metrics.gauc)
                            .add("logloss", v.metrics.logloss).add("calibration", v.metrics.calibration));
    std::ofstream f(out);
    f << JsonObject().add("rows", report.rows).add("step", run.meta.step).add("eval", views).str() << "\n";
    if (!f) throw UserError("cannot write " + out);
  }
  return 0;
}

int cmd_predict(int argc, char** argv) {
  if (wants_help(argc, argv)) return print_help(kPredictHelp), 0;
  Args args("predict", argc, argv, 2, {"run-dir", "checkpoint", "data", "out"}, {"sparse"});
  args.no_positionals();
  const std::vector<std::string> entries = args.all("data");
  if (entries.empty()) throw ConfigError("ncsrec predict: --data is required (see --help)");
  const std::string out = args.required("out");
  const std::vector<std::string> files = expand_data_paths(entries, "--data");
  LoadedRun run = load_run(args, files);
  ReaderOptions ro;
  ro.files = files;
  ro.batch_size = run.config.train.eval_batch_size;
  ro.shuffle = false;
  ro.drop_last = false;
  Reader reader(ro);
  const std::string tmp = out + ".tmp";
  std::ofstream f(tmp);
  if (!f) throw UserError("cannot write " + tmp);
  f << "row";
  for (const auto& t : run.config.model.tasks) f << ",p_" << t.name;
  const bool esmm = run.config.model.esmm;
  if (esmm) f << ",p_ctcvr";
  f << "\n";
  Block batch;
  std::vector<std::vector<float>> probs;
  int64_t row = 0;
  char buf[32];
  while (reader.next(batch)) {
    run.model->predict(batch, probs);
    for (int64_t r = 0; r < batch.rows; ++r, ++row) {
      f << row;
      for (const auto& p : probs) {
        std::snprintf(buf, sizeof buf, ",%.7g", p[static_cast<size_t>(r)]);
        f << buf;
      }
      if (esmm) {
        std::snprintf(buf, sizeof buf, ",%.7g", probs[0][static_cast<size_t>(r)] * probs[1][static_cast<size_t>(r)]);
        f << buf;
      }
      f << "\n";
    }
  }
  f.close();
  if (!f) throw UserError("cannot write " + tmp + " (disk full?)");
  fs::rename(tmp, out);
  std::printf("wrote %lld rows to %s\n", static_cast<long long>(row), out.c_str());
  return 0;
}

int cmd_gen(int argc, char** argv) {
  if (wants_help(argc, argv)) return print_help(kGenHelp), 0;
  Args args("gen", argc, argv, 2,
            {"out", "seed", "conflict", "days", "rows-per-day", "users", "items", "ads-fraction", "shard-rows"}, {});
  GeneratorConfig c;
  const std::string out = args.required("out");
  c.seed = static_cast<uint64_t>(args.get_int("seed", static_cast<int64_t>(c.seed)));
  c.conflict = args.get_double("conflict", c.conflict);
  if (!(c.conflict >= 0 && c.conflict <= 1)) throw ConfigError("ncsrec gen: --conflict must be in [0, 1]");
  c.days = static_cast<int>(args.get_int("days", 0));
  c.rows_per_day = args.get_int("rows-per-day", 0);
  c.users = args.get_int("users", 0);
  c.items = args.get_int("items", 0);
  c.ads_fraction = args.get_double("ads-fraction", 0);
  c.shard_rows = args.get_int("shard-rows", 0);
  if (c.days < 0 || c.rows_per_day < 0 || c.users < 0 || c.items < 0 || c.shard_rows < 0 || c.ads_fraction < 0)
    throw ConfigError("ncsrec gen: sizes must be positive (0 or absent = the default)");
  const bool tty = ::isatty(STDERR_FILENO);
  const auto start = std::chrono::steady_clock::now();
  const GeneratorSummary s = generate_dataset(c, out, [&](int64_t done, int64_t total) {
    if (tty) std::fprintf(stderr, "\r\033[Kgen: %lld / %lld rows", static_cast<long long>(done), static_cast<long long>(total));
  });
  if (tty) std::fprintf(stderr, "\r\033[K");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("generated %lld rows in %.1f s into %s: CTR %.4f, CVR given click %.4f\n", static_cast<long long>(s.rows),
              secs, out.c_str(), s.ctr, s.cvr_given_click);
  return 0;
}

// Per masked layer: each task's density, and the split of the layer's connections into
// shared (in every task's mask), task-private (in some but not all) and dead (in none).
void print_masks(const h5::File& f) {
  const std::vector<std::string> tasks = f.list("mask");
  if (tasks.empty()) return;
  std::printf("  masks (%zu tasks):\n", tasks.size());
  for (const auto& layer : f.list("mask/" + tasks[0])) {
    std::vector<BitMask> masks;
    std::string densities;
    for (const auto& task : tasks) {
      const std::string name = "mask/" + task + "/" + layer;
      BitMask m;
      m.rows = f.attr_int(name, "rows");
      m.cols = f.attr_int(name, "cols");
      m.bits = f.read_u8(name);
      if (m.bits.size() != static_cast<size_t>((m.size() + 7) / 8))
        throw UserError(f.path() + ": " + name + " has the wrong number of bytes for its shape");
      char b[64];
      std::snprintf(b, sizeof b, "%s%s %.2f%%", densities.empty() ? "" : ", ", task.c_str(), 100 * m.density());
      densities += b;
      masks.push_back(std::move(m));
    }
    std::vector<const BitMask*> ptrs;
    for (const auto& m : masks) ptrs.push_back(&m);
    const MaskSplit split = split_connections(ptrs);
    const double n = static_cast<double>(masks[0].size());
    std::printf("    %s [%lld, %lld]: density %s; shared %.2f%%, private %.2f%%", layer.c_str(),
                static_cast<long long>(masks[0].rows), static_cast<long long>(masks[0].cols), densities.c_str(),
                100 * split.shared / n, 100 * split.private_total / n);
    for (size_t t = 0; t < tasks.size(); ++t)
      std::printf(", %s-private %.2f%%", tasks[t].c_str(), 100 * split.private_per_task[t] / n);
    std::printf(", dead %.2f%%\n", 100 * split.dead / n);
  }
}

int cmd_inspect(int argc, char** argv) {
  if (wants_help(argc, argv)) return print_help(kInspectHelp), 0;
  Args args("inspect", argc, argv, 2, {}, {});
  if (args.positionals().size() != 1) throw ConfigError("ncsrec inspect: give exactly one PATH (see --help)");
  const std::string path = args.positionals()[0];
  if (fs::is_directory(path) && !fs::exists(path + "/manifest") && fs::exists(path + "/rank-0.h5"))
    throw UserError(path + ": an incomplete checkpoint (no manifest: its save did not finish); use an earlier one");
  const bool crashed_save = !fs::exists(path) && (fs::exists(path + ".tmp") || fs::exists(path + ".old"));
  if ((fs::is_directory(path) && fs::exists(path + "/manifest")) || crashed_save) {
    const CheckpointMeta m = read_checkpoint_meta(path);
    std::printf("checkpoint %s (verified): format %lld, step %lld, epoch %lld, world size %lld, data position %lld\n",
                path.c_str(), static_cast<long long>(m.format_version), static_cast<long long>(m.step),
                static_cast<long long>(m.epoch), static_cast<long long>(m.world_size),
                static_cast<long long>(m.data_position));
    std::printf("  seed %lld, optimizer step %lld, first step %lld%s%s%s%s\n", static_cast<long long>(m.seed),
                static_cast<long long>(m.optimizer_step), static_cast<long long>(m.first_step),
                m.day.empty() ? "" : ", day ", m.day.c_str(), m.init_from.empty() ? "" : ", initialised from ",
                m.init_from.c_str());
    h5::File f = h5::File::open_read(path + "/rank-0.h5");
    print_masks(f);
    for (const std::string group : {"dense", "embedding"})
      for (const auto& name : f.list(group)) {
        const std::string obj = group + "/" + name;
        if (group == "embedding") {
          // The rows of every rank's shard together: the whole table.
          const auto d = f.dims(obj + "/values");
          unsigned long long rows = d[0];
          for (int64_t r = 1; r < m.world_size; ++r)
            rows += h5::File::open_read(path + "/rank-" + std::to_string(r) + ".h5").dims(obj + "/values")[0];
          std::printf("  %s/values [%llu, %llu]%s\n", obj.c_str(), rows,
                      static_cast<unsigned long long>(d.size() > 1 ? d[1] : 1),
                      m.world_size > 1 ? (" (rows of " + std::to_string(m.world_size) + " ranks)").c_str() : "");
        } else {
          const auto d = f.dims(obj);
          std::string shape;
          for (auto x : d) shape += (shape.empty() ? "" : ", ") + std::to_string(x);
          std::printf("  %s [%s]\n", obj.c_str(), shape.c_str());
        }
      }
    return 0;
  }
  if (!fs::is_directory(path)) {
    h5::File f = h5::File::open_read(path);
    if (f.exists("mask") && !f.exists("labels")) {
      std::printf("mask file %s\n", path.c_str());
      print_masks(f);
      return 0;
    }
  }
  std::vector<std::string> files = fs::is_directory(path) ? list_day_shards(path) : std::vector<std::string>{path};
  int64_t total = 0;
  DataSchema schema;
  for (const auto& f : files) {
    int64_t rows = 0;
    schema = read_shard_schema(f, &rows);
    total += rows;
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s.empty() ? std::string("-") : s;
  };
  std::printf("%s: %zu shard(s), %lld rows\n  labels: %s\n  weight: %s\n  dense: %lld\n  sparse: %s\n  meta: %s\n"
              "  truth: %s\n",
              path.c_str(), files.size(), static_cast<long long>(total), join(schema.tasks).c_str(),
              schema.has_weight ? "yes" : "no", static_cast<long long>(schema.dense_dim), join(schema.slots).c_str(),
              join(schema.meta).c_str(), join(schema.truth).c_str());
  return 0;
}

int dispatch(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "train") return cmd_train(argc, argv);
  if (cmd == "eval") return cmd_eval(argc, argv);
  if (cmd == "predict") return cmd_predict(argc, argv);
  if (cmd == "export") return cmd_export(argc, argv);
  if (cmd == "history") return cmd_history(argc, argv);
  if (cmd == "gen") return cmd_gen(argc, argv);
  if (cmd == "inspect") return cmd_inspect(argc, argv);
  if (cmd == "convert") return cmd_convert(argc, argv);
  if (cmd == "bench") return cmd_bench(argc, argv);
  std::fprintf(stderr, "ncsrec: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
  return 2;
}

}  // namespace
}  // namespace ncsrec

int main(int argc, char** argv) {
  // OpenMP workers that spin between parallel regions starve the data-reader thread on small
  // machines (measured on 2 cores: 15k samples/s spinning vs 220k passive). libgomp reads
  // OMP_WAIT_POLICY when it loads, before main, so set it and re-execute once; a user's own
  // setting is respected.
  // OpenBLAS likewise reads OPENBLAS_CORETYPE when it loads: the kernels for this CPU's
  // instruction sets, not its (on VMs often generic) model name (core/blas_core.h).
  bool reexec = false;
  if (!std::getenv("OMP_WAIT_POLICY")) {
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    reexec = true;
  }
  if (ncsrec::set_openblas_coretype_for_this_cpu()) reexec = true;
  if (reexec) ::execv("/proc/self/exe", argv);  // returns only on failure: carry on with the defaults
  // Under an MPI launcher an error on one rank ends the whole job (no rank waits for it); a
  // config error, which every rank meets alike, is reported by rank 0 alone.
  const int rank = ncsrec::launcher_rank();
  const std::string who = ncsrec::launched_under_mpi() ? "rank " + std::to_string(rank) + ": " : "";
  int code = 0;
  try {
    return ncsrec::dispatch(argc, argv);
  } catch (const ncsrec::ConfigError& e) {
    if (rank == 0) std::fprintf(stderr, "\nerror: %s\n", e.what());
    code = 2;
  } catch (const ncsrec::UserError& e) {
    std::fprintf(stderr, "\n%serror: %s\n", who.c_str(), e.what());
    code = 1;
  } catch (const ncsrec::CommTimeout&) {
    code = 4;  // the communicator has said which call waited on whom
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\n%sinternal error (please report it): %s\n", who.c_str(), e.what());
    code = 3;
  }
  ncsrec::end_job_after_error(code);
  return code;
}
