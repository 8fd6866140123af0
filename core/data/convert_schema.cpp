// Parsing the convert schema YAML into ConvertSchema (plain structs), with every check that can
// be made before reading data: names, one source per entry, one label rule per label, split
// fractions summing to 1, columns that exist and columns that nobody uses.
#include "core/data/convert_schema.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/config.h"
#include "core/data/csv_reader.h"
#include "core/error.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;

char parse_char(ConfigNode& node, const std::string& key, char fallback, bool allow_none) {
  if (!node.has(key)) return fallback;
  const std::string s = node.get_string(key);
  if (s == "\\t" || s == "tab") return '\t';
  if (s.size() == 1) return s[0];
  if (s.empty() && allow_none) return 0;
  node.fail(key, "expected one character (\"\\t\" or tab for a tab" + std::string(allow_none ? ", \"\" for none" : "") +
                     "), got '" + s + "'");
}

void check_name(ConfigNode& node, const std::string& key, const std::string& name) {
  if (name.empty()) node.fail(key, "a name may not be empty");
  if (name.find_first_of(",/") != std::string::npos) node.fail(key, "'" + name + "': a name may not contain ',' or '/'");
}

const std::vector<std::string> kTopLevelKeys = {"input", "labels", "weight", "dense", "sparse", "meta", "split", "output"};

// ConfigNode::child takes maps only; a list section is wrapped by hand (the top level's unknown
// keys are checked against kTopLevelKeys instead of by finish()).
ConfigNode list_of(ConfigNode& root, const std::string& key) {
  return ConfigNode(root.yaml()[key], root.file(), key);
}

void check_top_level_keys(const ConfigNode& root) {
  std::string known;
  for (const auto& k : kTopLevelKeys) known += (known.empty() ? "" : ", ") + k;
  for (auto it = root.yaml().begin(); it != root.yaml().end(); ++it) {
    const std::string key = it->first.as<std::string>();
    if (std::find(kTopLevelKeys.begin(), kTopLevelKeys.end(), key) == kTopLevelKeys.end())
      root.fail(key, "unknown key (known keys here: " + known + ")");
  }
}

// Reads `column:` / `key:` of an entry (exactly one).
ValueSource parse_source(ConfigNode& node, const InputSpec& input) {
  ValueSource s;
  s.column = node.get_string("column", "");
  s.key = node.get_string("key", "");
  if (!s.key.empty() && input.format != InputFormat::kv)
    node.fail("key", "keys exist only with input.format: kv (use column:)");
  if (s.column.empty() == s.key.empty())
    node.fail_here(input.format == InputFormat::kv ? "give exactly one of column: (a prefix column) or key:"
                                                   : "column: is required");
  return s;
}

// One list entry of dense/sparse: a plain name, a map with column/key, or a map with
// columns/keys naming several at once (each its own entry, named after its column or key).
template <typename Parse>
void parse_entries(ConfigNode& root, const std::string& section, const InputSpec& input, Parse parse_one) {
  if (!root.has(section)) return;
  ConfigNode list = list_of(root, section);
  for (ConfigNode& item : list.items()) {
    if (item.yaml().IsScalar()) {  // a plain name: {column: name} with every default
      ConfigNode defaults(YAML::Node(YAML::NodeType::Map), item.file(), item.path());
      parse_one(defaults, ValueSource{item.yaml().Scalar(), ""}, item.yaml().Scalar());
      continue;
    }
    if (!item.is_map()) item.fail_here("expected a column name or a map");
    const bool many_columns = item.has("columns"), many_keys = item.has("keys");
    if (many_columns || many_keys) {
      if (many_keys && input.format != InputFormat::kv) item.fail("keys", "keys exist only with input.format: kv");
      if (item.has("name") || item.has("column") || item.has("key"))
        item.fail_here("give either columns:/keys: (several entries named after them) or name/column/key");
      const std::string which = many_columns ? "columns" : "keys";
      if (many_columns && many_keys) item.fail_here("give columns: or keys:, not both");
      const std::vector<std::string> names = item.get_string_list(which, {});
      if (names.empty()) item.fail(which, "the list is empty");
      for (const auto& n : names) {
        ValueSource s;
        (many_columns ? s.column : s.key) = n;
        parse_one(item, s, n);
      }
      continue;
    }
    ValueSource s = parse_source(item, input);
    const std::string name = item.get_string("name", s.column.empty() ? s.key : s.column);
    parse_one(item, s, name);
  }
}

