// A check shared by the tests of config keys: a config refused with a ConfigError that names the
// key, so the user knows which line to fix.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "train/train_config.h"

namespace ncsrec::testing {

inline void expect_config_error_naming(const std::string& yaml, const std::string& key) {
  try {
    parse_train_config(yaml, "m.yaml");
    ADD_FAILURE() << "accepted, expected an error naming " << key << ":\n" << yaml;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
  }
}

}  // namespace ncsrec::testing
