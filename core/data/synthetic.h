// The built-in synthetic data set (`ncsrec gen`): impressions with clicks and post-click
// conversions drawn from known probabilities with planted structure, so every model's AUC
// can be read beside the Bayes-optimal AUC of the same split.
//
// The defaults are frozen and versioned (kGeneratorVersion): changing what a default
// produces means bumping the version. The generator's parameters are saved beside the data
// (generator.h5) so the true relevance of any (user, item) pair can be recomputed.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ncsrec {

constexpr int kGeneratorVersion = 1;

struct GeneratorConfig {
  uint64_t seed = 2026;
  int64_t users = 0;          // 0 = the frozen default
  int64_t items = 0;
  double zipf = 0;            // exponent of user and item popularity
  int latent_dim = 0;
  double conflict = 0.3;      // c in [0,1]: corr(CTR utility, CVR utility) = 1 - 2c
  int days = 0;
  int64_t rows_per_day = 0;   // content-domain impressions per day
  double ads_fraction = 0;    // ads-domain impressions per day, as a fraction of content's
  int64_t shard_rows = 0;     // rows per shard file
  std::string start_day = "2026-01-01";
};

// Fills unset (zero) fields with the frozen defaults of kGeneratorVersion.
GeneratorConfig with_defaults(GeneratorConfig config);

struct GeneratorSummary {
  int64_t rows = 0, clicks = 0, conversions = 0;
  double ctr = 0, cvr_given_click = 0;
};

// Writes <out_dir>/<domain>/day=YYYY-MM-DD/part-NNNN.h5 (+ _DONE) for domains "content" and
// "ads", and <out_dir>/generator.h5 with the parameters. `progress(done, total)` is called
// now and then. Returns what was written.
GeneratorSummary generate_dataset(const GeneratorConfig& config, const std::string& out_dir,
                                  const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace ncsrec
