// The built-in synthetic data set. The model (equations, parameters, defaults, files) is
// described in docs/generator.md; keep the two in step. Everything that a default produces is
// frozen under kGeneratorVersion.
//
// Outline. Users and items carry a side feature (segment, category) and a latent vector per
// utility component k in {1, 2}: user latent = segment latent + small id-specific part, item
// latent = category latent + tag latents + small id-specific part. Component k's raw utility
// for an impression (user, item, hour, device, tags, dense features) is a sum of main effects
// (additive per field) and interactions (latent dot product, device x category, hour x
// segment), standardised on a calibration sample of day-0 content impressions. Then
//   u_ctr = F1,  u_cvr = rho F1 + sqrt(1 - rho^2) F2,  rho = 1 - 2 conflict,
//   p(click)        = sigmoid(b_ctr + a_ctr u_ctr + position_bias[pos] + ads_ctr_offset)
//   p(conv | click) = sigmoid(b_cvr + a_cvr u_cvr + ads_cvr_offset)
// with F2 orthogonalised against F1 on the calibration sample, so corr(u_ctr, u_cvr) = rho.
#include "core/data/synthetic.h"

#include <hdf5.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>

#include "core/data/block.h"
#include "core/data/hdf5_shard.h"
#include "core/error.h"
#include "core/random.h"

namespace ncsrec {

namespace synth {

// ---- frozen structure of version 1 (not configurable) -----------------------------------
constexpr int kSegments = 20;      // user_segment cardinality
constexpr int kCategories = 50;    // item_category cardinality
constexpr int kHours = 24;
constexpr int kDevices = 4;
constexpr int kPositions = 10;
constexpr int kTags = 200;         // item_tags vocabulary; 1..4 tags per item
constexpr int kMaxTags = 4;
constexpr int kHomeTags = 8;       // tags typical of a category
constexpr int kDense = 4;          // log price, user activity, position, item age
constexpr int kComponents = 2;     // utility components F1 (shared) and F2 (CVR-specific)

constexpr double kInitialFraction = 0.8;  // share of ids active on day 0; the rest activate later
constexpr double kTargetCtr = 0.04;       // mean p(click) on day-0 content (calibrated intercept)
constexpr double kTargetCvr = 0.10;       // click-weighted mean p(conv | click) on day-0 content
constexpr double kCtrScale = 1.25;        // a_ctr
constexpr double kCvrScale = 1.35;        // a_cvr
constexpr double kPositionSlope = -0.08;  // position_bias[p] = slope * p (CTR only)
constexpr double kAdsCtrOffset = -0.7;
constexpr double kAdsCvrOffset = -0.3;
constexpr int64_t kCalibrationRows = 200000;

// Scales of the parts of a component's raw utility.
constexpr double kSegBias = 0.5, kUserBias = 0.1;      // user main effect: segment + id
constexpr double kCatBias = 0.5, kItemBias = 0.15;      // item main effect: category + id
constexpr double kHourBias = 0.2, kDeviceBias = 0.2, kTagBias = 0.3;
constexpr double kPriceCoef = 0.3, kActivityCoef = 0.2, kFreshness = 0.3;
constexpr double kLatentWeight = 0.45;                 // weight of the user.item dot product
constexpr double kUserNoise = 0.2, kItemNoise = 0.2;     // id-specific latent parts (vs 1 for seg/cat)
constexpr double kTagLatent = 0.4;                     // tag latents added to the item latent
constexpr double kDeviceCategory = 0.25, kHourSegment = 0.2;
constexpr double kAdsCategory = 0.4, kAdsDevice = 0.2; // domain shift in effects (ads only)
constexpr double kGroupDrift = 0.08;                   // AR(1) step of segment/category latents per day
constexpr double kIdDrift = 0.03;                      // rotation (radians/day) of id-specific latents

// Per-stream seeds: every table is a pure function of (seed, stream, index).
enum Stream : uint64_t {
  kStreamPerm = 1, kStreamUserSide, kStreamItemSide, kStreamComp, kStreamCalib, kStreamRows
};

inline double normal_at(uint64_t key) {
  Rng r(key);
  return r.normal();
}

struct Component {
  // Latents: per day for groups (AR(1) drift), base + rotation partner for ids.
  std::vector<float> seg_lat;   // [days][S][dim]
  std::vector<float> cat_lat;   // [days][C][dim]
  std::vector<float> tag_lat;   // [T][dim]
  std::vector<float> user_na, user_nb;  // [U][dim]
  std::vector<float> item_na, item_nb;  // [I][dim]
  std::vector<float> seg_bias, user_bias, cat_bias, item_bias, hour_bias, device_bias, tag_bias;
  std::vector<float> device_category;  // [D][C]
  std::vector<float> hour_segment;     // [H][S]
  std::vector<float> ads_category;     // [C]
  std::vector<float> ads_device;       // [D]
  double price_coef = 0, activity_coef = 0, freshness = 0;
  double mean = 0, sd = 1;  // standardisation on the calibration sample
};

struct Impression {
  int64_t user = 0, item = 0;
  int hour = 0, device = 0, position = 0;
  double p_click = 0, p_conv = 0;
  double u_ctr = 0, u_cvr = 0;
};

class Model {
 public:
  explicit Model(const GeneratorConfig& cfg);

