// A minimal JSON writer for metrics.jsonl and summary.json (NaN and infinities become null).
#pragma once

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

namespace ncsrec {

class JsonObject {
 public:
  JsonObject& add(const std::string& key, double v) {
    key_(key);
    if (std::isfinite(v)) {
      std::ostringstream os;
      os.precision(10);
      os << v;
      out_ += os.str();
    } else {
      out_ += "null";
    }
    return *this;
  }
  JsonObject& add(const std::string& key, int64_t v) { key_(key); out_ += std::to_string(v); return *this; }
  JsonObject& add(const std::string& key, int v) { return add(key, static_cast<int64_t>(v)); }
  JsonObject& add(const std::string& key, const std::string& v) { key_(key); out_ += quote(v); return *this; }
  JsonObject& add(const std::string& key, const char* v) { return add(key, std::string(v)); }
  JsonObject& add(const std::string& key, const JsonObject& v) { key_(key); out_ += v.str(); return *this; }
  // `json` must already be valid JSON (an array, say).
  JsonObject& add_raw(const std::string& key, const std::string& json) { key_(key); out_ += json; return *this; }
  std::string str() const { return "{" + out_ + "}"; }

  static std::string quote(const std::string& s) {
    std::string q = "\"";
    for (char c : s) {
      switch (c) {
        case '"': q += "\\\""; break;
        case '\\': q += "\\\\"; break;
        case '\n': q += "\\n"; break;
        case '\t': q += "\\t"; break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            q += buf;
          } else {
            q += c;
          }
      }
    }
    return q + "\"";
  }

 private:
  void key_(const std::string& k) {
    if (!out_.empty()) out_ += ", ";
    out_ += quote(k) + ": ";
  }
  std::string out_;
};

}  // namespace ncsrec
