#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <csignal>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <utility>

#include "core/data/hdf5_shard.h"
#include "core/data/reader.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/layers/masked_linear.h"
#include "core/optim.h"
#include "embedding/embedding_table.h"
#include "models/multitask_model.h"
#include "train/checkpoint.h"
#include "train/imp.h"
#include "train/init_from.h"
#include "train/mask_io.h"
#include "train/step.h"
#include "train/json.h"
#include "train/replicas.h"

namespace ncsrec {
namespace fs = std::filesystem;

void configure_threads(int64_t threads) {
  if (threads <= 0) return;
  omp_set_num_threads(static_cast<int>(threads));  // OpenBLAS runs single-threaded inside them (core/cpu_kernels.cpp)
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Days since 1970-01-01 of a date YYYY-MM-DD (checked by the command that took --day).
int64_t days_since_epoch(const std::string& day) {
  std::tm tm{};
  if (day.size() != 10 || !strptime(day.c_str(), "%Y-%m-%d", &tm))
    throw ConfigError("--day " + day + ": expected a date YYYY-MM-DD");
  tm.tm_hour = 12;
  return static_cast<int64_t>(timegm(&tm) / 86400);
}

// Each hash table's rows, pending ids, insertions and evictions, summed over ranks (a
// collective: every rank calls it). Empty when the model has no hash table.
JsonObject hash_table_stats(MultiTaskModel& model, Communicator& comm) {
  JsonObject out;
  const std::vector<ShardedTable>& tables = model.table_layout();  // no copy of rows off a device
  for (size_t i = 0; i < tables.size(); ++i) {
    const ShardedTable& t = tables[i];
    if (!t.hashed()) continue;
    const HashStats h = model.table_hash_stats(i);
    int64_t v[5] = {h.rows, h.pending, h.inserted, h.evicted_ttl, h.evicted_full};
    comm.all_reduce_sum(v, 5);
    out.add(t.name(), JsonObject().add("rows", v[0]).add("pending", v[1]).add("inserted", v[2])
                          .add("evicted_ttl", v[3]).add("evicted_full", v[4]));
  }
  return out;
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = static_cast<long>(s + 0.5);
  char b[32];
  std::snprintf(b, sizeof b, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  return b;
}

// The loss weights in effect (learned ones under uncertainty weighting), by loss name.
JsonObject loss_weights_json(const MultiTaskModel& model) {
  JsonObject o;
  for (const auto& [name, w] : model.loss_weights()) o.add(name, w);
  return o;
}

}  // namespace

std::string masked_route_choices_json() {
  std::string array = "[";
  for (const MaskedRouteChoice& c : masked_route_choices()) {
    if (array.size() > 1) array += ", ";
    array += JsonObject().add("device", c.device).add("dtype", c.dtype).add("tasks", c.tasks).add("rows", c.rows)
                 .add("in", c.in).add("out", c.out).add("plain_ms", c.plain_ms).add("fused_ms", c.fused_ms)
                 .add("route", c.fused ? "fused" : "plain").str();
  }
  return array + "]";
}

namespace {

JsonObject metrics_json(const EvalReport& report) {
  JsonObject views;
  for (const auto& v : report.views) {
    JsonObject o;
    o.add("count", v.metrics.count)
        .add("positives", v.metrics.positives)
        .add("auc", v.metrics.auc)
        .add("bayes_auc", v.bayes_auc)
        .add("gauc", v.metrics.gauc)
        .add("logloss", v.metrics.logloss)
        .add("calibration", v.metrics.calibration)
        .add("mean_prediction", v.metrics.mean_prediction)
        .add("mean_label", v.metrics.mean_label);
    views.add(v.name, o);
  }
  return views;
}

// Progress on a terminal: one line rewritten in place, at most twice a second.
class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled && ::isatty(STDERR_FILENO)) {}
  void update(int64_t step, int64_t total_steps, double samples_per_s, const std::vector<std::string>& names,
              const std::vector<double>& losses, double elapsed) {
    if (!enabled_ || seconds_since(last_) < 0.5) return;
    last_ = Clock::now();
    std::string loss;
    char b[64];
    for (size_t i = 0; i < names.size(); ++i) {
      std::snprintf(b, sizeof b, " %s %.4f", names[i].c_str(), losses[i]);
      loss += b;
    }
    const double eta = step > 0 ? elapsed / static_cast<double>(step) * static_cast<double>(total_steps - step) : NAN;
    std::fprintf(stderr, "\r\033[Kstep %lld/%lld  %.0f samples/s  loss%s  ETA %s", static_cast<long long>(step),
                 static_cast<long long>(total_steps), samples_per_s, loss.c_str(), format_duration(eta).c_str());
    std::fflush(stderr);
    shown_ = true;
  }
  void finish() {
    if (shown_) std::fprintf(stderr, "\r\033[K");
    shown_ = false;
  }

 private:
  bool enabled_;
  bool shown_ = false;
  Clock::time_point last_ = Clock::now() - std::chrono::seconds(1);
};

volatile std::sig_atomic_t g_stop_requested = 0;

void on_stop_signal(int) { g_stop_requested = 1; }

// SIGTERM and SIGUSR1 request a stop while a training runs; the previous handlers come back after.
// A request that came before (catch_stop_signals() at start-up) is kept; one left when the run
// ends is cleared, so it does not stop the next run.
// Points SIGTERM and SIGUSR1 at on_stop_signal; the previous handlers go to `old_*` if given.
void set_stop_handlers(struct sigaction* old_term, struct sigaction* old_usr1) {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, old_term);
  sigaction(SIGUSR1, &sa, old_usr1);
}