  const GeneratorConfig& cfg() const { return cfg_; }
  int64_t rows_for(int domain) const {
    return domain == 0 ? cfg_.rows_per_day
                       : std::max<int64_t>(1, std::llround(cfg_.rows_per_day * cfg_.ads_fraction));
  }
  // Precomputes the per-day user and item tables (latents with drift, main effects).
  void prepare_day(int day);
  // Draws the impression of (domain, day, row): ids, context, true probabilities. Needs
  // prepare_day(day).
  void draw(int domain, int day, uint64_t row_key, Rng& rng, Impression& imp) const;
  // Fills rows [begin, end) of (domain, day) into a Block. Needs prepare_day(day).
  Block make_block(int domain, int day, int64_t begin, int64_t end, int64_t yyyymmdd) const;
  void save(const std::string& path) const;

  // Raw (unstandardised) utility of component k; `ads` adds the domain shift.
  double raw_utility(int k, const Impression& imp, bool ads) const;

  // Public for tests and docs: the fixed side information.
  int64_t users_ = 0, items_ = 0;
  int dim_ = 0, days_ = 0;
  double rho_ = 1, r12_ = 0, b_ctr_ = 0, b_cvr_ = 0;
  std::vector<int32_t> user_segment_, user_device_, user_birth_;
  std::vector<float> user_activity_;  // standardised log expected impressions
  std::vector<int32_t> item_category_, item_birth_;
  std::vector<float> item_logprice_;  // standardised log price
  std::vector<int32_t> item_tag_offsets_, item_tags_;
  std::vector<int64_t> user_perm_, item_perm_;  // popularity rank -> id
  std::vector<double> user_cdf_, item_cdf_;
  std::vector<double> hour_cdf_;
  std::vector<float> position_bias_;
  Component comp_[kComponents];

 private:
  int64_t sample_id(const std::vector<double>& cdf, const std::vector<int64_t>& perm,
                    const std::vector<int32_t>& birth, int day, Rng& rng) const;
  void calibrate();

