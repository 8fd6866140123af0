// A small argument parser for the `ncsrec` subcommands: `--flag value`, `--flag=value`,
// repeated flags, positionals. Unknown flags are errors naming the flag and the subcommand.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"

namespace ncsrec {

class Args {
 public:
  // `flags`: flags taking a value; `switches`: flags without one.
  Args(const std::string& command, int argc, char** argv, int first, const std::set<std::string>& flags,
       const std::set<std::string>& switches)
      : command_(command) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0 || a == "--") {
        positionals_.push_back(a);
        continue;
      }
      std::string value;
      const auto eq = a.find('=');
      bool has_value = false;
      if (eq != std::string::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_value = true;
      }
      const std::string name = a.substr(2);
      if (switches.count(name)) {
        if (has_value) throw ConfigError("ncsrec " + command + ": --" + name + " takes no value");
        values_[name].push_back("1");
      } else if (flags.count(name)) {
        if (!has_value) {
          if (i + 1 >= argc) throw ConfigError("ncsrec " + command + ": --" + name + " needs a value");
          value = argv[++i];
        }
        values_[name].push_back(value);
      } else {
        throw ConfigError("ncsrec " + command + ": unknown option --" + name + " (see ncsrec " + command + " --help)");
      }
    }
  }
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second.back();
  }
  std::string required(const std::string& name) const {
    if (!has(name)) throw ConfigError("ncsrec " + command_ + ": --" + name + " is required (see --help)");
    return get(name);
  }
  std::vector<std::string> all(const std::string& name) const {
    auto it = values_.find(name);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }
  int64_t get_int(const std::string& name, int64_t fallback) const {
    if (!has(name)) return fallback;
    try {
      size_t used = 0;
      const int64_t v = std::stoll(get(name), &used);
      if (used == get(name).size()) return v;
    } catch (...) {
    }
    throw ConfigError("ncsrec " + command_ + ": --" + name + " expects an integer, got '" + get(name) + "'");
  }
  double get_double(const std::string& name, double fallback) const {
    if (!has(name)) return fallback;
    try {
      size_t used = 0;
      const double v = std::stod(get(name), &used);
      if (used == get(name).size()) return v;
    } catch (...) {
    }
    throw ConfigError("ncsrec " + command_ + ": --" + name + " expects a number, got '" + get(name) + "'");
  }
  const std::vector<std::string>& positionals() const { return positionals_; }
  void no_positionals() const {
    if (!positionals_.empty())
      throw ConfigError("ncsrec " + command_ + ": unexpected argument '" + positionals_[0] + "' (see ncsrec " + command_ +
                        " --help)");
  }

 private:
  std::string command_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positionals_;
};

}  // namespace ncsrec
