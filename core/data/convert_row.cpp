// Row parsing for `ncsrec convert`. Every check of a row happens before anything is appended,
// so a bad row leaves the output Block untouched.
#include "core/data/convert_row.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>

#include "core/error.h"

namespace ncsrec {
namespace {

constexpr int kWholeRow = INT_MIN;

bool parse_double(std::string_view s, double& x) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), x);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && std::isfinite(x);
}

bool parse_int64(std::string_view s, int64_t& x) {
  if (!s.empty() && s[0] == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), x);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

bool contains(const std::vector<std::string>& list, std::string_view v) {
  for (const auto& x : list)
    if (x == v) return true;
  return false;
}

}  // namespace

bool parse_iso_date(std::string_view s, int64_t& days) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9})
    if (s[i] < '0' || s[i] > '9') return false;
  auto num = [&](size_t at, size_t len) {
    int v = 0;
    for (size_t i = at; i < at + len; ++i) v = v * 10 + (s[i] - '0');
    return v;
  };
  int y = num(0, 4);
  const int m = num(5, 2), d = num(8, 2);
  static const int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m < 1 || m > 12) return false;
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (d < 1 || d > kDays[m - 1] + (m == 2 && leap)) return false;
  // days_from_civil (H. Hinnant): proleptic Gregorian calendar.
  y -= m <= 2;
  const int era = y / 400;
  const int yoe = y - era * 400;
  const int doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  days = static_cast<int64_t>(era) * 146097 + doe - 719468;
  return true;
}