class StopSignals {
 public:
  StopSignals() { set_stop_handlers(&old_term_, &old_usr1_); }
  ~StopSignals() {
    g_stop_requested = 0;
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGUSR1, &old_usr1_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_term_ {}, old_usr1_ {};
};

// Whether any rank was asked to stop: every rank must leave at the same step.
bool stop_agreed(Communicator& comm) {
  double stop = g_stop_requested ? 1.0 : 0.0;
  if (comm.world_size() > 1) comm.all_reduce_max(&stop, 1);
  return stop > 0;
}

// Learned masks: each task's density per masked layer, {"ctr": [0.2, 0.2, 0.2], ...}.
JsonObject mask_density_json(const MultiTaskModel& model) {
  JsonObject j;
  const auto d = model.mask_densities();
  for (size_t t = 0; t < d.size(); ++t) {
    std::string list = "[";
    for (size_t l = 0; l < d[t].size(); ++l) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%s%.6g", l ? ", " : "", d[t][l]);
      list += buf;
    }
    j.add_raw(model.config().tasks[t].name, list + "]");
  }
  return j;
}

}  // namespace

void request_training_stop() { g_stop_requested = 1; }

void catch_stop_signals() { set_stop_handlers(nullptr, nullptr); }

TrainSummary run_training(const TrainConfig& config, const std::string& resolved_yaml, const std::string& run_dir,
                          Communicator& comm, const TrainOptions& options) {
  StopSignals stop_signals;
  configure_threads(config.threads);
  const std::vector<std::string> train_files = expand_data_paths(config.data.train, "data.train");
  const std::vector<std::string> eval_files =
      config.data.eval.empty() ? std::vector<std::string>{} : expand_data_paths(config.data.eval, "data.eval");

  ReaderOptions ro = training_reader_options(config, train_files, comm.rank(), comm.world_size(), 0);

  // The schema comes from the first reader; the model is built against it, and the eval data
  // is checked now rather than after training.
  std::unique_ptr<Reader> reader = std::make_unique<Reader>(ro);
  const Device device = training_device(config);
  if (comm.rank() == 0 && device != Device::CPU) std::fprintf(stderr, "device: %s\n", device_name(device));
  MultiTaskModel model(config.model, reader->schema(), DType::F32, config.seed, &comm, device);
  if (!eval_files.empty()) {
    int64_t rows = 0;
    model.check_compatible(read_shard_schema(eval_files.front(), &rows), "data.eval (" + eval_files.front() + ")");
  }
  // A DMMP student's teacher: its checkpoint's model, run on every training batch.
  std::unique_ptr<MultiTaskModel> teacher;
  if (!config.model.three_tower.teacher.empty()) {
    const std::string& dir = config.model.three_tower.teacher;
    if (!fs::is_directory(dir))
      throw ConfigError(config.model.source + ": model.distill.teacher: '" + dir +
                        "' is not a checkpoint folder (train the teacher first; its final checkpoint is "
                        "<run>/checkpoints/final)");
    teacher = load_model(dir, reader->schema(), &comm);
    model.set_teacher(teacher.get());
  }
  Optimizers optimizers = make_optimizers(config, model);
  if (comm.rank() == 0 && device != Device::CPU)
    std::fprintf(stderr, "embedding tables: %s\n",
                 model.tables_on_device()
                     ? "on the device"
                     : ("on the host (" + model.device_table_limits(config.sparse_optimizer) + ")").c_str());
  TrainingState state{&model, optimizers.dense.get(), {}};
  for (auto& sp : optimizers.sparse) state.sparse_optimizers.push_back(sp.get());

  // The day of the data (--day), for the tables' last_seen_day and hash tables' ttl_days.
  const int64_t day_number = options.day.empty() ? -1 : days_since_epoch(options.day);
  for (const TableSpec& t : config.model.tables)
    if (t.ttl_days > 0 && day_number < 0)
      throw ConfigError(config.model.source + ": model.tables." + t.name + ".ttl_days needs the day of the data: "
                        "train with --day YYYY-MM-DD (or drop ttl_days)");

  const std::string checkpoints_dir = run_dir + "/checkpoints";
  // A new run never writes over another run's checkpoints (a later --resume would take them).
  if (!options.resume && fs::is_directory(checkpoints_dir) && !fs::is_empty(checkpoints_dir))
    throw UserError("run folder " + run_dir + " already holds checkpoints of a run: continue it with --resume, "
                    "or give another --run-dir");

  // The run folder is made only once the config, the data and the model are known to work.
  // Rank 0 writes the run folder's files; every rank needs the folder (checkpoints). A resumed
  // run rewrites them only once its checkpoint has loaded and fits (a refused resume leaves
  // the folder as it was).
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw UserError("run folder " + run_dir + ": cannot create it: " + ec.message());
  std::ofstream metrics_log;
  auto open_run_files = [&] {
    if (comm.rank() != 0) return;
    std::ofstream cfg(run_dir + "/config.yaml");
    cfg << resolved_yaml << "\n";
    // A new run starts a new log; a resumed one appends to it.
    metrics_log.open(run_dir + "/metrics.jsonl", options.resume ? std::ios::app : std::ios::trunc);
    if (!metrics_log) throw UserError("run folder " + run_dir + ": cannot write metrics.jsonl");
  };
  if (!options.resume) open_run_files();

  // Resume: everything the newest checkpoint holds (masks included, so no mask search).
  // Where the run starts from: the resumed checkpoint's step, epoch and data position, or
  // (init.from) the initialising checkpoint's step; zeros for a fresh run.
  CheckpointMeta origin;
  if (options.resume) {
    std::string from;
    if (comm.rank() == 0) from = newest_checkpoint(checkpoints_dir);  // rank 0 repairs what a crash left
    comm.barrier();
    if (comm.rank() != 0) from = newest_checkpoint(checkpoints_dir);
    if (from.empty())
      throw UserError("--resume: " + checkpoints_dir + " holds no checkpoint (step-<N> or final) to resume from; "
                      "run without --resume to start afresh");
    origin = load_checkpoint(from, state);
    if (origin.seed != static_cast<int64_t>(config.seed))
      throw UserError("--resume: " + from + " was written with run.seed " + std::to_string(origin.seed) +
                      ", the config says " + std::to_string(config.seed) + ": resume with the run's own config");
    if (comm.rank() == 0)
      std::fprintf(stderr, "resume: %s (step %lld, epoch %lld, data position %lld, written by %lld ranks)\n",
                   from.c_str(), static_cast<long long>(origin.step), static_cast<long long>(origin.epoch),
                   static_cast<long long>(origin.data_position), static_cast<long long>(origin.world_size));
  }

  // A new run initialised from another run's checkpoint (init.from): its parameters by name,
  // and (init.optimizer_state) its optimizer state and step, so that Adam's bias correction and
  // the step-keyed schedule and dropout continue where it stopped.
  bool masks_given = options.resume;
  if (!options.resume && !config.init.from.empty()) {
    const InitReport init = init_from_checkpoint(config.init, state);
    origin.first_step = origin.step = config.init.optimizer_state ? init.meta.optimizer_step : 0;
    origin.init_from = config.init.from;
    masks_given = init.masks_loaded;
    if (comm.rank() == 0) {
      std::fprintf(stderr, "init: %s (step %lld%s%s): %zu parameters and tables loaded, %zu left fresh%s%s\n",
                   config.init.from.c_str(), static_cast<long long>(init.meta.step),
                   init.meta.day.empty() ? "" : ", day ", init.meta.day.c_str(), init.loaded.size(),
                   init.reinitialised.size() + init.missing.size(), config.init.optimizer_state ? ", optimizer state carried" : "",
                   init.masks_loaded ? ", masks loaded" : "");
      JsonObject line;
      line.add("event", "init").add("from", config.init.from).add("from_step", init.meta.step)
          .add("from_day", init.meta.day).add("loaded", static_cast<int64_t>(init.loaded.size()))
          .add("reinitialised", static_cast<int64_t>(init.reinitialised.size()))
          .add("missing", static_cast<int64_t>(init.missing.size())).add("masks_loaded", init.masks_loaded);
      metrics_log << line.str() << "\n" << std::flush;
    }
  }

  // Progressive validation: the model as initialised, on the data it is about to train on.
  TrainSummary summary;
  if (!options.resume && !config.init.from.empty() && config.train.progressive_eval) {
    summary.progressive_eval = evaluate(model, train_files, config, comm);
    if (comm.rank() == 0) {
      metrics_log << JsonObject().add("event", "progressive_eval").add("step", origin.step)
                         .add("metrics", metrics_json(summary.progressive_eval)).str()
                  << "\n" << std::flush;
      std::fprintf(stderr, "progressive eval (the initialised model on data.train, %lld rows):\n%s",
                   static_cast<long long>(summary.progressive_eval.rows),
                   format_eval_table(summary.progressive_eval).c_str());
    }
  }

  // Masks (ncs): from a file or checkpoint, or found now by IMP; otherwise all ones.
  if (!masks_given && !config.model.masks.file.empty()) load_masks(config.model.masks.file, model);
  if (!masks_given && config.model.masks.find == "imp") {
    const std::vector<std::string> valid_files = expand_data_paths(config.data.valid, "data.valid");
    const ImpResult imp =
        find_masks_imp(config, reader->schema(), train_files, valid_files, run_dir, comm, options.dense_comm);
    for (size_t t = 0; t < imp.masks.size(); ++t)
      for (int l = 0; l < model.num_masked_layers(); ++l)
        model.set_mask(static_cast<int>(t), l, imp.masks[t][static_cast<size_t>(l)]);
  }
  const bool exact_masks = config.train.mask_semantics == "exact";
  const bool alternating = config.train.schedule == "alternating";
  const int num_tasks = static_cast<int>(config.model.tasks.size());

  const int64_t global_batch = config.train.batch_size * comm.world_size();
  const int64_t steps_per_epoch = reader->total_rows() / global_batch;
  if (steps_per_epoch == 0)
    throw UserError("data.train has " + std::to_string(reader->total_rows()) + " rows, fewer than one global batch of " +
                    std::to_string(global_batch) + ": lower train.batch_size");
  // Steps count on from the run this one was initialised from (0 for a fresh run).
  int64_t total_steps = steps_per_epoch * config.train.epochs;
  if (config.train.max_steps > 0) total_steps = std::min(total_steps, config.train.max_steps);
  total_steps += origin.first_step;
  if (options.resume && origin.data_position % global_batch != 0)
    throw UserError("--resume: the checkpoint stopped at data position " + std::to_string(origin.data_position) +
                    " of epoch " + std::to_string(origin.epoch) + ", which is not a multiple of the global batch " +
                    std::to_string(global_batch) + " (" + std::to_string(comm.world_size()) + " ranks x " +
                    std::to_string(config.train.batch_size) + "); resume it on the number of ranks that wrote it (" +
                    std::to_string(origin.world_size) + "), or start a new run from it with --init-from");
  if (options.resume) open_run_files();

  bool has_hash_tables = false;
  for (const auto& t : std::as_const(model).tables()) has_hash_tables = has_hash_tables || t.hashed();
  // Today's reads are counted on today's day; hash tables drop the rows not seen for ttl_days.
  std::vector<HashStats> hash_before;
  for (const auto& t : std::as_const(model).tables()) hash_before.push_back(t.hash_stats());
  model.start_day(day_number);
  for (size_t i = 0; i < std::as_const(model).tables().size(); ++i) {
    const ShardedTable& t = std::as_const(model).tables()[i];
    if (!t.hashed()) continue;
    int64_t stats[2] = {t.hash_stats().evicted_ttl - hash_before[i].evicted_ttl, t.hash_stats().rows};
    comm.all_reduce_sum(stats, 2);
    if (comm.rank() == 0 && stats[0] > 0) {
      std::fprintf(stderr, "table %s: %lld rows not seen for more than %lld days dropped, %lld rows left\n",
                   t.name().c_str(), static_cast<long long>(stats[0]), static_cast<long long>(t.hash_options().ttl_days),
                   static_cast<long long>(stats[1]));
      metrics_log << JsonObject().add("event", "ttl_eviction").add("table", t.name()).add("day", options.day)
                         .add("evicted", stats[0]).add("rows", stats[1]).str() << "\n" << std::flush;
    }
  }

  if (comm.rank() == 0)
    std::fprintf(stderr, "train: %s model, %lld dense parameters, %zu tables, %lld rows/epoch, %lld steps of %lld\n",
                 config.model.type.c_str(), static_cast<long long>(model.params().numel()), std::as_const(model).tables().size(),
                 static_cast<long long>(reader->total_rows()), static_cast<long long>(total_steps),
                 static_cast<long long>(global_batch));

  // The steps' buffers, planned before the first step (no step then allocates device memory;
  // the masked layers' routes are measured here under run.masked_route: auto). Every rank.
  plan_step_memory(model, config.train.batch_size);

  Progress progress(comm.rank() == 0);
  const std::vector<std::string>& loss_names = model.loss_names();
  std::vector<double> loss_window(loss_names.size(), 0.0);
  std::vector<int64_t> loss_steps(loss_names.size(), 0);  // steps in the window that stepped each task
  double grad_norm_window = 0;  // sum of the window's pre-clip dense gradient norms
  int64_t window_steps = 0, clipped_steps = 0;
  comm.reset_stats();  // the run's communication: the steps' collectives only
  const auto start = Clock::now();
  auto window_start = start;
  int64_t window_samples = 0;
  Block batch;
  // (epoch, position) is where the data stands: the epoch being read and the global positions
  // of it already consumed; a finished epoch moves on to (epoch + 1, 0).
  int64_t step = origin.step, epoch = origin.epoch, position = origin.data_position;
  summary.resumed_from_step = options.resume ? origin.step : -1;
  summary.first_step = origin.first_step;
  if (options.resume && comm.rank() == 0)
    metrics_log << JsonObject().add("event", "resume").add("step", step).add("epoch", epoch)
                       .add("data_position", position).add("world_size", comm.world_size()).str()
                << "\n" << std::flush;
  CheckpointMeta meta;
  meta.config_yaml = resolved_yaml;
  meta.world_size = comm.world_size();
  meta.seed = static_cast<int64_t>(config.seed);
  meta.day = origin.day;
  meta.init_from = origin.init_from;
  meta.first_step = origin.first_step;
  if (!options.day.empty()) meta.day = options.day;
  // Saves `name` under checkpoints/ with the loop's (step, epoch, position).
  auto save = [&](const std::string& name) {
    meta.step = meta.optimizer_step = step;
    meta.epoch = epoch;
    meta.data_position = position;
    fs::create_directories(checkpoints_dir, ec);
    // Learned masks: the checkpoint holds the masks of the scores it holds (what predict and
    // export use), not those chosen before the last step moved the scores. The next step
    // chooses them from the same scores again, so training is not changed.
    model.refresh_masks();
    save_checkpoint(checkpoints_dir + "/" + name, state, meta, comm);
  };
  double checkpoint_seconds = 0;  // periodic saves inside the loop, taken out of its time
  bool preempted = false;
  for (; epoch < config.train.epochs && step < total_steps && !preempted;) {
    if (epoch != 0 || position != 0) {
      ro.epoch = epoch;
      ro.start_position = position;
      reader = std::make_unique<Reader>(ro);
    }
    bool epoch_done = true;
    while (true) {
      if (step >= total_steps) {
        epoch_done = false;
        break;
      }
      if (!reader->next(batch)) break;
      // Alternating (NCS4CVR): one batch per task in turn; joint: all tasks in each step.
      const int task = alternating ? static_cast<int>(step % num_tasks) : -1;
      StepStats stats;
      const StepLoss loss =
          train_one_step(model, optimizers, batch, task, step + 1, exact_masks, comm, &stats, options.dense_comm,
                         config.bucket_bytes());
      if (!std::isfinite(loss.total))
        throw UserError("training diverged at step " + std::to_string(step + 1) +
                        " (loss is not finite): lower optimizer.lr or check the data");
      if (!std::isfinite(stats.grad_norm))
        throw UserError("training diverged at step " + std::to_string(step + 1) +
                        " (the dense gradient is not finite): lower optimizer.lr, set train.clip_grad_norm or "
                        "check the data");
      ++step;
#ifndef NDEBUG
      check_replicas_agree(model, comm, step);  // every step in debug builds
#endif
      grad_norm_window += stats.grad_norm;
      clipped_steps += stats.clipped ? 1 : 0;
      ++window_steps;
      for (size_t i = 0; i < loss_window.size(); ++i)
        if (!std::isnan(loss.per_task[i])) {
          loss_window[i] += loss.per_task[i];
          ++loss_steps[i];
        }
      window_samples += global_batch;
      summary.samples += global_batch;
      summary.trained_rows += batch.rows;  // this rank's; summed over ranks after the loop
      position = reader->position();
      const double elapsed = seconds_since(start);
      std::vector<double> mean_loss(loss_window.size());
      for (size_t i = 0; i < mean_loss.size(); ++i)
        mean_loss[i] = loss_steps[i] ? loss_window[i] / static_cast<double>(loss_steps[i]) : NAN;
      progress.update(step, total_steps, static_cast<double>(summary.samples) / elapsed, loss_names, mean_loss, elapsed);
      if (step % config.train.log_every == 0 || step == total_steps) {
        check_replicas_agree(model, comm, step);
        JsonObject losses;
        for (size_t i = 0; i < loss_names.size(); ++i)
          losses.add(loss_names[i], loss_steps[i] ? loss_window[i] / static_cast<double>(loss_steps[i]) : NAN);
        const double window_s = seconds_since(window_start);
        JsonObject line;
        // lr: the rates of this line's step; grad_norm: the window's mean pre-clip dense norm.
        line.add("event", "train").add("step", step).add("epoch", epoch).add("samples", summary.samples)
            .add("loss", losses).add("lr", stats.lr).add("sparse_lr", stats.sparse_lr)
            .add("grad_norm", grad_norm_window / static_cast<double>(window_steps));
        if (config.train.clip_grad_norm > 0) line.add("clipped_steps", clipped_steps);
        if (config.model.loss_weighting == "uncertainty") line.add("loss_weights", loss_weights_json(model));
        if (has_hash_tables) line.add("hash_tables", hash_table_stats(model, comm));
        if (config.model.masks.find == "learned") line.add("mask_density", mask_density_json(model));
        line.add("samples_per_sec", static_cast<double>(window_samples) / window_s).add("elapsed_sec", elapsed);
        if (comm.rank() == 0) metrics_log << line.str() << "\n" << std::flush;
        std::fill(loss_window.begin(), loss_window.end(), 0.0);
        std::fill(loss_steps.begin(), loss_steps.end(), 0);
        grad_norm_window = 0;
        window_steps = clipped_steps = 0;
        window_samples = 0;
        window_start = Clock::now();
      }
      if (options.after_step) options.after_step(step);
      if (step < total_steps && stop_agreed(comm)) {
        preempted = true;
        epoch_done = false;
        break;
      }
      if (config.train.checkpoint_every > 0 && step % config.train.checkpoint_every == 0 && step < total_steps) {
        const auto t = Clock::now();
        save("step-" + std::to_string(step));
        if (comm.rank() == 0) prune_step_checkpoints(checkpoints_dir, config.train.keep_checkpoints);
        checkpoint_seconds += seconds_since(t);
      }
    }
    // The last full global batch ends the epoch even when max_steps stopped the loop there
    // (a final partial batch is dropped, so it is not data still to be read).
    if (epoch_done || position >= steps_per_epoch * global_batch) {
      ++epoch;
      position = 0;
    }
  }
  progress.finish();
  summary.steps = step;
  summary.checkpoint_seconds = checkpoint_seconds;
  summary.train_seconds = seconds_since(start) - checkpoint_seconds;
  summary.samples_per_second =
      summary.train_seconds > 0 ? static_cast<double>(summary.samples) / summary.train_seconds : 0.0;
  summary.comm = comm.stats();
  reader.reset();
  if (comm.world_size() > 1) comm.all_reduce_sum(&summary.trained_rows, 1);

  if (preempted) {
    const std::string name = "step-" + std::to_string(step);
    save(name);
    if (comm.rank() == 0) {
      prune_step_checkpoints(checkpoints_dir, config.train.keep_checkpoints);
      metrics_log << JsonObject().add("event", "preempted").add("step", step).add("checkpoint", "checkpoints/" + name)
                         .str()
                  << "\n" << std::flush;
    }
    summary.preempted = true;
    summary.checkpoint = checkpoints_dir + "/" + name;
    return summary;
  }

  // Final checkpoint, then evaluation (so a failure in evaluation loses no training).
  summary.checkpoint = checkpoints_dir + "/final";
  save("final");
  // Learned masks in a mask file too, as IMP leaves masks/chosen.h5: for `masks.file` of a
  // later run, `ncsrec inspect` and tools that read masks without a checkpoint.
  if (config.model.masks.find == "learned" && comm.rank() == 0) {
    fs::create_directories(run_dir + "/masks", ec);
    write_mask_file(run_dir + "/masks/learned.h5", model);
  }

  if (!eval_files.empty()) {
    summary.eval = evaluate(model, eval_files, config, comm);
    if (comm.rank() == 0)
      metrics_log << JsonObject().add("event", "eval").add("step", step).add("metrics", metrics_json(summary.eval))
                         .add("loss_weights", loss_weights_json(model)).str()
                  << "\n" << std::flush;
  }
  if (comm.rank() == 0) {
    JsonObject s;
    // Cost: trainable dense parameters (embeddings and optimizer state excluded) and the
    // multiply-adds of one sample's joint forward (embedding lookups excluded).
    int64_t dense_parameters = 0;
    for (const Param& p : model.params().params())
      if (p.trainable && p.name.rfind("mask_score.", 0) != 0) dense_parameters += p.value.numel();
    // Communication of the training steps on rank 0: payload bytes it sent per step, and the
    // share of the loop's wall time spent inside collectives (waiting for other ranks included).
    const double per_step = step > 0 ? 1.0 / static_cast<double>(step) : 0.0;
    JsonObject comm_json;
    comm_json.add("kind", comm.kind())
        .add("all_reduce_bytes_per_step", static_cast<double>(summary.comm.all_reduce_bytes) * per_step)
        .add("all_to_all_bytes_per_step", static_cast<double>(summary.comm.all_to_all_bytes) * per_step)
        .add("all_gather_bytes_per_step", static_cast<double>(summary.comm.all_gather_bytes) * per_step)
        .add("seconds", summary.comm.seconds)
        .add("fraction_of_train_time", summary.train_seconds > 0 ? summary.comm.seconds / summary.train_seconds : 0.0);
    s.add("model", config.model.type).add("device", device_name(model.device()))
        .add("matmul", model.device() == Device::CPU ? std::string("fp32") : config.matmul)
        .add("masked_route", model.device() == Device::CPU ? cpu_masked_routes_taken() : config.masked_route)
        .add_raw("masked_route_measurements", masked_route_choices_json()).add("world_size", comm.world_size())
        .add("global_batch", config.train.batch_size * comm.world_size()).add("communication", comm_json)
        .add("dense_parameters", dense_parameters)
        .add("multiply_adds_per_sample", model.multiply_adds_per_sample()).add("steps", step).add("samples", summary.samples)
        .add("resumed_from_step", summary.resumed_from_step)
        .add("train_seconds", summary.train_seconds).add("samples_per_sec", summary.samples_per_second)
        .add("checkpoint_seconds", summary.checkpoint_seconds)
        .add("eval_rows", summary.eval.rows).add("eval", metrics_json(summary.eval))
        .add("day", meta.day).add("init_from", meta.init_from).add("first_step", meta.first_step)
        .add("history_version", model.history() ? model.history()->version() : std::string())
        .add("checkpoint", "checkpoints/final");
    if (!config.data.negative_label.empty())
      s.add("negative_sampling", JsonObject().add("label", config.data.negative_label)
                                     .add("rate", config.data.negative_rate)
                                     .add("correction", config.data.negative_correction)
                                     .add("trained_rows", summary.trained_rows));
    if (summary.progressive_eval.rows > 0)
      s.add("progressive_eval_rows", summary.progressive_eval.rows)
          .add("progressive_eval", metrics_json(summary.progressive_eval));
    std::ofstream out(run_dir + "/summary.json.tmp");
    out << s.str() << "\n";
    out.close();
    fs::rename(run_dir + "/summary.json.tmp", run_dir + "/summary.json");
    const std::string routes = describe_masked_route_choices();
    if (!routes.empty()) std::fprintf(stderr, "masked layers' route (run.masked_route: auto), measured:\n%s", routes.c_str());
  }
  return summary;
}

}  // namespace ncsrec
