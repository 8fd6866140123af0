// `ncsrec bench`: the speed of one training step of an NCS model, on batches generated in
// memory before the clock starts (no reading, no decoding, no evaluation). The step is
// train_one_step (train/step.h), the very step the trainer runs, with the config's optimizers
// and mask semantics and random per-task masks at --density on every masked layer.
// scripts/bench_torch.py runs the same model in PyTorch and prints the ratio.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "apps/args.h"
#include "apps/commands.h"
#include "core/blas_core.h"
#include "core/data/block.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/masks.h"
#include "core/layers/masked_linear.h"
#include "core/phase_clock.h"
#include "core/random.h"
#include "dist/communicator.h"
#include "models/multitask_model.h"
#include "train/json.h"
#include "train/step.h"
#include "train/train_config.h"
#include "train/trainer.h"

namespace ncsrec {
namespace {

const char* kBenchHelp = R"(usage: ncsrec bench [--config FILE] [--batch N] [--steps N] [--warmup K] [--density D]
                    [--threads T] [--schedule joint|alternating] [--zipf S] [--pool N]
                    [--multi-valued SLOTS] [--seed N] [--device cpu|cuda] [--matmul fp32|tf32|bf16]
                    [--masked-route auto|plain|fused] [--phase-steps N] [--json FILE]

Measures the training step only: forward, losses, backward, the dense optimizer update and
the sparse updates of the embedding rows, exactly as `ncsrec train` does them
(train_one_step). There is no I/O: --pool distinct batches are generated in memory before the
clock starts and are cycled through. Prints samples/s, ms/step, the parameter counts and the
peak resident memory (VmHWM). scripts/bench_torch.py runs the same model in PyTorch.

The model is the config's (type ncs, F32), with random per-task masks at --density on every
masked layer. Batches have the labels click (~4%) and conversion (~10% of clicks) and one
sparse slot per slot of the config's tables; ids follow a Zipf law over each table's rows
(rank k has probability ∝ k^-S; ranks are scattered over the rows by a fixed bijection).
Multi-valued slots carry 1 to 5 ids per row, the others exactly one.