std::vector<std::string> read_columns_file(ConfigNode& node, const std::string& path) {
  std::ifstream in(path);
  if (!in) node.fail("columns_file", "cannot open " + path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string_view t = trim_blanks(line);
    if (!t.empty() && t[0] != '#') out.emplace_back(t);
  }
  if (out.empty()) node.fail("columns_file", path + " lists no columns");
  return out;
}

}  // namespace

DataSchema ConvertSchema::data_schema() const {
  DataSchema s;
  for (const auto& l : labels) s.tasks.push_back(l.name);
  s.has_weight = weight.present;
  s.dense_dim = static_cast<int64_t>(dense.size());
  for (const auto& slot : slots) s.slots.push_back(slot.name);
  for (const auto& m : meta) s.meta.push_back(m.name);
  return s;
}

bool ConvertSchema::needs_statistics() const {
  return std::any_of(dense.begin(), dense.end(), [](const DenseSpec& d) { return d.standardize; });
}

std::vector<std::string> ConvertSchema::used_columns() const {
  std::vector<std::string> out;
  auto add = [&](const ValueSource& s) {
    if (!s.column.empty() && std::find(out.begin(), out.end(), s.column) == out.end()) out.push_back(s.column);
  };
  for (const auto& l : labels) add(l.source);
  if (weight.present) add(weight.source);
  for (const auto& d : dense) add(d.source);
  for (const auto& s : slots) add(s.source);
  for (const auto& m : meta) add(m.source);
  return out;
}

ConvertSchema load_convert_schema(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open the schema file");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const fs::path parent = fs::path(path).parent_path();
  return parse_convert_schema(text, path, parent.empty() ? "." : parent.string());
}