  GeneratorConfig cfg_;
  // Day tables: [k][id][dim] latents and [k][id] main effects of the prepared day.
  int prepared_day_ = -1;
  std::vector<float> day_user_lat_[kComponents], day_item_lat_[kComponents];
  std::vector<float> day_user_main_[kComponents], day_item_main_[kComponents];
};

std::vector<double> zipf_cdf(int64_t n, double s) {
  std::vector<double> cdf(static_cast<size_t>(n));
  double acc = 0;
  for (int64_t k = 0; k < n; ++k) cdf[k] = acc += std::pow(static_cast<double>(k + 1), -s);
  for (auto& c : cdf) c /= acc;
  cdf.back() = 1.0;
  return cdf;
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  Rng rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[rng.below(static_cast<uint64_t>(i + 1))]);
  return p;
}

inline int64_t sample_cdf(const std::vector<double>& cdf, double u) {
  auto it = std::upper_bound(cdf.begin(), cdf.end(), u);
  return std::min<int64_t>(static_cast<int64_t>(it - cdf.begin()), static_cast<int64_t>(cdf.size()) - 1);
}

Model::Model(const GeneratorConfig& cfg) : cfg_(cfg) {
  users_ = cfg.users;
  items_ = cfg.items;
  dim_ = cfg.latent_dim;
  days_ = cfg.days;
  rho_ = 1.0 - 2.0 * cfg.conflict;
  const uint64_t seed = cfg.seed;

  // Popularity: Zipf over a random permutation of ids. Ids >= kInitialFraction * n are born
  // on days 1..days-1 (spread evenly); a born id keeps its popularity rank.
  user_perm_ = permutation(users_, hash_combine(seed, kStreamPerm, 1));
  item_perm_ = permutation(items_, hash_combine(seed, kStreamPerm, 2));
  user_cdf_ = zipf_cdf(users_, cfg.zipf);
  item_cdf_ = zipf_cdf(items_, cfg.zipf);
  auto births = [&](int64_t n, uint64_t stream) {
    std::vector<int32_t> b(static_cast<size_t>(n), 0);
    const int64_t first_new = static_cast<int64_t>(std::floor(kInitialFraction * n));
    // Ids of the initial population were born 1..90 days before day 0.
    for (int64_t id = 0; id < first_new; ++id)
      b[id] = -1 - static_cast<int32_t>(mix64(hash_combine(seed, stream, static_cast<uint64_t>(id))) % 90);
    if (days_ > 1)
      for (int64_t id = first_new; id < n; ++id)
        b[id] = 1 + static_cast<int32_t>((id - first_new) * (days_ - 1) / std::max<int64_t>(1, n - first_new));
    return b;
  };
  user_birth_ = births(users_, kStreamPerm + 10);
  item_birth_ = births(items_, kStreamPerm + 11);

  // Hour-of-day traffic: a daily curve, peak in the evening.
  hour_cdf_.resize(kHours);
  {
    double acc = 0;
    for (int h = 0; h < kHours; ++h)
      hour_cdf_[h] = acc += 1.0 + 0.7 * std::sin(2 * M_PI * (h - 14) / 24.0) + (h >= 1 && h <= 6 ? -0.5 : 0.0);
    for (auto& c : hour_cdf_) c /= acc;
    hour_cdf_.back() = 1.0;
  }
  position_bias_.resize(kPositions);
  for (int p = 0; p < kPositions; ++p) position_bias_[p] = static_cast<float>(kPositionSlope * p);

  // Users: segment (skewed), primary device, activity (from popularity rank).
  std::vector<double> seg_cdf(kSegments);
  {
    double acc = 0;
    for (int s = 0; s < kSegments; ++s) seg_cdf[s] = acc += 1.0 / std::sqrt(1.0 + s);
    for (auto& c : seg_cdf) c /= acc;
    seg_cdf.back() = 1.0;
  }
  const double device_share[kDevices] = {0.55, 0.30, 0.10, 0.05};
  user_segment_.resize(users_);
  user_device_.resize(users_);
  user_activity_.resize(users_);
  {
    std::vector<double> act(users_);
    for (int64_t rank = 0; rank < users_; ++rank) {
      const int64_t id = user_perm_[rank];
      Rng r(hash_combine(seed, kStreamUserSide, static_cast<uint64_t>(id)));
      user_segment_[id] = static_cast<int32_t>(sample_cdf(seg_cdf, r.uniform()));
      double u = r.uniform(), acc = 0;
      int d = 0;
      while (d < kDevices - 1 && u >= (acc += device_share[d])) ++d;
      user_device_[id] = d;
      act[id] = -cfg.zipf * std::log(static_cast<double>(rank + 1)) + 0.3 * r.normal();
    }
    double m = 0, v = 0;
    for (double a : act) m += a;
    m /= users_;
    for (double a : act) v += (a - m) * (a - m);
    const double sd = std::sqrt(v / users_) + 1e-12;
    for (int64_t id = 0; id < users_; ++id) user_activity_[id] = static_cast<float>((act[id] - m) / sd);
  }
  // Items: category (Zipf 0.6 over categories), 1..4 tags mostly from the category's home
  // tags, log-normal price with a category mean.
  std::vector<double> cat_cdf = zipf_cdf(kCategories, 0.6);
  std::vector<double> cat_price(kCategories);
  for (int c = 0; c < kCategories; ++c) cat_price[c] = 3.0 + 1.0 * normal_at(hash_combine(seed, kStreamItemSide + 100, c));
  item_category_.resize(items_);
  item_logprice_.resize(items_);
  item_tag_offsets_.assign(items_ + 1, 0);
  item_tags_.clear();
  item_tags_.reserve(items_ * 3);
  {
    std::vector<double> lp(items_);
    for (int64_t id = 0; id < items_; ++id) {
      Rng r(hash_combine(seed, kStreamItemSide, static_cast<uint64_t>(id)));
      const int cat = static_cast<int>(sample_cdf(cat_cdf, r.uniform()));
      item_category_[id] = cat;
      lp[id] = cat_price[cat] + 0.6 * r.normal();
      const int n = 1 + static_cast<int>(r.below(kMaxTags));
      int chosen[kMaxTags];
      for (int j = 0; j < n; ++j) {
        int t;
        bool dup;
        do {
          t = r.uniform() < 0.7 ? (cat * 4 + static_cast<int>(r.below(kHomeTags))) % kTags
                                : static_cast<int>(r.below(kTags));
          dup = std::find(chosen, chosen + j, t) != chosen + j;
        } while (dup);
        chosen[j] = t;
      }
      std::sort(chosen, chosen + n);
      item_tags_.insert(item_tags_.end(), chosen, chosen + n);
      item_tag_offsets_[id + 1] = static_cast<int32_t>(item_tags_.size());
    }
    double m = 0, v = 0;
    for (double a : lp) m += a;
    m /= items_;
    for (double a : lp) v += (a - m) * (a - m);
    const double sd = std::sqrt(v / items_) + 1e-12;
    for (int64_t id = 0; id < items_; ++id) item_logprice_[id] = static_cast<float>((lp[id] - m) / sd);
  }

  // Components: independent parameter draws with the same structure.
  for (int k = 0; k < kComponents; ++k) {
    Component& c = comp_[k];
    const uint64_t ks = hash_combine(seed, kStreamComp, static_cast<uint64_t>(k));
    auto fill = [&](std::vector<float>& v, size_t n, uint64_t table, double scale) {
      v.resize(n);
      for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(scale * normal_at(hash_combine(ks, table, i)));
    };
    const size_t d = static_cast<size_t>(dim_);
    // Group latents: day 0 ~ N(0,1); day t = sqrt(1-g^2) day(t-1) + g N(0,1).
    fill(c.seg_lat, static_cast<size_t>(days_) * kSegments * d, 1, 1.0);
    fill(c.cat_lat, static_cast<size_t>(days_) * kCategories * d, 2, 1.0);
    const float keep = static_cast<float>(std::sqrt(1 - kGroupDrift * kGroupDrift));
    for (int t = 1; t < days_; ++t) {
      for (size_t i = 0; i < kSegments * d; ++i)
        c.seg_lat[t * kSegments * d + i] = keep * c.seg_lat[(t - 1) * kSegments * d + i] +
                                           static_cast<float>(kGroupDrift) * c.seg_lat[t * kSegments * d + i];
      for (size_t i = 0; i < kCategories * d; ++i)
        c.cat_lat[t * kCategories * d + i] = keep * c.cat_lat[(t - 1) * kCategories * d + i] +
                                             static_cast<float>(kGroupDrift) * c.cat_lat[t * kCategories * d + i];
    }
    fill(c.tag_lat, kTags * d, 3, 1.0);
    fill(c.user_na, users_ * d, 4, 1.0);
    fill(c.user_nb, users_ * d, 5, 1.0);
    fill(c.item_na, items_ * d, 6, 1.0);
    fill(c.item_nb, items_ * d, 7, 1.0);
    fill(c.seg_bias, kSegments, 8, kSegBias);
    fill(c.user_bias, users_, 9, kUserBias);
    fill(c.cat_bias, kCategories, 10, kCatBias);
    fill(c.item_bias, items_, 11, kItemBias);
    fill(c.hour_bias, kHours, 12, kHourBias);
    fill(c.device_bias, kDevices, 13, kDeviceBias);
    fill(c.tag_bias, kTags, 14, kTagBias);
    fill(c.device_category, kDevices * kCategories, 15, kDeviceCategory);
    fill(c.hour_segment, kHours * kSegments, 16, kHourSegment);
    fill(c.ads_category, kCategories, 17, kAdsCategory);
    fill(c.ads_device, kDevices, 18, kAdsDevice);
    c.price_coef = kPriceCoef * normal_at(hash_combine(ks, 19, 0));
    c.activity_coef = kActivityCoef * normal_at(hash_combine(ks, 19, 1));
    c.freshness = kFreshness;  // new items get a boost that fades over a few days
  }
  calibrate();
}

int64_t Model::sample_id(const std::vector<double>& cdf, const std::vector<int64_t>& perm,
                         const std::vector<int32_t>& birth, int day, Rng& rng) const {
  for (;;) {  // rejection of not-yet-born ids (at most 1 - kInitialFraction of the mass)
    const int64_t id = perm[sample_cdf(cdf, rng.uniform())];
    if (birth[id] <= day) return id;
  }
}

void Model::prepare_day(int day) {
  if (prepared_day_ == day) return;
  prepared_day_ = day;
  const int d = dim_;
  const double cs = std::cos(kIdDrift * day), sn = std::sin(kIdDrift * day);
  const double lat_scale = std::sqrt(kLatentWeight / std::sqrt(static_cast<double>(d)));
  for (int k = 0; k < kComponents; ++k) {
    const Component& c = comp_[k];
    auto& ul = day_user_lat_[k];
    auto& il = day_item_lat_[k];
    auto& um = day_user_main_[k];
    auto& im = day_item_main_[k];
    ul.resize(users_ * d);
    il.resize(items_ * d);
    um.resize(users_);
    im.resize(items_);
    const float* seg = &c.seg_lat[static_cast<size_t>(day) * kSegments * d];
    const float* cat = &c.cat_lat[static_cast<size_t>(day) * kCategories * d];
#pragma omp parallel for schedule(static)
    for (int64_t u = 0; u < users_; ++u) {
      const int s = user_segment_[u];
      for (int j = 0; j < d; ++j)
        ul[u * d + j] = static_cast<float>(
            lat_scale * (seg[s * d + j] + kUserNoise * (cs * c.user_na[u * d + j] + sn * c.user_nb[u * d + j])));
      um[u] = static_cast<float>(c.seg_bias[s] + c.user_bias[u] + c.activity_coef * user_activity_[u]);
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < items_; ++i) {
      const int ct = item_category_[i];
      const int t0 = item_tag_offsets_[i], t1 = item_tag_offsets_[i + 1];
      const double inv = 1.0 / std::sqrt(static_cast<double>(t1 - t0));
      double tb = 0;
      for (int t = t0; t < t1; ++t) tb += c.tag_bias[item_tags_[t]];
      for (int j = 0; j < d; ++j) {
        double tl = 0;
        for (int t = t0; t < t1; ++t) tl += c.tag_lat[item_tags_[t] * d + j];
        il[i * d + j] = static_cast<float>(
            lat_scale * (cat[ct * d + j] + kTagLatent * inv * tl +
                         kItemNoise * (cs * c.item_na[i * d + j] + sn * c.item_nb[i * d + j])));
      }
      const double age = day - item_birth_[i];  // days since the item appeared
      im[i] = static_cast<float>(c.cat_bias[ct] + c.item_bias[i] + inv * tb + c.price_coef * item_logprice_[i] +
                                 c.freshness * std::exp(-age / 3.0));
    }
  }
}

double Model::raw_utility(int k, const Impression& imp, bool ads) const {
  const Component& c = comp_[k];
  const int d = dim_;
  const float* ul = &day_user_lat_[k][imp.user * d];
  const float* il = &day_item_lat_[k][imp.item * d];
  double dot = 0;
  for (int j = 0; j < d; ++j) dot += static_cast<double>(ul[j]) * il[j];
  const int s = user_segment_[imp.user], ct = item_category_[imp.item];
  double v = dot + day_user_main_[k][imp.user] + day_item_main_[k][imp.item] + c.hour_bias[imp.hour] +
             c.device_bias[imp.device] + c.device_category[imp.device * kCategories + ct] +
             c.hour_segment[imp.hour * kSegments + s];
  if (ads) v += c.ads_category[ct] + c.ads_device[imp.device];
  return v;
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

void Model::draw(int domain, int day, uint64_t /*row_key*/, Rng& rng, Impression& imp) const {
  imp.user = sample_id(user_cdf_, user_perm_, user_birth_, day, rng);
  imp.item = sample_id(item_cdf_, item_perm_, item_birth_, day, rng);
  imp.hour = static_cast<int>(sample_cdf(hour_cdf_, rng.uniform()));
  imp.device = rng.uniform() < 0.8 ? user_device_[imp.user] : static_cast<int>(rng.below(kDevices));
  imp.position = static_cast<int>(rng.below(kPositions));
  const bool ads = domain == 1;
  const double f1 = (raw_utility(0, imp, ads) - comp_[0].mean) / comp_[0].sd;
  const double g2 = (raw_utility(1, imp, ads) - comp_[1].mean) / comp_[1].sd;
  const double f2 = (g2 - r12_ * f1) / std::sqrt(std::max(1e-12, 1 - r12_ * r12_));
  imp.u_ctr = f1;
  imp.u_cvr = rho_ * f1 + std::sqrt(std::max(0.0, 1 - rho_ * rho_)) * f2;
  imp.p_click = sigmoid(b_ctr_ + kCtrScale * imp.u_ctr + position_bias_[imp.position] + (ads ? kAdsCtrOffset : 0.0));
  imp.p_conv = sigmoid(b_cvr_ + kCvrScale * imp.u_cvr + (ads ? kAdsCvrOffset : 0.0));
}

void Model::calibrate() {
  // Standardise both components and orthogonalise F2 against F1 on day-0 content impressions,
  // then solve the intercepts for the target rates. Serial and deterministic.
  prepare_day(0);
  const int64_t n = kCalibrationRows;
  std::vector<double> r1(n), r2(n), pos(n);
  Impression imp;
  for (int64_t r = 0; r < n; ++r) {
    Rng rng(hash_combine(cfg_.seed, kStreamCalib, static_cast<uint64_t>(r)));
    imp.user = sample_id(user_cdf_, user_perm_, user_birth_, 0, rng);
    imp.item = sample_id(item_cdf_, item_perm_, item_birth_, 0, rng);
    imp.hour = static_cast<int>(sample_cdf(hour_cdf_, rng.uniform()));
    imp.device = rng.uniform() < 0.8 ? user_device_[imp.user] : static_cast<int>(rng.below(kDevices));
    imp.position = static_cast<int>(rng.below(kPositions));
    r1[r] = raw_utility(0, imp, false);
    r2[r] = raw_utility(1, imp, false);
    pos[r] = position_bias_[imp.position];
  }
  auto moments = [&](std::vector<double>& x, Component& c) {
    double m = 0, v = 0;
    for (double a : x) m += a;
    m /= n;
    for (double a : x) v += (a - m) * (a - m);
    c.mean = m;
    c.sd = std::sqrt(v / n) + 1e-12;
    for (auto& a : x) a = (a - c.mean) / c.sd;
  };
  moments(r1, comp_[0]);
  moments(r2, comp_[1]);
  double cov = 0;
  for (int64_t r = 0; r < n; ++r) cov += r1[r] * r2[r];
  r12_ = cov / n;
  const double orth = std::sqrt(std::max(1e-12, 1 - r12_ * r12_));
  const double rho_c = std::sqrt(std::max(0.0, 1 - rho_ * rho_));
  std::vector<double> ucvr(n);
  for (int64_t r = 0; r < n; ++r) ucvr[r] = rho_ * r1[r] + rho_c * (r2[r] - r12_ * r1[r]) / orth;
  auto solve = [&](auto&& mean_at) {  // bisection on a monotone mean rate
    double lo = -20, hi = 10;
    for (int it = 0; it < 60; ++it) {
      const double mid = 0.5 * (lo + hi);
      (mean_at(mid) < 0 ? lo : hi) = mid;
    }
    return 0.5 * (lo + hi);
  };
  b_ctr_ = solve([&](double b) {
    double s = 0;
    for (int64_t r = 0; r < n; ++r) s += sigmoid(b + kCtrScale * r1[r] + pos[r]);
    return s / n - kTargetCtr;
  });
  std::vector<double> pc(n);
  double sum_pc = 0;
  for (int64_t r = 0; r < n; ++r) sum_pc += pc[r] = sigmoid(b_ctr_ + kCtrScale * r1[r] + pos[r]);
  b_cvr_ = solve([&](double b) {
    double s = 0;
    for (int64_t r = 0; r < n; ++r) s += pc[r] * sigmoid(b + kCvrScale * ucvr[r]);
    return s / sum_pc - kTargetCvr;
  });
}

const DataSchema& schema() {
  static const DataSchema s = [] {
    DataSchema d;
    d.tasks = {"click", "conversion"};
    d.dense_dim = kDense;
    d.slots = {"user_id", "item_id", "user_segment", "item_category", "hour", "device", "position", "item_tags"};
    d.meta = {"user_id", "day", "domain"};
    d.truth = {"click", "conversion"};
    return d;
  }();
  return s;
}

Block Model::make_block(int domain, int day, int64_t begin, int64_t end, int64_t yyyymmdd) const {
  NCSREC_CHECK(prepared_day_ == day, "make_block: day " << day << " not prepared");
  const int64_t n = end - begin;
  Block b = Block::with_schema(schema());
  b.rows = n;
  for (auto& l : b.labels) l.resize(n);
  for (auto& t : b.truth) t.resize(n);
  for (auto& m : b.meta) m.resize(n);
  b.dense.resize(static_cast<size_t>(n) * kDense);
  for (int s = 0; s < 7; ++s) {
    b.sparse[s].offsets.resize(n + 1);
    b.sparse[s].ids.resize(n);
    for (int64_t r = 0; r <= n; ++r) b.sparse[s].offsets[r] = r;
  }
  std::vector<int64_t> item_of(n);
  const uint64_t day_key = hash_combine(hash_combine(cfg_.seed, kStreamRows, static_cast<uint64_t>(domain)),
                                        static_cast<uint64_t>(day));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const uint64_t key = hash_combine(day_key, static_cast<uint64_t>(begin + r));
    Rng rng(key);
    Impression imp;
    draw(domain, day, key, rng, imp);
    const bool click = rng.uniform() < imp.p_click;
    const bool conv = rng.uniform() < imp.p_conv;  // drawn always, so the stream is fixed
    b.labels[0][r] = click ? 1.f : 0.f;
    b.labels[1][r] = click && conv ? 1.f : 0.f;
    b.truth[0][r] = static_cast<float>(imp.p_click);
    b.truth[1][r] = static_cast<float>(imp.p_conv);
    b.meta[0][r] = imp.user;
    b.meta[1][r] = yyyymmdd;
    b.meta[2][r] = domain;
    float* dn = &b.dense[r * kDense];
    dn[0] = item_logprice_[imp.item];
    dn[1] = user_activity_[imp.user];
    dn[2] = static_cast<float>(imp.position) / (kPositions - 1);
    dn[3] = static_cast<float>(std::min(30, day - item_birth_[imp.item])) / 30.f;
    b.sparse[0].ids[r] = imp.user;
    b.sparse[1].ids[r] = imp.item;
    b.sparse[2].ids[r] = user_segment_[imp.user];
    b.sparse[3].ids[r] = item_category_[imp.item];
    b.sparse[4].ids[r] = imp.hour;
    b.sparse[5].ids[r] = imp.device;
    b.sparse[6].ids[r] = imp.position;
    item_of[r] = imp.item;
  }
  SparseColumn& tags = b.sparse[7];
  tags.offsets.resize(n + 1);
  tags.offsets[0] = 0;
  for (int64_t r = 0; r < n; ++r)
    tags.offsets[r + 1] = tags.offsets[r] + item_tag_offsets_[item_of[r] + 1] - item_tag_offsets_[item_of[r]];
  tags.ids.resize(tags.offsets[n]);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const int32_t t0 = item_tag_offsets_[item_of[r]], t1 = item_tag_offsets_[item_of[r] + 1];
    for (int32_t t = t0; t < t1; ++t) tags.ids[tags.offsets[r] + (t - t0)] = item_tags_[t];
  }
  return b;
}