FileLayout resolve_layout(const ConvertSchema& schema, const std::vector<std::string>& columns,
                          const std::string& path) {
  FileLayout layout;
  layout.path = path;
  layout.columns = columns;
  layout.field_count = columns.size();
  for (size_t i = 0; i < columns.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (columns[i] == columns[j])
        throw UserError("input file " + path + ": column '" + columns[i] + "' appears twice in the header");
  if (schema.input.format == InputFormat::kv) {
    auto add_key = [&](const ValueSource& s) {
      if (!s.key.empty()) layout.keys.push_back(s.key);
    };
    for (const auto& l : schema.labels) add_key(l.source);
    if (schema.weight.present) add_key(schema.weight.source);
    for (const auto& d : schema.dense) add_key(d.source);
    for (const auto& s : schema.slots) add_key(s.source);
    for (const auto& m : schema.meta) add_key(m.source);
    std::sort(layout.keys.begin(), layout.keys.end());
    layout.keys.erase(std::unique(layout.keys.begin(), layout.keys.end()), layout.keys.end());
  }
  auto list = [&]() {
    std::string s;
    for (const auto& c : columns) s += (s.empty() ? "" : ", ") + c;
    return s;
  };
  auto resolve = [&](const ValueSource& s, const std::string& user) -> int {
    if (!s.key.empty())
      return -1 - static_cast<int>(std::lower_bound(layout.keys.begin(), layout.keys.end(), s.key) - layout.keys.begin());
    const auto it = std::find(columns.begin(), columns.end(), s.column);
    if (it == columns.end())
      throw UserError("input file " + path + ": it has no column '" + s.column + "' (needed by " + user +
                      " in " + schema.file + "); its columns are: " + list());
    return static_cast<int>(it - columns.begin());
  };
  for (const auto& l : schema.labels) layout.label.push_back(resolve(l.source, "label '" + l.name + "'"));
  layout.weight = schema.weight.present ? resolve(schema.weight.source, "weight") : 0;
  for (const auto& d : schema.dense) layout.dense.push_back(resolve(d.source, "dense '" + d.name + "'"));
  for (const auto& s : schema.slots) layout.slot.push_back(resolve(s.source, "sparse slot '" + s.name + "'"));
  for (const auto& m : schema.meta) layout.meta.push_back(resolve(m.source, "meta '" + m.name + "'"));
  // A column nobody reads must be listed under input.ignore, so nothing is dropped by accident.
  const std::vector<std::string> used = schema.used_columns();
  std::string unused;
  for (const auto& c : columns)
    if (!contains(used, c) && !contains(schema.input.ignore, c)) unused += (unused.empty() ? "" : ", ") + c;
  if (!unused.empty())
    throw UserError("input file " + path + ": these columns are neither used by " + schema.file +
                    " nor listed under input.ignore: " + unused);
  return layout;
}

RowParser::RowParser(const ConvertSchema& schema, const FileLayout& layout, const DenseStats* stats)
    : schema_(schema), layout_(layout), stats_(stats) {
  format_.delimiter = schema.input.delimiter;
  format_.quote = schema.input.quote;
  format_.trim = schema.input.trim;
  key_values_.resize(layout.keys.size());
  labels_.resize(schema.labels.size());
  dense_.resize(schema.dense.size());
  meta_.resize(schema.meta.size());
}

std::string RowParser::describe(int source) const {
  if (source == kWholeRow) return "";
  if (source >= 0) return "column '" + layout_.columns[static_cast<size_t>(source)] + "'";
  return "key '" + layout_.keys[static_cast<size_t>(-1 - source)] + "'";
}

bool RowParser::fail(BadRow& bad, const char* reason, int source, std::string_view value) {
  bad.reason = reason;
  bad.where = describe(source);
  bad.value.assign(value.substr(0, 200));
  return false;
}

bool RowParser::is_missing(std::string_view v) const { return contains(schema_.input.missing, v); }

bool RowParser::single(int source, std::string_view& value, bool& missing) const {
  if (source >= 0) {
    value = fields_[static_cast<size_t>(source)];
  } else {
    const auto& values = key_values_[static_cast<size_t>(-1 - source)];
    if (values.size() > 1) {
      value = values[1];
      return false;
    }
    value = values.empty() ? std::string_view() : values[0];
    if (values.empty()) {
      missing = true;
      return true;
    }
  }
  missing = is_missing(value);
  return true;
}

bool RowParser::parse(std::string_view record, Block* out_block, std::vector<double>* raw_dense, BadRow& bad) {
  bad.detail.clear();
  Block* out = out_block;
  if (!split_fields(record, format_, fields_, scratch_)) return fail(bad, "malformed quotes", kWholeRow, record);
  const bool kv = schema_.input.format == InputFormat::kv;
  if (kv ? fields_.size() < layout_.field_count : fields_.size() != layout_.field_count) {
    bad.detail = std::string(kv ? "expected at least " : "expected ") + std::to_string(layout_.field_count) +
                 " fields, found " + std::to_string(fields_.size());
    return fail(bad, "wrong number of fields", kWholeRow, record);
  }
  if (kv) {
    for (auto& v : key_values_) v.clear();
    for (size_t i = layout_.field_count; i < fields_.size(); ++i) {
      const std::string_view pair = fields_[i];
      const size_t sep = pair.find(schema_.input.kv_separator);
      if (sep == std::string_view::npos) return fail(bad, "malformed key:value pair", kWholeRow, pair);
      const std::string_view key = pair.substr(0, sep);
      const auto it = std::lower_bound(layout_.keys.begin(), layout_.keys.end(), key,
                                       [](const std::string& a, std::string_view b) { return std::string_view(a) < b; });
      if (it == layout_.keys.end() || *it != key) {
        if (schema_.input.ignore_unknown_keys) {
          ++ignored_pairs_;
          continue;
        }
        return fail(bad, "unknown key", kWholeRow, pair);
      }
      key_values_[static_cast<size_t>(it - layout_.keys.begin())].push_back(pair.substr(sep + 1));
    }
  }

  std::string_view v;
  bool missing = false;
  for (size_t t = 0; t < schema_.labels.size(); ++t) {
    const LabelSpec& spec = schema_.labels[t];
    const int src = layout_.label[t];
    if (!single(src, v, missing)) return fail(bad, "several values for a single-valued key", src, v);
    if (missing) return fail(bad, "missing label", src, v);
    double x = 0;
    switch (spec.rule) {
      case LabelRule::equals:
      case LabelRule::in_set:
        if (contains(spec.positives, v)) {
          labels_[t] = 1;
        } else if (spec.negatives.empty() || contains(spec.negatives, v)) {
          labels_[t] = 0;
        } else {
          return fail(bad, "unexpected label value", src, v);
        }
        break;
      case LabelRule::threshold:
        if (!parse_double(v, x)) return fail(bad, "not a number", src, v);
        labels_[t] = x > spec.threshold ? 1.f : 0.f;
        break;
      case LabelRule::value:
        if (!parse_double(v, x)) return fail(bad, "not a number", src, v);
        labels_[t] = static_cast<float>(x);
        break;
    }
  }

  float weight = 1;
  if (schema_.weight.present) {
    const int src = layout_.weight;
    double x = schema_.weight.fill;
    if (!single(src, v, missing)) return fail(bad, "several values for a single-valued key", src, v);
    if (missing && !schema_.weight.has_fill) return fail(bad, "missing value", src, v);
    if (!missing && !parse_double(v, x)) return fail(bad, "not a number", src, v);
    if (x < 0) return fail(bad, "negative weight", src, v);
    weight = static_cast<float>(x);
  }

  for (size_t j = 0; j < schema_.dense.size(); ++j) {
    const DenseSpec& spec = schema_.dense[j];
    const int src = layout_.dense[j];
    if (!single(src, v, missing)) return fail(bad, "several values for a single-valued key", src, v);
    double x = spec.fill;
    if (missing && !spec.has_fill) return fail(bad, "missing value", src, v);
    if (!missing && !parse_double(v, x)) return fail(bad, "not a number", src, v);
    if (spec.has_clip_min) x = std::max(x, spec.clip_min);
    if (spec.has_clip_max) x = std::min(x, spec.clip_max);
    if (spec.log1p) {
      if (!(x > -1)) return fail(bad, "log1p of a value <= -1", src, v);
      x = std::log1p(x);
    }
    dense_[j] = x;
  }

  for (size_t m = 0; m < schema_.meta.size(); ++m) {
    const MetaSpec& spec = schema_.meta[m];
    const int src = layout_.meta[m];
    if (!single(src, v, missing)) return fail(bad, "several values for a single-valued key", src, v);
    if (missing) {
      if (!spec.has_fill) return fail(bad, "missing value", src, v);
      meta_[m] = spec.fill;
      continue;
    }
    switch (spec.type) {
      case MetaType::integer:
        if (!parse_int64(v, meta_[m])) return fail(bad, "not an integer", src, v);
        break;
      case MetaType::hash:
        meta_[m] = categorical_id(spec.salt_hash, v);
        break;
      case MetaType::date:
        if (!parse_iso_date(v, meta_[m])) return fail(bad, "not a date (YYYY-MM-DD)", src, v);
        break;
    }
  }

  for (size_t s = 0; s < schema_.slots.size(); ++s) {
    const int src = layout_.slot[s];
    if (src < 0 && !schema_.slots[s].multi && key_values_[static_cast<size_t>(-1 - src)].size() > 1)
      return fail(bad, "several values for a single-valued key", src, key_values_[static_cast<size_t>(-1 - src)][1]);
  }

  // ---- the row is good: append it
  if (!out) {  // the statistics pass needs the dense values only
    raw_dense->insert(raw_dense->end(), dense_.begin(), dense_.end());
    return true;
  }
  for (size_t t = 0; t < labels_.size(); ++t) out->labels[t].push_back(labels_[t]);
  if (schema_.weight.present) out->weight.push_back(weight);
  for (size_t j = 0; j < dense_.size(); ++j) {
    const double x = dense_[j];
    out->dense.push_back(static_cast<float>(stats_ ? (x - stats_->mean[j]) / stats_->scale[j] : x));
  }
  for (size_t m = 0; m < meta_.size(); ++m) out->meta[m].push_back(meta_[m]);
  for (size_t s = 0; s < schema_.slots.size(); ++s) {
    const SlotSpec& spec = schema_.slots[s];
    const int src = layout_.slot[s];
    std::vector<int64_t>& ids = out->sparse[s].ids;
    auto add = [&](std::string_view value) {
      if (format_.trim) value = trim_blanks(value);
      if (!is_missing(value)) ids.push_back(categorical_id(spec.salt_hash, value));
    };
    if (src >= 0) {
      const std::string_view text = fields_[static_cast<size_t>(src)];
      if (!spec.separator) {
        ids.push_back(categorical_id(spec.salt_hash, is_missing(text) ? std::string_view() : text));
      } else if (!is_missing(text)) {
        size_t start = 0;
        for (;;) {
          const size_t cut = text.find(spec.separator, start);
          add(text.substr(start, cut == std::string_view::npos ? std::string_view::npos : cut - start));
          if (cut == std::string_view::npos) break;
          start = cut + 1;
        }
      }
    } else {
      const auto& values = key_values_[static_cast<size_t>(-1 - src)];
      if (spec.multi) {
        for (const auto& value : values) add(value);
      } else {
        const bool absent = values.empty() || is_missing(values[0]);
        ids.push_back(categorical_id(spec.salt_hash, absent ? std::string_view() : values[0]));
      }
    }
    out->sparse[s].offsets.push_back(static_cast<int64_t>(ids.size()));
  }
  ++out->rows;
  return true;
}

}  // namespace ncsrec
