// Strict YAML configuration access. Parsing, validation and construction are separate steps:
// apps/ and train/ read YAML through ConfigNode into plain structs, and ConfigNode turns every
// problem into one ConfigError naming the file and the key path:
//   "configs/x.yaml: model.tower.hidden[1]: expected a positive integer, got 'abc'"
// A key that no reader asked for is an error too (`finish()`), so a typo never goes silent.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"

namespace ncsrec {

class ConfigNode {
 public:
  // Loads a YAML file; a syntax error becomes a ConfigError with the line and column.
  static ConfigNode load_file(const std::string& path);
  static ConfigNode parse(const std::string& text, const std::string& file);
  ConfigNode(YAML::Node node, std::string file, std::string path);

  const std::string& file() const { return *file_; }
  const std::string& path() const { return path_; }
  std::string key_path(const std::string& key) const;
  bool has(const std::string& key) const;
  bool is_map() const { return node_.IsMap(); }
  bool is_sequence() const { return node_.IsSequence(); }
  bool is_null() const { return !node_ || node_.IsNull(); }
  size_t size() const { return node_.size(); }

  // Typed access; `key` must be a direct child. The range checks name the bounds in the error.
  std::string get_string(const std::string& key, const std::string& fallback);
  std::string get_string(const std::string& key);  // required
  std::string get_choice(const std::string& key, const std::vector<std::string>& choices, const std::string& fallback);
  int64_t get_int(const std::string& key, int64_t fallback, int64_t min, int64_t max);
  int64_t get_int(const std::string& key, int64_t min, int64_t max);  // required
  double get_double(const std::string& key, double fallback, double min, double max);
  bool get_bool(const std::string& key, bool fallback);
  std::vector<int64_t> get_int_list(const std::string& key, const std::vector<int64_t>& fallback, int64_t min,
                                    int64_t max);
  std::vector<double> get_double_list(const std::string& key, const std::vector<double>& fallback, double min,
                                      double max);
  std::vector<std::string> get_string_list(const std::string& key, const std::vector<std::string>& fallback);
  // A child map (empty when absent); marks the key as known.
  ConfigNode child(const std::string& key);
  // Children of a sequence or the (key, node) pairs of a map, in file order.
  std::vector<ConfigNode> items();
  std::vector<std::pair<std::string, ConfigNode>> entries();

  // Throws ConfigError for the first key of this map that no accessor asked for.
  void finish() const;
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;
  [[noreturn]] void fail_here(const std::string& message) const;

  const YAML::Node& yaml() const { return node_; }

 private:
  YAML::Node value(const std::string& key);
  YAML::Node node_;
  std::shared_ptr<std::string> file_;
  std::string path_;
  std::shared_ptr<std::set<std::string>> seen_;
};

// Applies `--set a.b.c=value` overrides to a YAML tree (value parsed as YAML). An override of
// a key that does not exist is allowed only where the parent is a map; the strict reader then
// rejects unknown keys as usual, naming the key path.
void apply_override(YAML::Node& root, const std::string& assignment);

}  // namespace ncsrec
