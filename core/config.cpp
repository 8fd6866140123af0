#include "core/config.h"

#include <fstream>
#include <sstream>

namespace ncsrec {

namespace {
std::string scalar_text(const YAML::Node& n) {
  if (!n) return "<missing>";
  if (n.IsScalar()) return "'" + n.Scalar() + "'";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a map";
  return "null";
}
}  // namespace

ConfigNode ConfigNode::load_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open the config file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

ConfigNode ConfigNode::parse(const std::string& text, const std::string& file) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(file + ": YAML syntax error at line " + std::to_string(e.mark.line + 1) + ", column " +
                      std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw ConfigError(file + ": the top level must be a map of sections");
  return ConfigNode(root, file, "");
}

ConfigNode::ConfigNode(YAML::Node node, std::string file, std::string path)
    : node_(std::move(node)),
      file_(std::make_shared<std::string>(std::move(file))),
      path_(std::move(path)),
      seen_(std::make_shared<std::set<std::string>>()) {}

std::string ConfigNode::key_path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

void ConfigNode::fail(const std::string& key, const std::string& message) const {
  throw ConfigError(*file_ + ": " + key_path(key) + ": " + message);
}

void ConfigNode::fail_here(const std::string& message) const {
  throw ConfigError(*file_ + ": " + (path_.empty() ? "(top level)" : path_) + ": " + message);
}

bool ConfigNode::has(const std::string& key) const {
  return node_.IsMap() && node_[key] && !node_[key].IsNull();
}

YAML::Node ConfigNode::value(const std::string& key) {
  if (!node_.IsMap()) fail_here("expected a map of keys, got " + scalar_text(node_));
  seen_->insert(key);
  return node_[key];
}

std::string ConfigNode::get_string(const std::string& key, const std::string& fallback) {
  YAML::Node v = value(key);
  if (!v || v.IsNull()) return fallback;
  if (!v.IsScalar()) fail(key, "expected a string, got " + scalar_text(v));
  return v.Scalar();
}

std::string ConfigNode::get_string(const std::string& key) {
  // A scalar where a map belongs (`ctr: click`) is that key's mistake, not a missing child.
  if (!node_.IsMap()) fail_here("expected a map of keys, got " + scalar_text(node_));
  if (!has(key)) fail(key, "required key is missing");
  return get_string(key, "");
}

std::string ConfigNode::get_choice(const std::string& key, const std::vector<std::string>& choices,
                                   const std::string& fallback) {
  const std::string s = get_string(key, fallback);
  for (const auto& c : choices)
    if (c == s) return s;
  std::string list;
  for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
  fail(key, "'" + s + "' is not one of: " + list);
}

int64_t ConfigNode::get_int(const std::string& key, int64_t fallback, int64_t min, int64_t max) {
  YAML::Node v = value(key);
  if (!v || v.IsNull()) return fallback;
  int64_t x = 0;
  if (!v.IsScalar() || !YAML::convert<int64_t>::decode(v, x)) fail(key, "expected an integer, got " + scalar_text(v));
  if (x < min || x > max)
    fail(key, std::to_string(x) + " is out of range [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  return x;
}

int64_t ConfigNode::get_int(const std::string& key, int64_t min, int64_t max) {
  if (!node_.IsMap()) fail_here("expected a map of keys, got " + scalar_text(node_));
  if (!has(key)) fail(key, "required key is missing");
  return get_int(key, 0, min, max);
}

double ConfigNode::get_double(const std::string& key, double fallback, double min, double max) {
  YAML::Node v = value(key);
  if (!v || v.IsNull()) return fallback;
  double x = 0;
  if (!v.IsScalar() || !YAML::convert<double>::decode(v, x)) fail(key, "expected a number, got " + scalar_text(v));
  if (!(x >= min && x <= max)) {
    std::ostringstream os;
    os << x << " is out of range [" << min << ", " << max << "]";
    fail(key, os.str());
  }
  return x;
}

bool ConfigNode::get_bool(const std::string& key, bool fallback) {
  YAML::Node v = value(key);
  if (!v || v.IsNull()) return fallback;
  bool b = false;
  if (!v.IsScalar() || !YAML::convert<bool>::decode(v, b)) fail(key, "expected true or false, got " + scalar_text(v));
  return b;
}

std::vector<int64_t> ConfigNode::get_int_list(const std::string& key, const std::vector<int64_t>& fallback,
                                              int64_t min, int64_t max) {
  YAML::Node v = value(key);
  if (!v || v.IsNull()) return fallback;
  if (!v.IsSequence()) fail(key, "expected a list of integers, got " + scalar_text(v));
  std::vector<int64_t> out;
  for (size_t i = 0; i < v.size(); ++i) {
    int64_t x = 0;
    const std::string at = key + "[" + std::to_string(i) + "]";
    if (!v[i].IsScalar() || !YAML::convert<int64_t>::decode(v[i], x))
      fail(at, "expected an integer, got " + scalar_text(v[i]));
    if (x < min || x > max)
      fail(at, std::to_string(x) + " is out of range [" + std::to_string(min) + ", " + std::to_string(max) + "]");
    out.push_back(x);
  }
  return out;
}

std::vector<double> ConfigNode::get_double_list(const std::string& key, const std::vector<double>& fallback, double min,
                                                double max) {
  YAML::Node v = value(key);
  if (!v || v.IsNull()) return fallback;
  if (!v.IsSequence()) fail(key, "expected a list of numbers, got " + scalar_text(v));
  std::vector<double> out;
  for (size_t i = 0; i < v.size(); ++i) {
    double x = 0;
    const std::string at = key + "[" + std::to_string(i) + "]";
    if (!v[i].IsScalar() || !YAML::convert<double>::decode(v[i], x)) fail(at, "expected a number, got " + scalar_text(v[i]));
    if (!(x >= min && x <= max)) {
      std::ostringstream os;
      os << x << " is out of range [" << min << ", " << max << "]";
      fail(at, os.str());
    }
    out.push_back(x);
  }
  return out;
}

std::vector<std::string> ConfigNode::get_string_list(const std::string& key, const std::vector<std::string>& fallback) {
  YAML::Node v = value(key);
  if (!v || v.IsNull()) return fallback;
  if (v.IsScalar()) return {v.Scalar()};
  if (!v.IsSequence()) fail(key, "expected a list of strings, got " + scalar_text(v));
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].IsScalar()) fail(key + "[" + std::to_string(i) + "]", "expected a string, got " + scalar_text(v[i]));
    out.push_back(v[i].Scalar());
  }
  return out;
}

