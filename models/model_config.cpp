#include "models/model_config.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace ncsrec {

// ESMM's CTCVR loss constrains only the product pCTR·pCVR: without the CTR loss neither factor
// is determined (and the fused loss's gradients, scaled by this weight, would all be zero).
const char* const kEsmmCtrWeightMessage =
    "esmm needs a CTR loss weight > 0: pCTR (and so pCVR) is learned through the CTR loss";

namespace {

ExpertSpec parse_experts(ConfigNode node, const std::string& type) {
  ExpertSpec e;
  e.sizes = node.get_int_list("sizes", {}, 1, 1 << 16);
  if (e.sizes.empty()) node.fail("sizes", "experts need sizes: [hidden sizes] (e.g. [64])");
  e.masked = node.get_bool("masked", false);
  if (type == "mmoe") {
    e.count = node.get_int("count", 4, 1, 256);
  } else {
    e.levels = node.get_int("levels", 1, 1, 16);
    e.task_experts = node.get_int("task_experts", 1, 0, 256);
    e.shared_experts = node.get_int("shared_experts", 1, 0, 256);
    if (e.task_experts + e.shared_experts == 0) node.fail("task_experts", "a PLE gate needs at least one expert");
    if (e.masked && e.levels > 1)
      node.fail("masked", "masked experts in PLE need levels: 1 (CGC): the shared gate of a deeper PLE reads the "
                          "shared experts and no task's mask is the right one for it");
    if (e.masked && e.shared_experts == 0) node.fail("masked", "only shared experts are masked; give shared_experts");
  }
  node.finish();
  return e;
}

LayerOptions parse_layers(ConfigNode node) {
  LayerOptions l;
  const std::string norm = node.get_choice("norm", {"none", "batch", "layer"}, "none");
  l.norm = norm == "batch" ? Norm::Batch : norm == "layer" ? Norm::Layer : Norm::None;
  l.norm_momentum = node.get_double("momentum", 0.99, 0.0, 1.0);
  l.dropout = node.get_double("dropout", 0.0, 0.0, 0.95);
  node.finish();
  return l;
}

ApgSpec parse_apg(ConfigNode node) {
  ApgSpec a;
  a.in = node.get_string_list("in", {});
  for (const auto& w : a.in)
    if (w != "towers" && w != "bottom" && w != "experts") node.fail("in", "'" + w + "' is not one of towers, bottom, experts");
  a.options.rank = node.get_int("rank", 8, 1, 4096);
  a.options.overparam = node.get_int("overparam", 0, 0, 1 << 16);
  if (a.options.overparam > 0 && a.options.overparam < a.options.rank)
    node.fail("overparam", "over-parameterisation needs overparam >= rank (or 0 for off)");
  a.options.hyper_hidden = node.get_int_list("hyper_hidden", {64}, 1, 1 << 16);
  a.options.generate_bias = node.get_bool("generate_bias", false);
  a.condition = node.get_string_list("condition", {});
  node.finish();
  return a;
}

MaskSpec parse_masks(ConfigNode node, int64_t shared_layers) {
  MaskSpec m;
  std::vector<int64_t> all;
  for (int64_t i = 0; i < shared_layers; ++i) all.push_back(i);
  m.layers = node.get_int_list("layers", all, 0, std::max<int64_t>(shared_layers - 1, 0));
  m.file = node.get_string("file", "");
  m.find = node.get_choice("find", {"none", "imp", "learned"}, "none");
  m.final_density = node.get_double("final_density", 0.2, 1e-6, 1.0);
  m.rounds = static_cast<int>(node.get_int("rounds", 4, 1, 100));
  m.epochs_per_round = node.get_int("epochs_per_round", 1, 1, 1000);
  m.shared_init = node.get_bool("shared_init", true);
  m.keep = node.get_choice("keep", {"best_valid", "last"}, "best_valid");
  if (m.find != "imp" && node.has("keep")) node.fail("keep", "only IMP (find: imp) keeps one of its rounds");
  m.score_init = node.get_double("score_init", 0.01, 0.0, 10.0);
  m.sparsity = node.get_choice("sparsity", {"topk", "penalty"}, "topk");
  m.penalty_gain = node.get_double("penalty_gain", 1.0, 1e-6, 1e3);
  if (m.find != "learned" && node.has("sparsity")) node.fail("sparsity", "only learned masks (find: learned) have a sparsity method");
  if (!m.file.empty() && m.find != "none") node.fail("file", "give either masks.file or masks.find, not both");
  node.finish();
  return m;
}

TowerSpec parse_tower(ConfigNode node, const std::string& side) {
  TowerSpec t;
  t.slots = node.get_string_list("slots", {});
  t.dense = node.get_int_list("dense", {}, 0, 1 << 20);
  t.sizes = node.get_int_list("sizes", {}, 1, 1 << 16);
  if (t.sizes.empty()) node.fail("sizes", "the " + side + " tower needs sizes: [hidden sizes..., embedding width] (e.g. [128, 64, 32])");
  if (t.slots.empty() && t.dense.empty()) node.fail_here("the " + side + " tower reads nothing: give slots and/or dense columns");
  node.finish();
  return t;
}

ThreeTowerSpec parse_three_tower(ConfigNode& node, size_t tasks) {
  ThreeTowerSpec s;
  ConfigNode towers = node.child("towers");
  s.user = parse_tower(towers.child("user"), "user");
  s.item = parse_tower(towers.child("item"), "item");
  towers.finish();
  if (s.user.sizes.back() != s.item.sizes.back())
    towers.fail("item.sizes", "the user and item towers end in the embedding they take the inner product of: their last "
                              "sizes must be equal (user " + std::to_string(s.user.sizes.back()) + ", item " +
                              std::to_string(s.item.sizes.back()) + ")");
  std::set<std::string> user(s.user.slots.begin(), s.user.slots.end());
  for (const auto& slot : s.item.slots)
    if (user.count(slot)) towers.fail("item.slots", "slot '" + slot + "' is also a user slot; each slot feeds one side");
  for (const auto& col : s.item.dense)
    if (std::find(s.user.dense.begin(), s.user.dense.end(), col) != s.user.dense.end())
      towers.fail("item.dense", "dense column " + std::to_string(col) + " is also a user column; each column feeds one side");
  ConfigNode gate = node.child("gate");
  s.gate = gate.get_bool("enabled", true);
  s.gate_sizes = gate.get_int_list("sizes", {32}, 1, 1 << 16);
  gate.finish();
  ConfigNode mix = node.child("mix");
  s.mix_weight = mix.get_double("weight", 1.0, 0.0, 1e6);
  std::vector<double> uniform(tasks, 1.0 / static_cast<double>(std::max<size_t>(tasks, 1)));
  s.mix_targets = mix.get_double_list("targets", uniform, 0.0, 1.0);
  if (s.mix_targets.size() != tasks) mix.fail("targets", "one share per task expected (" + std::to_string(tasks) + ")");
  double sum = 0;
  for (double v : s.mix_targets) sum += v;
  if (std::abs(sum - 1.0) > 1e-9) mix.fail("targets", "the shares must sum to 1 (they are a label's weights)");
  mix.finish();
  ConfigNode distill = node.child("distill");
  s.teacher = distill.get_string("teacher", "");
  s.distill_weight = distill.get_double("weight", 1.0, 0.0, 1e6);
  distill.finish();
  return s;
}

}  // namespace

