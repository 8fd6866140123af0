// The synthetic generator's parameters read back from <out>/generator.h5, and the true
// probabilities p(click) and p(conv | click) of any impression (user, item, day, hour, device,
// position, domain), also of pairs that were never drawn: the ground truth for retrieval
// metrics over a whole item catalogue. The model is that of docs/generator.md; the
// arithmetic mirrors core/data/synthetic.cpp step for step (the same float32 day tables, the
// same order of additions), so the result equals a shard's truth/click and truth/conversion
// columns to float32 rounding. Not a generator: nothing here draws impressions.
//
// Cost: the item side of a day (latents with drift, main effects) is built on the first call
// for that day and kept (items x 2 x (latent_dim + 1) floats per day used); the user side is
// computed per call. Every const method is safe to call from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ncsrec {

class GeneratorTruth {
 public:
  // Reads generator.h5. Throws UserError naming the path and what is wrong (missing or
  // corrupt file, missing attribute or dataset, wrong shape, other generator_version).
  static GeneratorTruth load(const std::string& path);

  GeneratorTruth(GeneratorTruth&&) noexcept;
  GeneratorTruth& operator=(GeneratorTruth&&) noexcept;
  ~GeneratorTruth();

  int64_t users() const { return users_; }
  int64_t items() const { return items_; }
  int days() const { return days_; }
  int latent_dim() const { return dim_; }
  std::string start_day() const { return start_day_; }  // "YYYY-MM-DD" of day index 0
  int hours() const { return hours_; }
  int devices() const { return devices_; }
  int positions() const { return positions_; }

  // The day index (0 .. days-1) of a shard's meta/day value (yyyymmdd, e.g. 20260102).
  // Throws UserError when it is not a date or outside the generated days.
  int day_index(int64_t yyyymmdd) const;

  // Item features, e.g. for building an item catalogue. Birth days are day indices relative
  // to start_day (negative: born before day 0).
  int64_t item_category(int64_t i) const { return item_category_[i]; }
  const int64_t* item_tags(int64_t i, int64_t* n) const {
    *n = item_tag_offsets_[i + 1] - item_tag_offsets_[i];
    return &item_tags_[item_tag_offsets_[i]];
  }
  double item_log_price(int64_t i) const { return item_log_price_[i]; }
  int64_t item_birth_day(int64_t i) const { return item_birth_[i]; }
  int64_t user_segment(int64_t u) const { return user_segment_[u]; }
  int64_t user_primary_device(int64_t u) const { return user_device_[u]; }
  double user_activity(int64_t u) const { return user_activity_[u]; }
  int64_t user_birth_day(int64_t u) const { return user_birth_[u]; }

  struct Probabilities {
    double click = 0;                   // p(click)
    double conversion_given_click = 0;  // p(conv | click)
  };
  // The true probabilities of one impression; day is a day index (0 .. days-1), ads = the
  // ads domain (meta/domain 1). Throws UserError on an id or context value out of range.
  Probabilities truth(int64_t user, int64_t item, int day, int hour, int device, int position,
                      bool ads = false) const;
  // The same for n items shown to one user in one context: the user side is computed once.
  // Writes p_click[j], p_conv[j] (either may be null) for items[j]. Allocation-free once the
  // day's item tables exist. Throws UserError (before writing anything) on a value out of range.
  void truth_for_items(int64_t user, int day, int hour, int device, int position, bool ads,
                       const int64_t* items, int64_t n, double* p_click, double* p_conv) const;

 private:
  GeneratorTruth();
  struct Component;
  struct DayTables;
  struct DayCache;
  const DayTables& day_tables(int day) const;
  void check_context(const char* where, int64_t user, int day, int hour, int device, int position) const;

  std::string path_, start_day_;
  int64_t start_epoch_day_ = 0;  // days since 1970-01-01 of start_day
  int64_t users_ = 0, items_ = 0;
  int dim_ = 0, days_ = 0;
  int segments_ = 0, categories_ = 0, hours_ = 0, devices_ = 0, positions_ = 0, tags_ = 0;
  double rho_ = 1, r12_ = 0, b_ctr_ = 0, b_cvr_ = 0, a_ctr_ = 0, a_cvr_ = 0;
  double ads_ctr_offset_ = 0, ads_cvr_offset_ = 0;
  double latent_weight_ = 0, user_noise_ = 0, item_noise_ = 0, tag_latent_ = 0, id_drift_ = 0;
  std::vector<int64_t> user_segment_, user_device_, user_birth_;
  std::vector<float> user_activity_;
  std::vector<int64_t> item_category_, item_birth_, item_tag_offsets_, item_tags_;
  std::vector<float> item_log_price_;
  std::vector<float> position_bias_;
  std::unique_ptr<Component[]> comp_;  // [2]: F1 (shared) and F2 (CVR-specific)
  std::unique_ptr<DayCache> cache_;
};

}  // namespace ncsrec
