// GeneratorTruth: generator.h5 read back, and the true probabilities of any impression. The
// evaluation below is Model::prepare_day + Model::raw_utility + Model::draw of
// core/data/synthetic.cpp, written again over the saved tables. Keep the two in step: the
// float32 roundings of the day tables and the order of every addition are the generator's, so
// that the float32 of a result is the shard's stored truth, bit for bit on the same machine.
#include "core/data/generator_truth.h"

#include <hdf5.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <mutex>

#include "core/data/synthetic.h"
#include "core/error.h"
#include "core/hdf5_util.h"

namespace ncsrec {

namespace {

constexpr int kComponents = 2;
constexpr int kMaxLatentDim = 256;  // the generator's own limit (validate() in synthetic.cpp)

// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm, as in synthetic.cpp).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// Days since 1970-01-01 of (y, m, d), or false when that is not a calendar date.
bool epoch_day(int64_t y, int64_t m, int64_t d, int64_t* out) {
  if (m < 1 || m > 12 || d < 1) return false;
  static const int kMonthDays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (d > kMonthDays[m - 1] || (m == 2 && d == 29 && !leap)) return false;
  *out = days_from_civil(y, static_cast<unsigned>(m), static_cast<unsigned>(d));
  return true;
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

// One utility component's tables, as saved under component<k>/ (see docs/generator.md).
struct GeneratorTruth::Component {
  std::vector<float> seg_lat, cat_lat, tag_lat;  // [days][S][d], [days][C][d], [T][d]
  std::vector<float> user_a, user_b, item_a, item_b;  // [U][d], [I][d]
  std::vector<float> seg_bias, user_bias, cat_bias, item_bias, hour_bias, device_bias, tag_bias;
  std::vector<float> device_category;  // [devices][C]
  std::vector<float> hour_segment;     // [hours][S]
  std::vector<float> ads_category, ads_device;
  double price_coef = 0, activity_coef = 0, freshness = 0, mean = 0, sd = 1;
};

// The item side of one day: Model::prepare_day's day_item_lat_ and day_item_main_.
struct GeneratorTruth::DayTables {
  std::vector<float> item_lat[kComponents];   // [I][d]
  std::vector<float> item_main[kComponents];  // [I]
};

// Day tables built on first use. Readers take the published pointer without a lock; builders
// serialise on the mutex.
struct GeneratorTruth::DayCache {
  std::mutex build;
  std::vector<std::unique_ptr<const DayTables>> owned;  // [day]
  std::unique_ptr<std::atomic<const DayTables*>[]> ready;  // [day]
};

GeneratorTruth::GeneratorTruth() = default;
GeneratorTruth::GeneratorTruth(GeneratorTruth&&) noexcept = default;
GeneratorTruth& GeneratorTruth::operator=(GeneratorTruth&&) noexcept = default;
GeneratorTruth::~GeneratorTruth() = default;

// ---- loading ------------------------------------------------------------------------------

namespace {

// generator.h5 with checked reads: every failure names the file and the object.
class GeneratorFile {
 public:
  explicit GeneratorFile(const std::string& path) : path_(path), file_(open(path)) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw UserError("generator file " + path_ + ": " + what);
  }
  double attr_double(const std::string& name) const {
    if (!file_.has_attr("/", name)) fail("has no attribute " + name + " (not written by `ncsrec gen`?)");
    h5::Handle a(H5Aopen_by_name(file_.id(), "/", name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    double v = 0;
    if (!a || H5Aread(a.get(), H5T_NATIVE_DOUBLE, &v) < 0) fail("cannot read attribute " + name);
    return v;
  }
  int64_t attr_int(const std::string& name) const {
    if (!file_.has_attr("/", name)) fail("has no attribute " + name + " (not written by `ncsrec gen`?)");
    return file_.attr_int("/", name);
  }
  std::string attr_string(const std::string& name) const {
    if (!file_.has_attr("/", name)) fail("has no attribute " + name + " (not written by `ncsrec gen`?)");
    return file_.attr_string("/", name);
  }
  // A dataset of exactly `expected` values (any shape), converted to float / int64 / double.
  std::vector<float> f32(const std::string& name, int64_t expected) const {
    check_size(name, expected);
    return file_.read_f32(name);
  }
  std::vector<int64_t> i64(const std::string& name, int64_t expected) const {
    check_size(name, expected);
    return file_.read_i64(name);
  }
  std::vector<double> f64(const std::string& name, int64_t expected) const {
    check_size(name, expected);
    return file_.read_f64(name);
  }
  // The length of a 1-d dataset (at least 1).
  int64_t length(const std::string& name) const {
    if (!file_.exists(name)) fail("has no dataset " + name);
    const auto d = file_.dims(name);
    if (d.size() != 1 || d[0] < 1) fail("dataset " + name + " should be a non-empty vector");
    return static_cast<int64_t>(d[0]);
  }
  // Every value in [0, bound).
  void check_ids(const std::string& name, const std::vector<int64_t>& v, int64_t bound) const {
    for (int64_t x : v)
      if (x < 0 || x >= bound)
        fail("dataset " + name + " holds " + std::to_string(x) + ", outside 0.." + std::to_string(bound - 1));
  }

 private:
  void check_size(const std::string& name, int64_t expected) const {
    if (!file_.exists(name)) fail("has no dataset " + name);
    int64_t n = 1;
    for (auto x : file_.dims(name)) n *= static_cast<int64_t>(x);
    if (n != expected)
      fail("dataset " + name + " has " + std::to_string(n) + " values, expected " + std::to_string(expected));
  }
  static h5::File open(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
      throw UserError("generator file " + path + " does not exist (it is written by `ncsrec gen` beside the data)");
    return h5::File::open_read(path);
  }
  std::string path_;
  h5::File file_;
};

}  // namespace

GeneratorTruth GeneratorTruth::load(const std::string& path) {
  const GeneratorFile f(path);
  GeneratorTruth g;
  g.path_ = path;
  const int64_t version = f.attr_int("generator_version");
  if (version != kGeneratorVersion)
    f.fail("generator_version is " + std::to_string(version) + ", this build reads version " +
           std::to_string(kGeneratorVersion) + " (regenerate the data or use the matching ncsrec)");

  g.users_ = f.attr_int("users");
  g.items_ = f.attr_int("items");
  const int64_t dim = f.attr_int("latent_dim"), days = f.attr_int("days");
  if (g.users_ < 1 || g.items_ < 1) f.fail("users and items must be positive");
  if (dim < 1 || dim > kMaxLatentDim) f.fail("latent_dim " + std::to_string(dim) + " outside 1.." + std::to_string(kMaxLatentDim));
  if (days < 1 || days > 100000) f.fail("days " + std::to_string(days) + " out of range");
  g.dim_ = static_cast<int>(dim);
  g.days_ = static_cast<int>(days);
  g.start_day_ = f.attr_string("start_day");
  {
    int y = 0, m = 0, d = 0;
    char tail = 0;
    if (g.start_day_.size() != 10 || std::sscanf(g.start_day_.c_str(), "%4d-%2d-%2d%c", &y, &m, &d, &tail) != 3 ||
        !epoch_day(y, m, d, &g.start_epoch_day_))
      f.fail("start_day '" + g.start_day_ + "' is not a YYYY-MM-DD date");
  }
  g.rho_ = f.attr_double("rho");
  g.r12_ = f.attr_double("r12");
  g.b_ctr_ = f.attr_double("b_ctr");
  g.b_cvr_ = f.attr_double("b_cvr");
  g.a_ctr_ = f.attr_double("a_ctr");
  g.a_cvr_ = f.attr_double("a_cvr");
  g.ads_ctr_offset_ = f.attr_double("ads_ctr_offset");
  g.ads_cvr_offset_ = f.attr_double("ads_cvr_offset");
  g.latent_weight_ = f.attr_double("latent_weight");
  g.user_noise_ = f.attr_double("user_noise");
  g.item_noise_ = f.attr_double("item_noise");
  g.tag_latent_ = f.attr_double("tag_latent");
  g.id_drift_ = f.attr_double("id_drift");

  // Context cardinalities from the table lengths of component 1.
  g.segments_ = static_cast<int>(f.length("component1/segment_bias"));
  g.categories_ = static_cast<int>(f.length("component1/category_bias"));
  g.hours_ = static_cast<int>(f.length("component1/hour_bias"));
  g.devices_ = static_cast<int>(f.length("component1/device_bias"));
  g.tags_ = static_cast<int>(f.length("component1/tag_bias"));
  g.positions_ = static_cast<int>(f.length("context/position_bias"));
  const int64_t U = g.users_, I = g.items_, D = g.dim_, T = g.days_;
  const int64_t S = g.segments_, C = g.categories_, H = g.hours_, Dv = g.devices_, Tg = g.tags_;

  g.user_segment_ = f.i64("user/segment", U);
  g.user_device_ = f.i64("user/primary_device", U);
  g.user_birth_ = f.i64("user/birth_day", U);
  g.user_activity_ = f.f32("user/activity", U);
  g.item_category_ = f.i64("item/category", I);
  g.item_birth_ = f.i64("item/birth_day", I);
  g.item_log_price_ = f.f32("item/log_price", I);
  g.item_tag_offsets_ = f.i64("item/tag_offsets", I + 1);
  g.item_tags_ = f.i64("item/tags", f.length("item/tags"));
  g.position_bias_ = f.f32("context/position_bias", g.positions_);
  f.check_ids("user/segment", g.user_segment_, S);
  f.check_ids("user/primary_device", g.user_device_, Dv);
  f.check_ids("item/category", g.item_category_, C);
  f.check_ids("item/tags", g.item_tags_, Tg);
  const auto& off = g.item_tag_offsets_;
  if (off[0] != 0 || off[I] != static_cast<int64_t>(g.item_tags_.size()))
    f.fail("item/tag_offsets do not span item/tags");
  for (int64_t i = 0; i < I; ++i)
    if (off[i + 1] <= off[i]) f.fail("item " + std::to_string(i) + " has no tags in item/tag_offsets");

  g.comp_.reset(new Component[kComponents]);
  for (int k = 0; k < kComponents; ++k) {
    Component& c = g.comp_[k];
    const std::string p = "component" + std::to_string(k + 1) + "/";
    c.seg_lat = f.f32(p + "segment_latent", T * S * D);
    c.cat_lat = f.f32(p + "category_latent", T * C * D);
    c.tag_lat = f.f32(p + "tag_latent", Tg * D);
    c.user_a = f.f32(p + "user_latent_a", U * D);
    c.user_b = f.f32(p + "user_latent_b", U * D);
    c.item_a = f.f32(p + "item_latent_a", I * D);
    c.item_b = f.f32(p + "item_latent_b", I * D);
    c.seg_bias = f.f32(p + "segment_bias", S);
    c.user_bias = f.f32(p + "user_bias", U);
    c.cat_bias = f.f32(p + "category_bias", C);
    c.item_bias = f.f32(p + "item_bias", I);
    c.hour_bias = f.f32(p + "hour_bias", H);
    c.device_bias = f.f32(p + "device_bias", Dv);
    c.tag_bias = f.f32(p + "tag_bias", Tg);
    c.device_category = f.f32(p + "device_category", Dv * C);
    c.hour_segment = f.f32(p + "hour_segment", H * S);
    c.ads_category = f.f32(p + "ads_category", C);
    c.ads_device = f.f32(p + "ads_device", Dv);
    const std::vector<double> s = f.f64(p + "scalars", 5);  // price_coef, activity_coef, freshness, mean, sd
    c.price_coef = s[0];
    c.activity_coef = s[1];
    c.freshness = s[2];
    c.mean = s[3];
    c.sd = s[4];
    if (!(c.sd > 0)) f.fail(p + "scalars: sd must be positive");
  }

  g.cache_.reset(new DayCache);
  g.cache_->owned.resize(static_cast<size_t>(g.days_));
  g.cache_->ready.reset(new std::atomic<const DayTables*>[static_cast<size_t>(g.days_)]);
  for (int t = 0; t < g.days_; ++t) g.cache_->ready[t].store(nullptr, std::memory_order_relaxed);
  return g;
}

int GeneratorTruth::day_index(int64_t yyyymmdd) const {
  int64_t z = 0;
  if (!epoch_day(yyyymmdd / 10000, yyyymmdd / 100 % 100, yyyymmdd % 100, &z) || yyyymmdd < 0)
    throw UserError("day " + std::to_string(yyyymmdd) + " is not a yyyymmdd date (generator " + path_ + ")");
  const int64_t t = z - start_epoch_day_;
  if (t < 0 || t >= days_)
    throw UserError("day " + std::to_string(yyyymmdd) + " is outside the " + std::to_string(days_) +
                    " generated days from " + start_day_ + " (generator " + path_ + ")");
  return static_cast<int>(t);
}

// ---- evaluation ---------------------------------------------------------------------------

const GeneratorTruth::DayTables& GeneratorTruth::day_tables(int day) const {
  std::atomic<const DayTables*>& slot = cache_->ready[day];
  if (const DayTables* t = slot.load(std::memory_order_acquire)) return *t;
  std::lock_guard<std::mutex> lock(cache_->build);
  if (const DayTables* t = slot.load(std::memory_order_relaxed)) return *t;

  // Model::prepare_day, item half.
  auto tables = std::make_unique<DayTables>();
  const int d = dim_;
  const double cs = std::cos(id_drift_ * day), sn = std::sin(id_drift_ * day);
  const double lat_scale = std::sqrt(latent_weight_ / std::sqrt(static_cast<double>(d)));
  for (int k = 0; k < kComponents; ++k) {
    const Component& c = comp_[k];
    std::vector<float>& il = tables->item_lat[k];
    std::vector<float>& im = tables->item_main[k];
    il.resize(static_cast<size_t>(items_) * d);
    im.resize(static_cast<size_t>(items_));
    const float* cat = &c.cat_lat[static_cast<size_t>(day) * categories_ * d];
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < items_; ++i) {
      const int64_t ct = item_category_[i];
      const int64_t t0 = item_tag_offsets_[i], t1 = item_tag_offsets_[i + 1];
      const double inv = 1.0 / std::sqrt(static_cast<double>(t1 - t0));
      double tb = 0;
      for (int64_t t = t0; t < t1; ++t) tb += c.tag_bias[item_tags_[t]];
      for (int j = 0; j < d; ++j) {
        double tl = 0;
        for (int64_t t = t0; t < t1; ++t) tl += c.tag_lat[item_tags_[t] * d + j];
        il[i * d + j] = static_cast<float>(
            lat_scale * (cat[ct * d + j] + tag_latent_ * inv * tl +
                         item_noise_ * (cs * c.item_a[i * d + j] + sn * c.item_b[i * d + j])));
      }
      const double age = static_cast<double>(day - item_birth_[i]);
      // cat_bias + item_bias is a float sum, as in the generator.
      im[i] = static_cast<float>(c.cat_bias[ct] + c.item_bias[i] + inv * tb + c.price_coef * item_log_price_[i] +
                                 c.freshness * std::exp(-age / 3.0));
    }
  }
  const DayTables* t = tables.get();
  cache_->owned[day] = std::move(tables);
  slot.store(t, std::memory_order_release);
  return *t;
}

void GeneratorTruth::check_context(const char* where, int64_t user, int day, int hour, int device,
                                   int position) const {
  auto bad = [&](const char* what, int64_t v, int64_t bound) {
    throw UserError(std::string(where) + ": " + what + " " + std::to_string(v) + " outside 0.." +
                    std::to_string(bound - 1) + " (generator " + path_ + ")");
  };
  if (user < 0 || user >= users_) bad("user", user, users_);
  if (day < 0 || day >= days_) bad("day index", day, days_);
  if (hour < 0 || hour >= hours_) bad("hour", hour, hours_);
  if (device < 0 || device >= devices_) bad("device", device, devices_);
  if (position < 0 || position >= positions_) bad("position", position, positions_);
}

void GeneratorTruth::truth_for_items(int64_t user, int day, int hour, int device, int position, bool ads,
                                     const int64_t* items, int64_t n, double* p_click, double* p_conv) const {
  check_context("truth_for_items", user, day, hour, device, position);
  for (int64_t j = 0; j < n; ++j)
    if (items[j] < 0 || items[j] >= items_)
      throw UserError("truth_for_items: item " + std::to_string(items[j]) + " outside 0.." +
                      std::to_string(items_ - 1) + " (generator " + path_ + ")");
  const DayTables& day_t = day_tables(day);
  const int d = dim_;

  // The user side (Model::prepare_day, user half) and the context terms, once for all items.
  const double cs = std::cos(id_drift_ * day), sn = std::sin(id_drift_ * day);
  const double lat_scale = std::sqrt(latent_weight_ / std::sqrt(static_cast<double>(d)));
  const int64_t s = user_segment_[user];
  float user_lat[kComponents][kMaxLatentDim];
  float user_main[kComponents], hour_b[kComponents], device_b[kComponents], hour_seg[kComponents];
  const float* device_cat[kComponents];  // [C]: device_category row of this device
  const float* ads_cat[kComponents];
  float ads_dev[kComponents];
  for (int k = 0; k < kComponents; ++k) {
    const Component& c = comp_[k];
    const float* seg = &c.seg_lat[(static_cast<size_t>(day) * segments_ + s) * d];
    for (int j = 0; j < d; ++j)
      user_lat[k][j] = static_cast<float>(
          lat_scale * (seg[j] + user_noise_ * (cs * c.user_a[user * d + j] + sn * c.user_b[user * d + j])));
    user_main[k] = static_cast<float>(c.seg_bias[s] + c.user_bias[user] + c.activity_coef * user_activity_[user]);
    hour_b[k] = c.hour_bias[hour];
    device_b[k] = c.device_bias[device];
    hour_seg[k] = c.hour_segment[hour * segments_ + s];
    device_cat[k] = &c.device_category[static_cast<size_t>(device) * categories_];
    ads_cat[k] = c.ads_category.data();
    ads_dev[k] = c.ads_device[device];
  }
  const double mean[kComponents] = {comp_[0].mean, comp_[1].mean};
  const double sd[kComponents] = {comp_[0].sd, comp_[1].sd};
  const double orth = std::sqrt(std::max(1e-12, 1 - r12_ * r12_));
  const double rho_c = std::sqrt(std::max(0.0, 1 - rho_ * rho_));
  const double click_shift = static_cast<double>(position_bias_[position]);
  const double ctr_offset = ads ? ads_ctr_offset_ : 0.0, cvr_offset = ads ? ads_cvr_offset_ : 0.0;

  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = items[j];
    const int64_t ct = item_category_[i];
    double z[kComponents];
    for (int k = 0; k < kComponents; ++k) {  // Model::raw_utility, then standardised
      const float* il = &day_t.item_lat[k][i * d];
      double dot = 0;
      for (int q = 0; q < d; ++q) dot += static_cast<double>(user_lat[k][q]) * il[q];
      double v = dot + user_main[k] + day_t.item_main[k][i] + hour_b[k] + device_b[k] + device_cat[k][ct] +
                 hour_seg[k];
      if (ads) v += ads_cat[k][ct] + ads_dev[k];  // a float sum, as in the generator
      z[k] = (v - mean[k]) / sd[k];
    }
    // Model::draw: F2 orthogonalised against F1, u_cvr = rho F1 + sqrt(1 - rho^2) F2.
    const double f1 = z[0];
    const double f2 = (z[1] - r12_ * f1) / orth;
    const double u_cvr = rho_ * f1 + rho_c * f2;
    if (p_click) p_click[j] = sigmoid(b_ctr_ + a_ctr_ * f1 + click_shift + ctr_offset);
    if (p_conv) p_conv[j] = sigmoid(b_cvr_ + a_cvr_ * u_cvr + cvr_offset);
  }
}

GeneratorTruth::Probabilities GeneratorTruth::truth(int64_t user, int64_t item, int day, int hour, int device,
                                                    int position, bool ads) const {
  Probabilities p;
  truth_for_items(user, day, hour, device, position, ads, &item, 1, &p.click, &p.conversion_given_click);
  return p;
}

}  // namespace ncsrec