  --config FILE        the model config (default configs/ncs_paper.yaml: the NCS4CVR base
                       network, 15M video ids and 10M user ids; about 5 GB of memory)
  --batch N            rows per step (default: the config's train.batch_size)
  --steps N            timed steps (default 50)
  --warmup K           untimed steps first (default 10; at least --pool, so that every
                       batch's rows have been touched once)
  --phase-steps N      after the timed steps, N more (default 10; 0: none) timed by phase
                       (input, dense forward, losses, dense backward, input backward,
                       all-reduce, dense and sparse optimizers), the device waited for at
                       the end of each phase; printed as ms/step and share of the step
  --density D          density of every task's mask on every masked layer (default 0.2)
  --threads T          OpenMP/OpenBLAS threads (default 2)
  --schedule S         joint (both tasks' losses in every step) or alternating (one task
                       per step, in turn); default: the config's train.schedule
  --zipf S             Zipf exponent of the ids (default 1.05)
  --pool N             distinct batches generated ahead (default 8)
  --multi-valued SLOTS comma-separated multi-valued slots (default f15,f16,f17,f18,f19,
                       those of them the config has)
  --seed N             seeds the model, the masks and the batches (default: the config's)
  --device D           where the dense layers run: cpu (default) or cuda (the embedding
                       tables, input assembly and losses stay on the host, as in training);
                       each timed step ends with a device synchronisation
  --matmul P           the device's matrix products: fp32 (default), tf32 or bf16
  --masked-route R     how the masked layers run (run.masked_route): plain (W ⊙ M_t written
                       out, one GEMM per task), fused (on a device one kernel for every task, the
                       masks applied on the fly; on the CPU products over the masks' connections
                       only, AVX-512F) or auto (default: on a device per shape the faster of the
                       two, measured at first use and printed; on the CPU fused when every mask
                       keeps at most 40% and the batch has 256 rows or more)
  --json FILE          also write the results as JSON
)";

// Zipf over {1..n}, P(k) ∝ k^-s, by rejection-inversion (Hörmann & Derflinger 1996, as in
// Apache Commons' RejectionInversionZipfSampler): O(1) time and memory whatever n, about
// 1.1 uniforms per sample. scripts/bench_torch.py implements the same sampler.
class ZipfSampler {
 public:
  ZipfSampler(int64_t n, double s) : n_(n), s_(s) {
    h_x1_ = h_integral(1.5) - 1.0;
    h_n_ = h_integral(static_cast<double>(n) + 0.5);
    sv_ = 2.0 - h_integral_inverse(h_integral(2.5) - h(2.0));
  }
  int64_t operator()(Rng& rng) const {  // a rank in [1, n]
    for (;;) {
      const double u = h_n_ + rng.uniform() * (h_x1_ - h_n_);
      const double x = h_integral_inverse(u);
      int64_t k = static_cast<int64_t>(x + 0.5);
      if (k < 1) k = 1;
      else if (k > n_) k = n_;
      if (static_cast<double>(k) - x <= sv_ || u >= h_integral(static_cast<double>(k) + 0.5) - h(static_cast<double>(k)))
        return k;
    }
  }

 private:
  static double helper1(double x) { return std::abs(x) > 1e-8 ? std::log1p(x) / x : 1 - x * (0.5 - x * (1.0 / 3 - 0.25 * x)); }
  static double helper2(double x) { return std::abs(x) > 1e-8 ? std::expm1(x) / x : 1 + x * 0.5 * (1 + x / 3 * (1 + 0.25 * x)); }
  double h_integral(double x) const {
    const double lx = std::log(x);
    return helper2((1.0 - s_) * lx) * lx;
  }
  double h(double x) const { return std::exp(-s_ * std::log(x)); }
  double h_integral_inverse(double x) const {
    double t = x * (1.0 - s_);
    if (t < -1.0) t = -1.0;
    return std::exp(helper1(t) * x);
  }
  int64_t n_;
  double s_, h_x1_ = 0, h_n_ = 0, sv_ = 0;
};

// Rank k (1-based) -> row: a bijection of [0, rows) that scatters the popular ranks over the
// table, as hashed ids are in production. 2654435761 is prime, so it is coprime to any
// rows < 2654435761.
int64_t scatter(int64_t rank, int64_t rows) {
  const unsigned __int128 p = static_cast<unsigned __int128>(rank - 1) * 2654435761ULL;
  return static_cast<int64_t>(p % static_cast<unsigned __int128>(rows));
}

struct SlotGen {
  int table;  // index into samplers
  bool multi;
};

Block make_batch(const DataSchema& schema, const std::vector<SlotGen>& slots, const std::vector<ZipfSampler>& samplers,
                 const std::vector<int64_t>& table_rows, int64_t rows, uint64_t seed) {
  Block b = Block::with_schema(schema);
  b.rows = rows;
  Rng rng(seed);
  auto& click = b.labels[0];
  auto& conv = b.labels[1];
  click.resize(static_cast<size_t>(rows));
  conv.resize(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const bool c = rng.bernoulli(0.04);
    click[static_cast<size_t>(r)] = c ? 1.0f : 0.0f;
    conv[static_cast<size_t>(r)] = (c && rng.bernoulli(0.10)) ? 1.0f : 0.0f;
  }
  for (size_t s = 0; s < slots.size(); ++s) {
    SparseColumn& col = b.sparse[s];
    col.offsets.assign(1, 0);
    col.offsets.reserve(static_cast<size_t>(rows) + 1);
    const ZipfSampler& z = samplers[static_cast<size_t>(slots[s].table)];
    const int64_t n_rows = table_rows[static_cast<size_t>(slots[s].table)];
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t len = slots[s].multi ? 1 + static_cast<int64_t>(rng.below(5)) : 1;
      for (int64_t j = 0; j < len; ++j) col.ids.push_back(scatter(z(rng), n_rows));
      col.offsets.push_back(static_cast<int64_t>(col.ids.size()));
    }
  }
  b.validate("a generated bench batch");
  return b;
}

// A mask with exactly round(density · size) ones at seeded random places.
BitMask random_mask(int64_t rows, int64_t cols, double density, uint64_t seed) {
  const int64_t n = rows * cols;
  const int64_t keep = std::llround(density * static_cast<double>(n));
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = i;
  Rng rng(seed);
  for (int64_t i = 0; i < keep; ++i) {  // partial Fisher-Yates
    const int64_t j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - i)));
    std::swap(idx[static_cast<size_t>(i)], idx[static_cast<size_t>(j)]);
  }
  BitMask m = BitMask::zeros(rows, cols);
  for (int64_t i = 0; i < keep; ++i) m.set(idx[static_cast<size_t>(i)], true);
  return m;
}

