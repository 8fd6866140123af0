#include "train/train_config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "core/dispatch.h"
#include "core/layers/masked_linear.h"

namespace ncsrec {
namespace {

// `dense`: the dense optimizer (the sparse ones take no weight decay).
OptimizerConfig parse_optimizer(ConfigNode node, const std::string& default_type, double default_lr, bool dense) {
  OptimizerConfig o;
  o.type = node.get_choice("type", {"sgd", "adam", "adagrad"}, default_type);
  o.lr = node.get_double("lr", default_lr, 0.0, 1e3);
  o.beta1 = node.get_double("beta1", 0.9, 0.0, 0.999999);
  o.beta2 = node.get_double("beta2", 0.999, 0.0, 0.99999999);
  // eps guards a division: it must be positive. Adagrad's customary default is smaller.
  const bool adagrad = o.type == "adagrad";
  o.eps = node.get_double("eps", adagrad ? 1e-10 : 1e-8, 1e-30, 1.0);
  if (adagrad) o.adagrad_eps = o.eps;
  o.initial_accumulator = node.get_double("initial_accumulator", 0.0, 0.0, 1e6);
  if (dense) o.weight_decay = node.get_double("weight_decay", 0.0, 0.0, 10.0);
  else if (node.has("weight_decay"))
    node.fail("weight_decay", "the sparse (embedding) optimizers apply no weight decay; set it under optimizer, "
                              "which decays the dense kernels");
  node.finish();
  return o;
}

LrSchedule parse_lr_schedule(ConfigNode node) {
  LrSchedule s;
  s.warmup_steps = node.get_int("warmup_steps", 0, 0, INT64_MAX);
  s.decay = node.get_choice("decay", {"none", "linear", "cosine", "exponential", "step"}, "none");
  s.decay_steps = node.get_int("decay_steps", 0, 0, INT64_MAX);
  s.decay_rate = node.get_double("decay_rate", 0.5, 1e-12, 1.0);
  s.min_ratio = node.get_double("min_ratio", 0.0, 0.0, 1.0);
  if (s.decay != "none" && s.decay_steps == 0)
    node.fail("decay_steps", "required (> 0) with decay: " + s.decay + ": the steps after warm-up that the decay spans");
  node.finish();
  validate_lr_schedule(s);
  return s;
}

// The logit correction: a task trained on the sampled label saw its negatives at `rate`, so
// its odds are 1/rate too high and σ(logit + log rate) is calibrated. A task over rows whose
// given label is the sampled one lost no rows. Any other task saw a biased mix it cannot be
// corrected for by an offset; the weight correction serves every task.
void apply_negative_sampling(TrainConfig& c) {
  if (c.data.negative_label.empty() || c.data.negative_correction != "logit") return;
  const std::string where = c.model.source + ": data.negative_sampling.correction: logit";
  const std::string& label = c.data.negative_label;
  const std::string instead = "; use correction: weight, which corrects every task";
  if (c.model.type == "three_tower")
    throw ConfigError(where + " is not supported for three_tower (its mixed score has no single logit)" + instead);
  auto task_label = [&](const std::string& name) {
    for (const TaskSpec& t : c.model.tasks)
      if (t.name == name) return t.label;
    return std::string();
  };
  for (size_t i = 0; i < c.model.tasks.size(); ++i) {
    TaskSpec& t = c.model.tasks[i];
    // ESMM: the CVR tower is trained through pCTCVR = pCTR·pCVR over impressions; with the
    // click label sampled, the conversions (all clicked) are all kept, so pCVR is unbiased
    // and correcting pCTR corrects pCTCVR.
    const bool esmm_cvr = c.model.esmm && i == 1 && c.model.tasks[0].label == label;
    const bool given_sampled = !t.given.empty() && task_label(t.given) == label;
    if (t.label == label) {
      if (t.loss == "mse")
        throw ConfigError(where + ": task " + t.name + " has loss mse, which trains on positives only" + instead);
      t.logit_offset = std::log(c.data.negative_rate);
    } else if (!esmm_cvr && !given_sampled) {
      throw ConfigError(where + ": task " + t.name + " (label " + t.label + ") is trained on rows whose " + label +
                        " negatives were downsampled, and no logit offset calibrates it" + instead);
    }
  }
}

TrainConfig parse_root(ConfigNode root) {
  TrainConfig c;
  ConfigNode run = root.child("run");
  c.seed = static_cast<uint64_t>(run.get_int("seed", 1, 0, INT64_MAX));
  c.device = run.get_choice("device", {"cpu", "cuda", "auto"}, "cpu");
  c.matmul = run.get_choice("matmul", matmul_precision_names(), "fp32");
  c.dense_comm = run.get_choice("dense_comm", {"auto", "nccl", "host"}, "auto");
  c.masked_route = run.get_choice("masked_route", masked_route_names(), "auto");
  c.threads = run.get_int("threads", 0, 0, 1024);
  c.comm_timeout = run.get_double("comm_timeout", 60, 1, 86400);
  c.bucket_mb = run.get_double("bucket_mb", 25, 0.001, 4096);
  run.finish();

  ConfigNode data = root.child("data");
  c.data.train = data.get_string_list("train", {});
  if (c.data.train.empty()) data.fail("train", "required: a list of day folders or shard files");
  c.data.eval = data.get_string_list("eval", {});
  c.data.valid = data.get_string_list("valid", {});
  c.data.window_rows = data.get_int("window_rows", 1 << 18, 1, int64_t(1) << 32);
  c.data.group_meta = data.get_string("group_meta", "user_id");
  if (data.has("negative_sampling")) {
    ConfigNode sampling = data.child("negative_sampling");
    c.data.negative_label = sampling.get_string("label");
    if (!sampling.has("rate")) sampling.fail("rate", "required: the probability of keeping a negative, in (0, 1]");
    c.data.negative_rate = sampling.get_double("rate", 1.0, 0.0, 1.0);
    if (c.data.negative_rate <= 0)
      sampling.fail("rate", "the probability of keeping a negative must be above 0 (1 keeps every row)");
    c.data.negative_correction = sampling.get_choice("correction", {"logit", "weight", "none"}, "logit");
    sampling.finish();
  }
  data.finish();

  c.model = parse_model_config(root.child("model"));
  c.dense_optimizer = parse_optimizer(root.child("optimizer"), "adam", 1e-3, true);
  c.sparse_optimizer = parse_optimizer(root.child("sparse_optimizer"), "adagrad", 0.05, false);

  ConfigNode train = root.child("train");
  c.train.batch_size = train.get_int("batch_size", 1024, 1, 1 << 24);
  c.train.epochs = train.get_int("epochs", 1, 1, 100000);
  c.train.max_steps = train.get_int("max_steps", 0, 0, INT64_MAX);
  c.train.log_every = train.get_int("log_every", 100, 1, INT64_MAX);
  c.train.eval_batch_size = train.get_int("eval_batch_size", 8192, 1, 1 << 24);
  c.train.shuffle = train.get_bool("shuffle", true);
  c.train.schedule = train.get_choice("schedule", {"joint", "alternating"}, "joint");
  c.train.mask_semantics = train.get_choice("mask_semantics", {"exact", "paper_shared_adam"}, "exact");
  c.train.lr_schedule = parse_lr_schedule(train.child("lr_schedule"));
  c.train.clip_grad_norm = train.get_double("clip_grad_norm", 0.0, 0.0, 1e12);
  c.train.checkpoint_every = train.get_int("checkpoint_every", 0, 0, INT64_MAX);
  c.train.keep_checkpoints = train.get_int("keep_checkpoints", 2, 1, 1000);
  c.train.progressive_eval = train.get_bool("progressive_eval", true);
  train.finish();

  ConfigNode init = root.child("init");
  c.init.from = init.get_string("from", "");
  if (init.has("map"))
    for (auto& [key, value] : init.child("map").entries()) {
      if (!value.yaml().IsScalar()) value.fail_here("expected the checkpoint's name prefix (a string)");
      c.init.map.emplace_back(key, value.yaml().as<std::string>());
    }
  else
    init.child("map");
  c.init.reinit = init.get_string_list("reinit", {});
  c.init.optimizer_state = init.get_bool("optimizer_state", true);
  c.init.masks = init.get_bool("masks", true);
  c.init.strict = init.get_bool("strict", true);
  init.finish();
  root.finish();
  if (c.train.schedule == "alternating" && c.model.esmm)
    throw ConfigError(c.model.source + ": train.schedule: esmm trains its two losses together; use joint");
  if (c.train.schedule == "alternating" && c.model.type == "three_tower")
    throw ConfigError(c.model.source + ": train.schedule: three_tower trains its losses together; use joint");
  if (c.model.masks.find == "imp" && c.data.valid.empty())
    throw ConfigError(c.model.source + ": data.valid: model.masks.find: imp picks each task's mask by its AUC on a "
                      "validation split; give data.valid (never the eval data)");
  apply_negative_sampling(c);
  return c;
}

}  // namespace

ReaderOptions training_reader_options(const TrainConfig& config, const std::vector<std::string>& files, int rank,
                                      int world_size, int64_t epoch) {
  ReaderOptions ro;
  ro.files = files;
  ro.batch_size = config.train.batch_size;
  ro.rank = rank;
  ro.world_size = world_size;
  ro.shuffle = config.train.shuffle;
  ro.seed = config.seed;
  ro.epoch = epoch;
  ro.window_rows = config.data.window_rows;
  ro.drop_last = true;
  if (!config.data.negative_label.empty() && config.data.negative_rate < 1.0) {
    ro.negative_label = config.data.negative_label;
    ro.negative_rate = config.data.negative_rate;
    if (config.data.negative_correction == "weight") ro.negative_weight = 1.0 / config.data.negative_rate;
  }
  return ro;
}

TrainConfig parse_train_config(const std::string& yaml_text, const std::string& file_name) {
  return parse_root(ConfigNode::parse(yaml_text, file_name));
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides,
                              std::string* resolved) {
  ConfigNode file = ConfigNode::load_file(path);
  YAML::Node root = YAML::Clone(file.yaml());
  for (const auto& o : overrides) apply_override(root, o);
  YAML::Emitter out;
  out << root;
  if (resolved) *resolved = out.c_str();
  return parse_root(ConfigNode(root, path, ""));
}

}  // namespace ncsrec