// ---- generator.h5 ------------------------------------------------------------------------

class H5Writer {
 public:
  explicit H5Writer(const std::string& path) : path_(path) {
    const hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_obj_track_times(fcpl, 0);
    file_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    H5Pclose(fcpl);
    NCSREC_USER_CHECK(file_ >= 0, "cannot create " << path);
    lcpl_ = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl_, 1);
  }
  ~H5Writer() {
    if (lcpl_ >= 0) H5Pclose(lcpl_);
    if (file_ >= 0) H5Fclose(file_);
  }
  void close() {
    H5Pclose(lcpl_);
    lcpl_ = -1;
    const herr_t st = H5Fclose(file_);
    file_ = -1;
    NCSREC_USER_CHECK(st >= 0, "cannot close " << path_);
  }
  template <class T>
  void dataset(const std::string& name, const std::vector<T>& v, std::vector<hsize_t> dims) {
    hsize_t total = 1;
    for (auto d : dims) total *= d;
    NCSREC_CHECK(total == v.size(), "generator.h5: " << name << " size mismatch");
    const hid_t type = std::is_same<T, float>::value     ? H5T_NATIVE_FLOAT
                       : std::is_same<T, double>::value  ? H5T_NATIVE_DOUBLE
                       : std::is_same<T, int32_t>::value ? H5T_NATIVE_INT32
                                                         : H5T_NATIVE_INT64;
    const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_obj_track_times(dcpl, 0);  // no timestamps: same config, same bytes
    const hid_t ds = H5Dcreate2(file_, name.c_str(), type, space, lcpl_, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    const herr_t st = ds >= 0 ? H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) : -1;
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(space);
    NCSREC_USER_CHECK(st >= 0, "cannot write " << name << " to " << path_);
  }
  void attr(const std::string& name, double value) { attr_raw(name, H5T_NATIVE_DOUBLE, &value); }
  void attr(const std::string& name, int64_t value) { attr_raw(name, H5T_NATIVE_INT64, &value); }
  void attr(const std::string& name, const std::string& value) {
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, std::max<size_t>(1, value.size()));
    H5Tset_strpad(type, H5T_STR_NULLPAD);
    attr_raw(name, type, value.data());
    H5Tclose(type);
  }

 private:
  void attr_raw(const std::string& name, hid_t type, const void* data) {
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t a = H5Acreate2(file_, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT);
    const herr_t st = a >= 0 ? H5Awrite(a, type, data) : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    NCSREC_USER_CHECK(st >= 0, "cannot write attribute " << name << " to " << path_);
  }
  std::string path_;
  hid_t file_ = -1, lcpl_ = -1;
};