// Peak resident set size of this process in bytes (VmHWM), or -1.
int64_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream in(line.substr(6));
      int64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
  return -1;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

int cmd_bench(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") return std::fputs(kBenchHelp, stdout), 0;
  Args args("bench", argc, argv, 2,
            {"config", "batch", "steps", "warmup", "density", "threads", "schedule", "zipf", "pool", "multi-valued",
             "seed", "device", "matmul", "masked-route", "phase-steps", "json"},
            {});
  args.no_positionals();
  const std::string config_path = args.get("config", "configs/ncs_paper.yaml");
  const TrainConfig config = load_train_config(config_path, {});
  const ModelConfig& mc = config.model;
  if (mc.type != "ncs")
    throw ConfigError("ncsrec bench: " + config_path + ": model.type is " + mc.type + "; the bench runs ncs models");
  if (mc.use_dense)
    throw ConfigError("ncsrec bench: " + config_path + ": model.use_dense must be false (the bench generates no dense features)");
  const int64_t batch = args.get_int("batch", config.train.batch_size);
  const int64_t steps = args.get_int("steps", 50);
  const int64_t warmup = args.get_int("warmup", 10);
  const int64_t phase_steps = args.get_int("phase-steps", 10);
  if (phase_steps < 0) throw ConfigError("ncsrec bench: --phase-steps must be 0 or more");
  const double density = args.get_double("density", 0.2);
  const int64_t threads = args.get_int("threads", 2);
  const std::string schedule = args.get("schedule", config.train.schedule);
  const double zipf = args.get_double("zipf", 1.05);
  const int64_t pool = args.get_int("pool", 8);
  const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", static_cast<int64_t>(config.seed)));
  if (batch < 1) throw ConfigError("ncsrec bench: --batch must be at least 1");
  if (steps < 1) throw ConfigError("ncsrec bench: --steps must be at least 1");
  if (warmup < 0) throw ConfigError("ncsrec bench: --warmup must be 0 or more");
  if (!(density > 0 && density <= 1)) throw ConfigError("ncsrec bench: --density must be in (0, 1]");
  if (threads < 1) throw ConfigError("ncsrec bench: --threads must be at least 1");
  if (schedule != "joint" && schedule != "alternating")
    throw ConfigError("ncsrec bench: --schedule must be joint or alternating, got '" + schedule + "'");
  if (!(zipf > 0) || !std::isfinite(zipf)) throw ConfigError("ncsrec bench: --zipf must be a positive number");
  if (pool < 1 || pool > 1024) throw ConfigError("ncsrec bench: --pool must be in [1, 1024]");
  const std::string device_arg = args.get("device", "cpu");
  if (device_arg != "cpu" && device_arg != "cuda")
    throw ConfigError("ncsrec bench: --device must be cpu or cuda, got '" + device_arg + "'");
  const Device device = device_arg == "cuda" ? Device::CUDA : Device::CPU;
  const std::string matmul = args.get("matmul", "fp32");
  const std::vector<std::string>& precisions = matmul_precision_names();
  if (std::find(precisions.begin(), precisions.end(), matmul) == precisions.end())
    throw ConfigError("ncsrec bench: --matmul must be fp32, tf32 or bf16, got '" + matmul + "'");
  const std::string route = args.get("masked-route", "auto");
  const std::vector<std::string>& routes = masked_route_names();
  if (std::find(routes.begin(), routes.end(), route) == routes.end())
    throw ConfigError("ncsrec bench: --masked-route must be auto, plain or fused, got '" + route + "'");
  const std::string device_text = select_device(device_arg, matmul, route, "ncsrec bench: --device cuda", "");
  configure_threads(threads);

  // The schema: the tasks' labels (click, conversion), every slot of the config's tables.
  DataSchema schema;
  for (const auto& t : mc.tasks) schema.tasks.push_back(t.label);
  if (schema.tasks.size() != 2)
    throw ConfigError("ncsrec bench: " + config_path + ": the bench generates two labels (click, conversion); the model has " +
                      std::to_string(schema.tasks.size()) + " tasks");
  std::vector<SlotGen> slots;
  std::vector<ZipfSampler> samplers;
  std::vector<int64_t> table_rows;
  std::set<std::string> multi_names;
  const bool multi_given = args.has("multi-valued");
  for (const auto& s : split_commas(args.get("multi-valued", "f15,f16,f17,f18,f19"))) multi_names.insert(s);
  std::set<std::string> seen;
  for (size_t t = 0; t < mc.tables.size(); ++t) {
    samplers.emplace_back(mc.tables[t].rows, zipf);
    table_rows.push_back(mc.tables[t].rows);
    for (const auto& slot : mc.tables[t].slots) {
      if (!seen.insert(slot).second) continue;
      schema.slots.push_back(slot);
      slots.push_back({static_cast<int>(t), multi_names.count(slot) > 0});
    }
  }
  if (multi_given)
    for (const auto& name : multi_names)
      if (!seen.count(name)) throw ConfigError("ncsrec bench: --multi-valued: the config has no slot '" + name + "'");

  std::fprintf(stderr, "bench: building the model (%zu tables, %zu slots)...\n", mc.tables.size(), slots.size());
  auto t0 = Clock::now();
  MultiTaskModel model(mc, schema, DType::F32, seed, nullptr, device);
  // Random per-task masks on every masked layer (a different draw per task and layer).
  int64_t masked_total = 0, masked_on = 0;
  for (size_t task = 0; task < mc.tasks.size(); ++task)
    for (int l = 0; l < model.num_masked_layers(); ++l) {
      const BitMask& cur = model.mask(static_cast<int>(task), l);
      const BitMask m = random_mask(cur.rows, cur.cols, density, hash_combine(seed, 0x6d61736bULL, task * 1000 + l));
      model.set_mask(static_cast<int>(task), l, m);
      if (task == 0) masked_total += m.size();
      masked_on += m.count();
    }
  Optimizers optimizers = make_optimizers(config, model);
  int64_t embedding_rows = 0, embedding_params = 0;
  for (auto& t : model.tables()) {
    embedding_rows += t.rows();
    embedding_params += t.rows() * t.dim();
  }
  const double build_s = since(t0);

  t0 = Clock::now();
  std::vector<Block> batches;
  int64_t ids_total = 0;
  for (int64_t i = 0; i < pool; ++i) {
    batches.push_back(make_batch(schema, slots, samplers, table_rows, batch, hash_combine(seed, 0x62617463ULL, i)));
    for (const auto& c : batches.back().sparse) ids_total += static_cast<int64_t>(c.ids.size());
  }
  const double gen_s = since(t0);

  auto comm = make_local_communicator();
  const bool exact = config.train.mask_semantics == "exact";
  const int n_tasks = static_cast<int>(mc.tasks.size());
  int64_t step = 0;
  double loss_sum = 0;
  auto run_step = [&]() {
    ++step;
    const Block& b = batches[static_cast<size_t>((step - 1) % pool)];
    const int task = schedule == "joint" ? -1 : static_cast<int>((step - 1) % n_tasks);
    const StepLoss l = train_one_step(model, optimizers, b, task, step, exact, *comm);
    if (device != Device::CPU) ops_for(device).synchronize();  // the step's kernels are done
    loss_sum += l.total;
  };
  t0 = Clock::now();
  plan_step_memory(model, batch);  // as ncsrec train does: buffers and the masked layers' routes
  for (int64_t i = 0; i < warmup; ++i) run_step();
  const double warmup_s = since(t0);
  std::vector<double> step_ms;
  step_ms.reserve(static_cast<size_t>(steps));
  loss_sum = 0;
  const auto start = Clock::now();
  for (int64_t i = 0; i < steps; ++i) {
    const auto s0 = Clock::now();
    run_step();
    step_ms.push_back(1000 * since(s0));
  }
  const double seconds = since(start);
  if (!std::isfinite(loss_sum)) throw UserError("ncsrec bench: the loss is not finite (diverged?)");
  const double mean_loss = loss_sum / static_cast<double>(steps);
  // The split by phase, in steps of their own: its waits for the device would slow the steps above.
  PhaseClock& clock = model.phase_clock();
  clock.enable(device);
  const auto phases_start = Clock::now();
  for (int64_t i = 0; i < phase_steps; ++i) run_step();
  const double phases_wall = since(phases_start);
  clock.disable();
  const double samples_per_s = static_cast<double>(steps * batch) / seconds;
  const double ms_per_step = 1000 * seconds / static_cast<double>(steps);
  std::vector<double> sorted = step_ms;
  std::sort(sorted.begin(), sorted.end());
  const double median_ms = sorted[sorted.size() / 2];
  const double min_ms = sorted.front(), max_ms = sorted.back();
  const int64_t dense_params = model.params().numel();
  const int64_t peak = peak_rss_bytes();

  const std::string blas_core = openblas_core_in_use();
  std::printf("ncsrec bench: %s, batch %lld, %s schedule, %s masks, %lld threads, OpenBLAS kernels %s\n",
              config_path.c_str(), static_cast<long long>(batch), schedule.c_str(), exact ? "exact" : "paper_shared_adam",
              static_cast<long long>(threads), blas_core.c_str());
  std::printf("  device: %s%s\n", device_text.c_str(), device == Device::CPU ? "" : (", " + matmul + " products").c_str());
  const std::string tables_where =
      device == Device::CPU ? "host"
      : model.tables_on_device() ? "device"
                                 : "host (" + model.device_table_limits(config.sparse_optimizer) + ")";
  if (device != Device::CPU) std::printf("  embedding tables: on the %s\n", tables_where.c_str());
  std::printf("  model: input %lld, shared", static_cast<long long>(model.input_dim()));
  for (auto s : mc.shared) std::printf(" %lld", static_cast<long long>(s));
  std::printf(", %d tasks; optimizers %s (dense) + sparse %s\n", n_tasks, config.dense_optimizer.type.c_str(),
              config.sparse_optimizer.type.c_str());
  std::printf("  parameters: dense %lld (masked weights %lld, mask density %.4f per task), embedding rows %lld "
              "(%lld values) in %zu tables\n",
              static_cast<long long>(dense_params), static_cast<long long>(masked_total),
              static_cast<double>(masked_on) / static_cast<double>(masked_total * n_tasks),
              static_cast<long long>(embedding_rows), static_cast<long long>(embedding_params), model.tables().size());
  std::printf("  data: %lld distinct batches in memory, Zipf exponent %.3g, %.1f ids per row; built in %.1f s, "
              "batches in %.1f s, %lld warmup steps in %.1f s\n",
              static_cast<long long>(pool), zipf, static_cast<double>(ids_total) / static_cast<double>(pool * batch),
              build_s, gen_s, static_cast<long long>(warmup), warmup_s);
  std::printf("  %lld timed steps in %.2f s: %.1f ms/step (median %.1f, min %.1f, max %.1f)\n",
              static_cast<long long>(steps), seconds, ms_per_step, median_ms, min_ms, max_ms);
  JsonObject phases_json;
  if (phase_steps > 0) {
    std::printf("  time per step by phase (%lld more steps, the device waited for after each phase):\n",
                static_cast<long long>(phase_steps));
    double total = 0;
    for (int p = 0; p < kStepPhases; ++p) total += clock.seconds()[static_cast<size_t>(p)];
    for (int p = 0; p < kStepPhases; ++p) {
      const double ms = 1000 * clock.seconds()[static_cast<size_t>(p)] / static_cast<double>(phase_steps);
      std::printf("    %-48s %8.2f ms %5.1f%%\n", step_phase_name(static_cast<StepPhase>(p)), ms,
                  total > 0 ? 100 * clock.seconds()[static_cast<size_t>(p)] / total : 0.0);
      phases_json.add(step_phase_name(static_cast<StepPhase>(p)), ms);
    }
    std::printf("    %-48s %8.2f ms (%.2f ms/step by the wall clock)\n", "sum", 1000 * total / static_cast<double>(phase_steps),
                1000 * phases_wall / static_cast<double>(phase_steps));
  }
  const std::string route_choices = describe_masked_route_choices();
  if (device != Device::CPU) {
    std::printf("  masked layers' route: %s\n", route.c_str());
    if (!route_choices.empty()) {
      std::printf("  measured per shape (one forward and backward of the layer, best of 3):\n");
      std::istringstream lines(route_choices);
      for (std::string line; std::getline(lines, line);) std::printf("    %s\n", line.c_str());
    }
  }
  const std::string cpu_routes = cpu_masked_routes_taken();
  if (device == Device::CPU)
    std::printf("  masked layers' route (run.masked_route: %s): %s%s\n", route.c_str(), cpu_routes.c_str(),
                cpu_routes == "fused" ? " (products over the masks' connections only)" : "");
  std::printf("  peak memory (VmHWM): %.2f GiB\n", static_cast<double>(peak) / (1024.0 * 1024 * 1024));
  std::printf("samples/s: %.0f\n", samples_per_s);

  const std::string json_path = args.get("json");
  if (!json_path.empty()) {
    JsonObject j;
    j.add("tool", "ncsrec")
        .add("config", config_path)
        .add("batch", batch)
        .add("steps", steps)
        .add("warmup", warmup)
        .add("density", density)
        .add("threads", threads)
        .add("openblas_core", blas_core)
        .add("device", device_text)
        .add("matmul", device == Device::CPU ? std::string("fp32") : matmul)
        .add("masked_route", device == Device::CPU ? cpu_routes : route)
        .add("tables_on", tables_where)
        .add_raw("masked_route_measurements", masked_route_choices_json())
        .add("schedule", schedule)
        .add("mask_semantics", config.train.mask_semantics)
        .add("zipf", zipf)
        .add("seconds", seconds)
        .add("samples_per_s", samples_per_s)
        .add("ms_per_step", ms_per_step)
        .add("median_ms", median_ms)
        .add("min_ms", min_ms)
        .add("max_ms", max_ms)
        .add("dense_params", dense_params)
        .add("masked_weights", masked_total)
        .add("embedding_rows", embedding_rows)
        .add("embedding_params", embedding_params)
        .add("peak_rss_bytes", peak)
        .add("phase_steps", phase_steps)
        .add("phases_ms_per_step", phases_json)
        .add("mean_loss", mean_loss);
    std::ofstream f(json_path);
    f << j.str() << "\n";
    if (!f) throw UserError("ncsrec bench: cannot write " + json_path);
  }
  return 0;
}

}  // namespace ncsrec