std::string joint_task_name(const std::string& given, const std::string& task) {
  return given == "ctr" && task == "cvr" ? "ctcvr" : given + "_" + task;
}

ModelConfig parse_model_config(ConfigNode node) {
  ModelConfig m;
  m.source = node.file();
  m.type = node.get_choice("type", {"single_task", "shared_embedding", "shared_bottom", "esmm", "ncs", "mmoe", "ple", "three_tower"},
                           "esmm");
  m.esmm = node.get_bool("esmm", m.type == "esmm");
  if (m.type == "esmm" && !m.esmm) node.fail("esmm", "type esmm always has ESMM heads; use type shared_embedding");
  if (m.esmm && m.type == "single_task")
    node.fail("esmm", "ESMM heads share the embeddings of both towers; single_task shares nothing");
  m.layers = parse_layers(node.child("layers"));
  m.apg = parse_apg(node.child("apg"));
  m.loss_weighting =
      node.get_choice("loss_weighting", {"fixed", "uncertainty"}, m.type == "three_tower" ? "uncertainty" : "fixed");
  if (m.type == "mmoe" || m.type == "ple") m.experts = parse_experts(node.child("experts"), m.type);
  else if (node.has("experts")) node.fail("experts", "experts are only used by types mmoe and ple");
  else node.child("experts");
  m.embedding_dim = node.get_int("embedding_dim", 8, 1, 1024);
  m.embedding_init = node.get_double("embedding_init", 0.05, 0.0, 10.0);
  m.use_dense = node.get_bool("use_dense", true);
  m.interaction = node.get_choice("interaction", {"none", "dot"}, "none");
  m.bottom = node.get_int_list("bottom", {}, 1, 1 << 16);
  m.shared = node.get_int_list("shared", {}, 1, 1 << 16);
  // An empty tower (`tower: []`) is a linear head, as in the NCS4CVR paper.
  const std::vector<int64_t> default_tower = node.get_int_list("tower", {64, 32}, 1, 1 << 16);

  ConfigNode tasks = node.child("tasks");
  if (tasks.size() == 0) tasks.fail_here("at least one task is required (e.g. ctr: {label: click})");
  for (auto& [name, t] : tasks.entries()) {
    TaskSpec spec;
    spec.name = name;
    spec.label = t.get_string("label");
    spec.given = t.get_string("given", "");
    spec.tower = t.get_int_list("tower", default_tower, 1, 1 << 16);
    spec.loss_weight = t.get_double("loss_weight", 1.0, 0.0, 1e6);
    spec.loss = t.get_choice("loss", {"bce", "focal", "mse"}, "bce");
    spec.focal_alpha = t.get_double("focal_alpha", 0.75, 0.0, 1.0);
    spec.focal_gamma = t.get_double("focal_gamma", 2.0, 0.0, 100.0);
    t.finish();
    m.tasks.push_back(spec);
  }
  std::set<std::string> names;
  for (const auto& t : m.tasks) names.insert(t.name);
  for (const auto& t : m.tasks)
    if (!t.given.empty() && (!names.count(t.given) || t.given == t.name))
      tasks.fail(t.name + ".given", "'" + t.given + "' is not another task of this model");

  if (m.esmm) {
    if (m.tasks.size() != 2 || !m.tasks[0].given.empty() || m.tasks[1].given != m.tasks[0].name)
      tasks.fail_here("esmm needs exactly two tasks, a CTR task first and a CVR task second with given: <ctr task>");
    if (!(m.tasks[0].loss_weight > 0)) tasks.fail(m.tasks[0].name + ".loss_weight", kEsmmCtrWeightMessage);
    for (const auto& t : m.tasks)
      if (t.loss != "bce") tasks.fail(t.name + ".loss", "esmm trains its two heads with its own BCE losses");
  }
  if (m.type != "shared_bottom" && !m.bottom.empty())
    node.fail("bottom", "a shared bottom MLP is only used by type shared_bottom");
  if (m.type == "shared_bottom" && m.bottom.empty()) node.fail("bottom", "shared_bottom needs bottom: [sizes]");
  if (m.type != "ncs" && !m.shared.empty()) node.fail("shared", "masked shared layers are only used by type ncs");
  if (m.type == "ncs" && m.shared.empty()) node.fail("shared", "ncs needs shared: [sizes] (the paper: [512, 256, 128])");
  if (m.type == "ncs") m.masks = parse_masks(node.child("masks"), static_cast<int64_t>(m.shared.size()));
  else if (m.experts.masked) m.masks = parse_masks(node.child("masks"), static_cast<int64_t>(m.experts.sizes.size()));
  else if (node.has("masks")) node.fail("masks", "masks are only used by type ncs and by masked experts");
  else node.child("masks");
  if (m.type == "ple")
    for (const auto& t : m.tasks)
      if (t.name == "shared") tasks.fail("shared", "PLE names its shared experts 'shared'; rename the task");
  for (const auto& w : m.apg.in) {
    if (w == "bottom" && m.type != "shared_bottom") node.fail("apg", "apg.in: bottom needs type shared_bottom");
    if (w == "experts" && m.type != "mmoe" && m.type != "ple") node.fail("apg", "apg.in: experts needs type mmoe or ple");
    if (w == "experts" && m.experts.masked) node.fail("apg", "apg.in: experts: masked experts are masked linear layers, not APG");
  }

  if (node.has("history")) {
    ConfigNode h = node.child("history");
    // An empty file turns the features off (a config can carry the rest for runs that add the file).
    m.history.file = h.get_string("file", "");
    m.history.aggregate = h.get_choice("aggregate", {"mean", "attention"}, "mean");
    m.history.interact = h.get_bool("interact", false);
    if (h.yaml()["features"] && h.yaml()["features"].IsSequence()) {
      for (const std::string& name : h.get_string_list("features", {})) m.history.features.emplace_back(name, name);
    } else {
      for (auto& [name, slot] : h.child("features").entries()) {
        if (!slot.yaml().IsScalar()) slot.fail_here("expected the data slot whose ids read this table");
        m.history.features.emplace_back(name, slot.yaml().as<std::string>());
      }
    }
    if (m.history.enabled() && m.history.features.empty())
      h.fail("features", "required: the history tables to read, e.g. [user_id, item_id] or {user_id: user_id}");
    h.finish();
    if (m.history.enabled() && m.type == "three_tower") node.fail("history", "three_tower picks its inputs by slot; history features are not supported");
  }

  if (m.type == "three_tower") {
    if (m.esmm) node.fail("esmm", "three_tower scores every task over all impressions itself; drop esmm");
    if (node.has("tower")) node.fail("tower", "three_tower has towers.user and towers.item, not per-task towers");
    for (const auto& t : m.tasks) {
      if (t.loss != "bce") tasks.fail(t.name + ".loss", "three_tower trains every task with BCE");
      if (!t.given.empty()) {
        const auto& g = *std::find_if(m.tasks.begin(), m.tasks.end(), [&](const TaskSpec& x) { return x.name == t.given; });
        if (!g.given.empty()) tasks.fail(t.name + ".given", "'" + t.given + "' is itself given another task; one level only");
      }
    }
    if (m.interaction != "none") node.fail("interaction", "three_tower keeps user and item inputs apart; no interaction");
    if (!m.apg.in.empty()) node.fail("apg", "three_tower has no APG layers");
    m.three_tower = parse_three_tower(node, m.tasks.size());
  } else {
    for (const char* key : {"towers", "gate", "mix", "distill"})
      if (node.has(key)) node.fail(key, std::string(key) + " is only used by type three_tower");
  }

  ConfigNode tables = node.child("tables");
  if (tables.size() == 0) tables.fail_here("at least one embedding table is required");
  std::set<std::string> used_slots;
  for (auto& [name, t] : tables.entries()) {
    TableSpec spec;
    spec.name = name;
    if (t.has("rows") == t.has("capacity"))
      t.fail_here("give either rows (a fixed table: ids modulo rows) or capacity (a hash table: a row per id)");
    if (t.has("rows")) {
      spec.rows = t.get_int("rows", 1, int64_t(1) << 40);
      for (const char* key : {"admit_after", "ttl_days", "evict_when_full"})
        if (t.has(key)) t.fail(key, std::string(key) + " is for hash tables (give capacity instead of rows)");
    } else {
      spec.capacity = t.get_int("capacity", 1, int64_t(1) << 40);
      spec.admit_after = t.get_int("admit_after", 1, 1, int64_t(1) << 40);
      spec.ttl_days = t.get_int("ttl_days", 0, 0, 1 << 20);
      spec.evict_when_full = t.get_bool("evict_when_full", false);
    }
    spec.slots = t.get_string_list("slots", {name});
    spec.pooling = t.get_choice("pooling", {"sum", "mean"}, "sum") == "sum" ? Pooling::Sum : Pooling::Mean;
    spec.max_ids_per_row = t.get_int("max_ids_per_row", 1, 1, 1 << 20);
    spec.placement = t.get_choice("placement", {"row_wise", "table_wise", "replicated"}, "row_wise");
    spec.table_rank = t.get_int("table_rank", 0, 0, 1 << 20);
    if (t.has("table_rank") && spec.placement != "table_wise")
      t.fail("table_rank", "table_rank is only for placement: table_wise");
    if (spec.capacity > 0 && spec.placement == "replicated")
      t.fail("placement", "a hash table cannot be replicated (each rank would insert other ids); use row_wise or table_wise");
    t.finish();
    for (const auto& s : spec.slots)
      if (!used_slots.insert(s).second) t.fail("slots", "slot '" + s + "' is already read by another table");
    if (spec.capacity > 0 && m.masks.find == "imp")
      t.fail("capacity", "masks.find: imp rewinds the tables to their first values, which a hash table (rows "
                         "inserted as ids arrive) does not keep; use a fixed table (rows) or masks.find: learned");
    m.tables.push_back(spec);
  }
  if (m.type == "three_tower") {
    const ThreeTowerSpec& s = m.three_tower;
    for (const auto* side : {&s.user, &s.item})
      for (const auto& slot : side->slots)
        if (!used_slots.count(slot))
          node.fail("towers", "slot '" + slot + "' is read by no table in model.tables (list it in a table's slots)");
    for (const auto& slot : used_slots)
      if (std::find(s.user.slots.begin(), s.user.slots.end(), slot) == s.user.slots.end() &&
          std::find(s.item.slots.begin(), s.item.slots.end(), slot) == s.item.slots.end())
        node.fail("towers", "slot '" + slot + "' of model.tables feeds neither tower; add it to towers.user.slots or "
                            "towers.item.slots, or drop it from the tables");
  }
  node.finish();
  return m;
}

}  // namespace ncsrec