void Model::save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  {
    H5Writer w(tmp);
    w.attr("generator_version", static_cast<int64_t>(kGeneratorVersion));
    w.attr("seed", static_cast<int64_t>(cfg_.seed));
    w.attr("users", users_);
    w.attr("items", items_);
    w.attr("zipf", cfg_.zipf);
    w.attr("latent_dim", static_cast<int64_t>(dim_));
    w.attr("conflict", cfg_.conflict);
    w.attr("rho", rho_);
    w.attr("days", static_cast<int64_t>(days_));
    w.attr("rows_per_day", cfg_.rows_per_day);
    w.attr("ads_fraction", cfg_.ads_fraction);
    w.attr("shard_rows", cfg_.shard_rows);
    w.attr("start_day", cfg_.start_day);
    w.attr("b_ctr", b_ctr_);
    w.attr("b_cvr", b_cvr_);
    w.attr("a_ctr", kCtrScale);
    w.attr("a_cvr", kCvrScale);
    w.attr("r12", r12_);
    w.attr("ads_ctr_offset", kAdsCtrOffset);
    w.attr("ads_cvr_offset", kAdsCvrOffset);
    w.attr("latent_weight", kLatentWeight);
    w.attr("user_noise", kUserNoise);
    w.attr("item_noise", kItemNoise);
    w.attr("tag_latent", kTagLatent);
    w.attr("id_drift", kIdDrift);
    w.attr("group_drift", kGroupDrift);
    w.attr("initial_fraction", kInitialFraction);
    const hsize_t U = users_, I = items_, D = dim_, T = days_;
    w.dataset("user/segment", user_segment_, {U});
    w.dataset("user/primary_device", user_device_, {U});
    w.dataset("user/birth_day", user_birth_, {U});
    w.dataset("user/activity", user_activity_, {U});
    w.dataset("user/popularity_rank_to_id", user_perm_, {U});
    w.dataset("item/category", item_category_, {I});
    w.dataset("item/birth_day", item_birth_, {I});
    w.dataset("item/log_price", item_logprice_, {I});
    w.dataset("item/tag_offsets", item_tag_offsets_, {I + 1});
    w.dataset("item/tags", item_tags_, {item_tags_.size()});
    w.dataset("item/popularity_rank_to_id", item_perm_, {I});
    w.dataset("context/position_bias", position_bias_, {static_cast<hsize_t>(kPositions)});
    w.dataset("context/hour_cdf", hour_cdf_, {static_cast<hsize_t>(kHours)});
    for (int k = 0; k < kComponents; ++k) {
      const Component& c = comp_[k];
      const std::string g = "component" + std::to_string(k + 1) + "/";
      w.dataset(g + "segment_latent", c.seg_lat, {T, kSegments, D});
      w.dataset(g + "category_latent", c.cat_lat, {T, kCategories, D});
      w.dataset(g + "tag_latent", c.tag_lat, {kTags, D});
      w.dataset(g + "user_latent_a", c.user_na, {U, D});
      w.dataset(g + "user_latent_b", c.user_nb, {U, D});
      w.dataset(g + "item_latent_a", c.item_na, {I, D});
      w.dataset(g + "item_latent_b", c.item_nb, {I, D});
      w.dataset(g + "segment_bias", c.seg_bias, {kSegments});
      w.dataset(g + "user_bias", c.user_bias, {U});
      w.dataset(g + "category_bias", c.cat_bias, {kCategories});
      w.dataset(g + "item_bias", c.item_bias, {I});
      w.dataset(g + "hour_bias", c.hour_bias, {kHours});
      w.dataset(g + "device_bias", c.device_bias, {kDevices});
      w.dataset(g + "tag_bias", c.tag_bias, {kTags});
      w.dataset(g + "device_category", c.device_category, {kDevices, kCategories});
      w.dataset(g + "hour_segment", c.hour_segment, {kHours, kSegments});
      w.dataset(g + "ads_category", c.ads_category, {kCategories});
      w.dataset(g + "ads_device", c.ads_device, {kDevices});
      std::vector<double> scalars = {c.price_coef, c.activity_coef, c.freshness, c.mean, c.sd};
      w.dataset(g + "scalars", scalars, {5});  // price_coef, activity_coef, freshness, mean, sd
    }
    w.close();
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  NCSREC_USER_CHECK(!ec, "cannot rename " << tmp << " to " << path << ": " << ec.message());
}