ConfigNode ConfigNode::child(const std::string& key) {
  YAML::Node v = value(key);
  if (!v || v.IsNull()) return ConfigNode(YAML::Node(YAML::NodeType::Map), *file_, key_path(key));
  if (!v.IsMap()) fail(key, "expected a map of keys, got " + scalar_text(v));
  ConfigNode c(v, *file_, key_path(key));
  c.file_ = file_;
  return c;
}

std::vector<ConfigNode> ConfigNode::items() {
  std::vector<ConfigNode> out;
  if (!node_.IsSequence()) fail_here("expected a list, got " + scalar_text(node_));
  for (size_t i = 0; i < node_.size(); ++i) {
    ConfigNode c(node_[i], *file_, path_ + "[" + std::to_string(i) + "]");
    c.file_ = file_;
    out.push_back(c);
  }
  return out;
}

std::vector<std::pair<std::string, ConfigNode>> ConfigNode::entries() {
  std::vector<std::pair<std::string, ConfigNode>> out;
  if (!node_.IsMap()) fail_here("expected a map, got " + scalar_text(node_));
  std::set<std::string> keys;
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    if (!keys.insert(key).second) fail(key, "the key appears twice (YAML keeps only one: remove or rename one)");
    seen_->insert(key);
    ConfigNode c(it->second, *file_, key_path(key));
    c.file_ = file_;
    out.emplace_back(key, c);
  }
  return out;
}

void ConfigNode::finish() const {
  if (!node_.IsMap()) return;
  std::set<std::string> keys;
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    if (!keys.insert(key).second) fail(key, "the key appears twice (YAML keeps only one: remove or rename one)");
    if (!seen_->count(key)) {
      std::string known;
      for (const auto& k : *seen_) known += (known.empty() ? "" : ", ") + k;
      fail(key, "unknown key" + (known.empty() ? std::string() : " (known keys here: " + known + ")"));
    }
  }
}

void apply_override(YAML::Node& root, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set " + assignment + ": expected key.path=value");
  const std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError("--set " + assignment + ": the value is not valid YAML: " + e.msg);
  }
  // yaml-cpp nodes are handles: walk with reset-free copies so we never rebind the root.
  std::vector<std::string> keys;
  std::stringstream ss(path);
  for (std::string k; std::getline(ss, k, '.');) {
    if (k.empty()) throw ConfigError("--set " + assignment + ": empty key in '" + path + "'");
    keys.push_back(k);
  }
  YAML::Node cur = root;
  std::string walked;
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    walked += (walked.empty() ? "" : ".") + keys[i];
    YAML::Node next = cur[keys[i]];
    if (!next || next.IsNull()) {
      cur[keys[i]] = YAML::Node(YAML::NodeType::Map);
      next = cur[keys[i]];
    }
    if (!next.IsMap()) throw ConfigError("--set " + assignment + ": " + walked + " is not a map");
    cur.reset(next);
  }
  cur[keys.back()] = value;
}

}  // namespace ncsrec