ConvertSchema parse_convert_schema(const std::string& yaml_text, const std::string& file, const std::string& base_dir) {
  ConfigNode root = ConfigNode::parse(yaml_text, file);
  check_top_level_keys(root);
  ConvertSchema schema;
  schema.file = file;

  // ---- input
  ConfigNode in = root.child("input");
  InputSpec& input = schema.input;
  input.format = in.get_choice("format", {"csv", "kv"}, "csv") == "kv" ? InputFormat::kv : InputFormat::csv;
  input.delimiter = parse_char(in, "delimiter", ',', false);
  input.quote = parse_char(in, "quote", '"', true);
  if (input.quote && input.quote == input.delimiter) in.fail("quote", "the quote character equals the delimiter");
  input.trim = in.get_bool("trim", false);
  input.header = in.get_bool("header", false);
  const bool has_columns = in.has("columns"), has_columns_file = in.has("columns_file");
  if (has_columns && has_columns_file) in.fail("columns_file", "give columns: or columns_file:, not both");
  input.columns = in.get_string_list("columns", {});
  if (has_columns_file) {
    const std::string p = in.get_string("columns_file");
    input.columns = read_columns_file(in, fs::path(p).is_absolute() ? p : (fs::path(base_dir) / p).string());
  } else {
    in.get_string("columns_file", "");
  }
  if (input.format == InputFormat::csv) {
    if (input.header && (has_columns || has_columns_file))
      in.fail("columns", "give header: true (names from the first line) or columns:, not both");
    if (!input.header && !has_columns && !has_columns_file)
      in.fail_here("without header: true, name the columns with columns: or columns_file:");
  } else if (input.header) {
    in.fail("header", "format kv has no header line; name the fixed prefix columns with columns:");
  }
  {
    std::set<std::string> seen;
    for (const auto& c : input.columns)
      if (!seen.insert(c).second) in.fail("columns", "column '" + c + "' is listed twice");
  }
  input.ignore = in.get_string_list("ignore", {});
  input.missing = in.get_string_list("missing", input.missing);
  input.kv_separator = parse_char(in, "kv_separator", ':', false);
  input.ignore_unknown_keys = in.get_choice("unknown_keys", {"reject", "ignore"}, "reject") == "ignore";
  if (input.format != InputFormat::kv) {
    if (in.has("kv_separator")) in.fail("kv_separator", "only for format: kv");
    if (in.has("unknown_keys")) in.fail("unknown_keys", "only for format: kv");
  }
  in.finish();

  // ---- labels
  std::set<std::string> names;
  auto unique = [&](ConfigNode& node, const std::string& key, const std::string& name, const char* what) {
    check_name(node, key, name);
    if (!names.insert(std::string(what) + "/" + name).second)
      node.fail(key, std::string("two ") + what + " are named '" + name + "'");
  };
  if (root.has("labels")) {
    ConfigNode list = list_of(root, "labels");
    for (ConfigNode& item : list.items()) {
      if (!item.is_map()) item.fail_here("expected a map with name, column and a rule (equals, in, threshold or float)");
      LabelSpec l;
      l.name = item.get_string("name");
      unique(item, "name", l.name, "labels");
      l.source = parse_source(item, input);
      const int rules = item.has("equals") + item.has("in") + item.has("threshold") + item.has("float");
      if (rules != 1)
        item.fail_here("give exactly one rule: equals: VALUE, in: [VALUES], threshold: NUMBER or float: true");
      if (item.has("equals")) {
        l.rule = LabelRule::equals;
        l.positives = {item.get_string("equals")};
      } else if (item.has("in")) {
        l.rule = LabelRule::in_set;
        l.positives = item.get_string_list("in", {});
        if (l.positives.empty()) item.fail("in", "the list is empty");
      } else if (item.has("threshold")) {
        l.rule = LabelRule::threshold;
        l.threshold = item.get_double("threshold", 0, -1e300, 1e300);
      } else {
        l.rule = LabelRule::value;
        if (!item.get_bool("float", false)) item.fail("float", "float: false is not a rule; remove it or say true");
      }
      if (item.has("negatives") && l.rule != LabelRule::equals && l.rule != LabelRule::in_set)
        item.fail("negatives", "only with equals: or in:");
      l.negatives = item.get_string_list("negatives", {});
      for (const auto& v : l.negatives)
        if (std::find(l.positives.begin(), l.positives.end(), v) != l.positives.end())
          item.fail("negatives", "'" + v + "' is both a positive and a negative value");
      item.finish();
      schema.labels.push_back(l);
    }
  }
  if (schema.labels.empty()) root.fail("labels", "at least one label is required");

  // ---- weight
  if (root.has("weight")) {
    ConfigNode w = root.child("weight");
    schema.weight.present = true;
    schema.weight.source = parse_source(w, input);
    schema.weight.has_fill = w.has("fill");
    schema.weight.fill = w.get_double("fill", 1, -1e300, 1e300);
    w.finish();
  }

  // ---- dense
  parse_entries(root, "dense", input, [&](ConfigNode& item, const ValueSource& s, const std::string& name) {
    DenseSpec d;
    d.name = name;
    d.source = s;
    unique(item, "name", name, "dense features");
    d.has_fill = item.has("fill");
    d.fill = item.get_double("fill", 0, -1e300, 1e300);
    d.has_clip_min = item.has("clip_min");
    d.clip_min = item.get_double("clip_min", 0, -1e300, 1e300);
    d.has_clip_max = item.has("clip_max");
    d.clip_max = item.get_double("clip_max", 0, -1e300, 1e300);
    if (d.has_clip_min && d.has_clip_max && d.clip_min > d.clip_max) item.fail("clip_max", "is below clip_min");
    d.log1p = item.get_bool("log1p", false);
    d.standardize = item.get_bool("standardize", false);
    item.finish();
    schema.dense.push_back(d);
  });

  // ---- sparse
  parse_entries(root, "sparse", input, [&](ConfigNode& item, const ValueSource& s, const std::string& name) {
    SlotSpec slot;
    slot.name = name;
    slot.source = s;
    unique(item, "name", name, "sparse slots");
    slot.salt = item.get_string("salt", name);
    slot.salt_hash = hash_string(slot.salt);
    slot.separator = parse_char(item, "separator", 0, false);
    if (slot.separator && !s.key.empty()) item.fail("separator", "a key's values are already separate pairs; use multi: true");
    if (slot.separator && input.quote == 0 && slot.separator == input.delimiter)
      item.fail("separator", "equals the input delimiter");
    slot.multi = item.get_bool("multi", slot.separator != 0);
    if (slot.multi && !slot.separator && s.key.empty())
      item.fail("multi", "a column holds several values only with a separator:");
    item.finish();
    schema.slots.push_back(slot);
  });

  // ---- meta
  if (root.has("meta")) {
    ConfigNode list = list_of(root, "meta");
    for (ConfigNode& item : list.items()) {
      if (!item.is_map()) item.fail_here("expected a map with name, column and type");
      MetaSpec m;
      m.source = parse_source(item, input);
      m.name = item.get_string("name", m.source.column.empty() ? m.source.key : m.source.column);
      unique(item, "name", m.name, "meta columns");
      const std::string type = item.get_choice("type", {"int", "hash", "date"}, "int");
      m.type = type == "int" ? MetaType::integer : type == "hash" ? MetaType::hash : MetaType::date;
      m.has_fill = item.has("fill");
      m.fill = item.get_int("fill", 0, INT64_MIN, INT64_MAX);
      m.salt_hash = hash_string(m.name);
      item.finish();
      schema.meta.push_back(m);
    }
  }

  // ---- split
  if (root.has("split")) {
    ConfigNode sp = root.child("split");
    SplitSpec& split = schema.split;
    split.present = true;
    split.seed = static_cast<uint64_t>(sp.get_int("seed", 0, INT64_MAX));
    if (!sp.has("parts")) sp.fail("parts", "required key is missing (e.g. parts: {train: 0.8, test: 0.2})");
    ConfigNode parts = sp.child("parts");
    double total = 0;
    for (auto& [part, node] : parts.entries()) {
      double f = 0;
      if (!node.yaml().IsScalar() || !YAML::convert<double>::decode(node.yaml(), f) || !(f > 0 && f <= 1))
        parts.fail(part, "expected a fraction in (0, 1]");
      if (part.empty() || part[0] == '.' || part.find_first_of("/\\") != std::string::npos)
        parts.fail(part, "a part name becomes a folder name: no '/', no leading '.'");
      split.parts.emplace_back(part, f);
      total += f;
    }
    if (split.parts.empty()) sp.fail("parts", "name at least one part");
    if (std::fabs(total - 1.0) > 1e-6) sp.fail("parts", "the fractions sum to " + std::to_string(total) + ", not 1");
    double cum = 0;
    for (const auto& p : split.parts) split.cumulative.push_back(cum += p.second / total);
    split.cumulative.back() = 1.0;
    split.stats_from = sp.get_string("stats_from", "");
    if (!split.stats_from.empty() &&
        std::none_of(split.parts.begin(), split.parts.end(), [&](const auto& p) { return p.first == split.stats_from; }))
      sp.fail("stats_from", "'" + split.stats_from + "' is not one of the parts");
    sp.finish();
  }

  // ---- output
  ConfigNode out = root.child("output");
  schema.shard_rows = out.get_int("shard_rows", schema.shard_rows, 1, int64_t(1) << 40);
  out.finish();

  // ---- columns: those used must exist; those listed must be used or ignored
  const std::vector<std::string> used = schema.used_columns();
  for (const auto& c : input.ignore)
    if (std::find(used.begin(), used.end(), c) != used.end())
      root.fail("input.ignore", "column '" + c + "' is both used and ignored");
  if (!input.columns.empty()) {
    for (const auto& c : used)
      if (std::find(input.columns.begin(), input.columns.end(), c) == input.columns.end())
        root.fail("input.columns", "no column is named '" + c + "' (it is used by the schema)");
    for (const auto& c : input.ignore)
      if (std::find(input.columns.begin(), input.columns.end(), c) == input.columns.end())
        root.fail("input.ignore", "no column is named '" + c + "'");
    std::string unused;
    for (const auto& c : input.columns)
      if (std::find(used.begin(), used.end(), c) == used.end() &&
          std::find(input.ignore.begin(), input.ignore.end(), c) == input.ignore.end())
        unused += (unused.empty() ? "" : ", ") + c;
    if (!unused.empty())
      root.fail("input.ignore", "these columns are neither used nor ignored (list them under input.ignore): " + unused);
  }
  return schema;
}

}  // namespace ncsrec