// Days since 1970-01-01 of a civil date and back (H. Hinnant's algorithms).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}
void civil_from_days(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  y = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y += m <= 2;
}

int64_t parse_day(const std::string& s) {
  int y = 0;
  unsigned m = 0, d = 0;
  char tail = 0;
  const bool ok = s.size() == 10 && std::sscanf(s.c_str(), "%4d-%2u-%2u%c", &y, &m, &d, &tail) == 3 && m >= 1 &&
                  m <= 12 && d >= 1 && d <= 31;
  if (!ok) throw ConfigError("generator start_day: expected YYYY-MM-DD, got '" + s + "'");
  const int64_t z = days_from_civil(y, m, d);
  int64_t y2;
  unsigned m2, d2;
  civil_from_days(z, y2, m2, d2);
  if (m2 != m || d2 != d) throw ConfigError("generator start_day: no such date '" + s + "'");
  return z;
}

}  // namespace synth

GeneratorConfig with_defaults(GeneratorConfig c) {
  if (c.users == 0) c.users = 100000;
  if (c.items == 0) c.items = 20000;
  if (c.zipf == 0) c.zipf = 0.8;
  if (c.latent_dim == 0) c.latent_dim = 8;
  if (c.days == 0) c.days = 8;
  if (c.rows_per_day == 0) c.rows_per_day = 500000;
  if (c.ads_fraction == 0) c.ads_fraction = 0.1;
  if (c.shard_rows == 0) c.shard_rows = 250000;
  if (c.start_day.empty()) c.start_day = "2026-01-01";
  return c;
}

namespace {

void validate(const GeneratorConfig& c) {
  auto bad = [](const std::string& key, const std::string& why) {
    throw ConfigError("generator " + key + ": " + why);
  };
  if (c.users < 100) bad("users", "must be at least 100, got " + std::to_string(c.users));
  if (c.items < 100) bad("items", "must be at least 100, got " + std::to_string(c.items));
  if (!(c.zipf > 0 && c.zipf <= 3)) bad("zipf", "must be in (0, 3], got " + std::to_string(c.zipf));
  if (c.latent_dim < 1 || c.latent_dim > 256) bad("latent_dim", "must be in [1, 256], got " + std::to_string(c.latent_dim));
  if (!(c.conflict >= 0 && c.conflict <= 1)) bad("conflict", "must be in [0, 1], got " + std::to_string(c.conflict));
  if (c.days < 1 || c.days > 3650) bad("days", "must be in [1, 3650], got " + std::to_string(c.days));
  if (c.rows_per_day < 1) bad("rows_per_day", "must be positive, got " + std::to_string(c.rows_per_day));
  if (!(c.ads_fraction > 0 && c.ads_fraction <= 10)) bad("ads_fraction", "must be in (0, 10], got " + std::to_string(c.ads_fraction));
  if (c.shard_rows < 1) bad("shard_rows", "must be positive, got " + std::to_string(c.shard_rows));
  synth::parse_day(c.start_day);
}

std::string day_name(int64_t z, int64_t* yyyymmdd) {
  int64_t y;
  unsigned m, d;
  synth::civil_from_days(z, y, m, d);
  char buf[32];
  std::snprintf(buf, sizeof buf, "day=%04lld-%02u-%02u", static_cast<long long>(y), m, d);
  *yyyymmdd = y * 10000 + m * 100 + d;
  return buf;
}

}  // namespace

GeneratorSummary generate_dataset(const GeneratorConfig& config, const std::string& out_dir,
                                  const std::function<void(int64_t, int64_t)>& progress) {
  namespace fs = std::filesystem;
  const GeneratorConfig cfg = with_defaults(config);
  validate(cfg);
  synth::Model model(cfg);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  NCSREC_USER_CHECK(!ec, "cannot create " << out_dir << ": " << ec.message());
  model.save((fs::path(out_dir) / "generator.h5").string());

  const int64_t first = synth::parse_day(cfg.start_day);
  const char* domains[2] = {"content", "ads"};
  const int64_t total = static_cast<int64_t>(cfg.days) * (model.rows_for(0) + model.rows_for(1));
  GeneratorSummary sum;
  for (int day = 0; day < cfg.days; ++day) {
    model.prepare_day(day);
    int64_t yyyymmdd = 0;
    const std::string dname = day_name(first + day, &yyyymmdd);
    for (int domain = 0; domain < 2; ++domain) {
      const fs::path dir = fs::path(out_dir) / domains[domain] / dname;
      fs::create_directories(dir, ec);
      NCSREC_USER_CHECK(!ec, "cannot create " << dir.string() << ": " << ec.message());
      // A re-run replaces the day: drop the marker first, then stale parts.
      fs::remove(dir / "_DONE", ec);
      for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (n.rfind("part-", 0) == 0) fs::remove(e.path(), ec);
      }
      const int64_t rows = model.rows_for(domain);
      int part = 0;
      for (int64_t begin = 0; begin < rows; begin += cfg.shard_rows, ++part) {
        const int64_t end = std::min(rows, begin + cfg.shard_rows);
        Block b = model.make_block(domain, day, begin, end, yyyymmdd);
        for (int64_t r = 0; r < b.rows; ++r) {
          sum.clicks += b.labels[0][r] > 0.5f;
          sum.conversions += b.labels[1][r] > 0.5f;
        }
        sum.rows += b.rows;
        char pname[32];
        std::snprintf(pname, sizeof pname, "part-%04d.h5", part);
        write_shard((dir / pname).string(), b);
        if (progress) progress(sum.rows, total);
      }
      std::ofstream done(dir / "_DONE");
      done << "rows " << rows << "\n";
      NCSREC_USER_CHECK(done.good(), "cannot write " << (dir / "_DONE").string());
    }
  }
  sum.ctr = sum.rows ? static_cast<double>(sum.clicks) / sum.rows : 0;
  sum.cvr_given_click = sum.clicks ? static_cast<double>(sum.conversions) / sum.clicks : 0;
  return sum;
}

}  // namespace ncsrec
