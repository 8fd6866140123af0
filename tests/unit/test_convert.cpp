// Tests of `ncsrec convert` (core/data/convert*.h, core/data/csv_reader.h, docs/data.md): the
// shipped schemas on the real samples in ../shared/data (row counts, label rates, hand-checked
// rows), bad rows under both policies, the clear message for a missing column, a wrong type, an
// empty file and a truncated gzip, CSV quoting, the documented hash and split, and output that
// does not depend on the thread count or the chunk size.
#include <gtest/gtest.h>
#include <omp.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/data/convert.h"
#include "core/data/convert_schema.h"
#include "core/data/csv_reader.h"
#include "core/data/hdf5_shard.h"
#include "core/error.h"
#include "core/random.h"

#include "scratch_dir.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

const std::string kSource = NCSREC_SOURCE_DIR;
const std::string kShared = kSource + "/../shared/data";

#define SKIP_WITHOUT(path)                                                              \
  do {                                                                                  \
    if (!fs::exists(path)) GTEST_SKIP() << "shared data not found: " << (path);         \
  } while (0)

std::string write_file(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

std::string write_gzip(const fs::path& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  EXPECT_NE(f, nullptr);
  EXPECT_EQ(gzwrite(f, text.data(), static_cast<unsigned>(text.size())), static_cast<int>(text.size()));
  EXPECT_EQ(gzclose(f), Z_OK);
  return path.string();
}

// All rows of a converted folder (its shards in order), after checking its _DONE marker.
Block read_folder(const fs::path& dir) {
  Block all;
  bool first = true;
  for (const auto& file : list_day_shards(dir.string())) {
    int64_t rows = 0;
    const DataSchema schema = read_shard_schema(file, &rows);
    if (first) all = Block::with_schema(schema), first = false;
    Block part;
    read_shard_rows(file, 0, rows, part);
    for (int64_t r = 0; r < part.rows; ++r) all.append_row(part, r);
  }
  return all;
}

ConvertSummary run(const ConvertSchema& schema, const std::vector<std::string>& inputs, const fs::path& out,
                   BadRowPolicy policy = BadRowPolicy::fail, size_t chunk_bytes = size_t(4) << 20) {
  ConvertOptions o;
  o.inputs = inputs;
  o.out_dir = out.string();
  o.policy = policy;
  o.chunk_bytes = chunk_bytes;
  return convert(schema, o);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "(no error)";
}

double label_mean(const Block& b, size_t task) {
  double s = 0;
  for (float v : b.labels[task]) s += v;
  return s / static_cast<double>(b.rows);
}

int64_t id_of(const std::string& salt, const std::string& value) { return categorical_id(hash_string(salt), value); }

// ---- the documented functions ------------------------------------------------------------

TEST(ConvertHash, IsTheDocumentedFormulaAndStable) {
  const uint64_t expected = mix64(hash_combine(hash_string("education"), hash_string("Children"))) & INT64_MAX;
  EXPECT_EQ(id_of("education", "Children"), static_cast<int64_t>(expected));
  EXPECT_EQ(hash_bytes("any text"), hash_string("any text"));
  // Pinned: changing the hash silently would invalidate every converted data set.
  EXPECT_EQ(id_of("slot", "value"), 8620018989269584120LL);
  EXPECT_NE(id_of("a", "x"), id_of("b", "x"));   // salted per slot
  EXPECT_NE(id_of("a", "1"), id_of("a", "1.0"));  // numeric-looking values hash their text
  EXPECT_GE(id_of("a", ""), 0);
}

TEST(ConvertSplit, IsAPureFunctionOfSeedAndRowWithTheRequestedFractions) {
  const ConvertSchema s = parse_convert_schema(
      "input: {columns: [a, y]}\nlabels: [{name: y, column: y, equals: '1'}]\nsparse: [a]\n"
      "split: {seed: 7, parts: {train: 0.7, valid: 0.1, test: 0.2}}\n",
      "t.yaml");
  std::vector<int64_t> count(3, 0);
  const int64_t n = 200000;
  for (int64_t r = 0; r < n; ++r) {
    const int p = split_part(s.split, r);
    const double u = to_unit(hash_combine(7, static_cast<uint64_t>(r)));
    EXPECT_EQ(p, u < 0.7 ? 0 : u < 0.8 ? 1 : 2);
    ++count[static_cast<size_t>(p)];
  }
  EXPECT_NEAR(count[0] / double(n), 0.7, 0.005);
  EXPECT_NEAR(count[1] / double(n), 0.1, 0.005);
  EXPECT_NEAR(count[2] / double(n), 0.2, 0.005);
}

// ---- schema errors name the file and the key path ------------------------------------------

std::string schema_error(const std::string& yaml) {
  try {
    parse_convert_schema(yaml, "my.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ConvertSchema, MistakesAreConfigErrorsNamingFileAndKeyPath) {
  const std::string ok = "input: {columns: [a, y]}\nlabels: [{name: y, column: y, equals: '1'}]\nsparse: [a]\n";
  EXPECT_EQ(schema_error(ok), "(no error)");
  EXPECT_NE(schema_error(ok + "sparce: [a]\n").find("my.yaml: sparce: unknown key"), std::string::npos);
  EXPECT_NE(schema_error("input: {columns: [a, y]}\nlabels: [{name: y, column: y}]\nsparse: [a]\n")
                .find("my.yaml: labels[0]: give exactly one rule"),
            std::string::npos);
  EXPECT_NE(schema_error("input: {columns: [a, y]}\nlabels: [{name: y, column: y, equals: '1', colour: red}]\n"
                         "sparse: [a]\n")
                .find("labels[0].colour: unknown key"),
            std::string::npos);
  EXPECT_NE(schema_error("input: {columns: [a, y, z]}\nlabels: [{name: y, column: y, equals: '1'}]\nsparse: [a]\n")
                .find("neither used nor ignored (list them under input.ignore): z"),
            std::string::npos);
  EXPECT_NE(schema_error("input: {columns: [a, y]}\nlabels: [{name: y, column: y, equals: '1'}]\nsparse: [b]\n")
                .find("no column is named 'b'"),
            std::string::npos);
  EXPECT_NE(schema_error(ok + "split: {seed: 1, parts: {train: 0.7, test: 0.2}}\n").find("split.parts: the fractions sum"),
            std::string::npos);
  EXPECT_NE(schema_error(ok + "dense: [{column: a, log1p: maybe}]\n").find("dense[0].log1p: expected true or false"),
            std::string::npos);
  EXPECT_NE(schema_error("input: {columns: [a, y]}\nlabels: [{name: y, column: y, equals: '1'}]\nsparse: [a]\n"
                         "meta: [{column: a, type: text}]\n")
                .find("meta[0].type: 'text' is not one of: int, hash, date"),
            std::string::npos);
}

// ---- the shipped schemas on the real samples -----------------------------------------------

TEST(ConvertShipped, CensusIncome1994GivesTheMmoeTasksAndASeededSplit) {
  const std::string input = kShared + "/census_income_kdd/census-income-1994.data.gz";
  SKIP_WITHOUT(input);
  ScratchDir dir("convert_census");
  const ConvertSchema schema = load_convert_schema(kSource + "/configs/data/census_income_kdd.yaml");
  const ConvertSummary s = run(schema, {input}, dir.path / "out");
  EXPECT_EQ(s.rows_read, 49816);
  EXPECT_EQ(s.rows_written, 49816);
  EXPECT_EQ(s.rows_rejected, 0);
  ASSERT_EQ(s.parts, (std::vector<std::string>{"train", "valid", "test"}));

  std::vector<Block> parts;
  int64_t total = 0;
  double income = 0, marital = 0;
  for (size_t p = 0; p < 3; ++p) {
    parts.push_back(read_folder(dir.path / "out" / s.parts[p]));
    EXPECT_EQ(parts[p].rows, s.part_rows[p]);
    total += parts[p].rows;
    income += label_mean(parts[p], 0) * parts[p].rows;
    marital += label_mean(parts[p], 1) * parts[p].rows;
  }
  EXPECT_EQ(total, 49816);
  EXPECT_NEAR(parts[0].rows / 49816.0, 0.7, 0.01);
  EXPECT_NEAR(parts[2].rows / 49816.0, 0.2, 0.01);
  // Counted with awk on the raw file: 2,859 "50000+." (5.7% in this half of UCI; ~6.2% in the
  // training file) and 21,551 "Never married" (43.3%).
  EXPECT_EQ(std::lround(income), 2859);
  EXPECT_EQ(std::lround(marital), 21551);
  const DataSchema& ds = parts[0].schema;
  EXPECT_EQ(ds.tasks, (std::vector<std::string>{"income", "marital"}));
  EXPECT_EQ(ds.slots.size(), 29u);
  EXPECT_EQ(ds.dense_dim, 10);
  EXPECT_EQ(ds.slot_index("instance_weight"), -1);
  EXPECT_FALSE(ds.has_weight);

  // Hand-checked rows: data rows 0 and 1 of the file, found in their split part by position.
  //   0: "35, Private, 29, 3, High school graduate, ..., Divorced, ..., 94, - 50000."
  //   1: "13, Not in universe, 0, 0, Children, ..., Never married, ..., Germany, ..."
  std::vector<int64_t> seen(3, 0);
  std::vector<std::pair<size_t, int64_t>> where;
  for (int64_t r = 0; r < 2; ++r) {
    const size_t p = static_cast<size_t>(split_part(schema.split, r));
    where.emplace_back(p, seen[p]++);
  }
  const int education = ds.slot_index("education"), father = ds.slot_index("country_father");
  const int sex = ds.slot_index("sex");
  auto slot_id = [&](size_t p, int64_t row, int slot) {
    const SparseColumn& c = parts[p].sparse[static_cast<size_t>(slot)];
    EXPECT_EQ(c.offsets[row + 1] - c.offsets[row], 1);
    return c.ids[static_cast<size_t>(c.offsets[row])];
  };
  const auto [p0, r0] = where[0];
  const auto [p1, r1] = where[1];
  EXPECT_EQ(parts[p0].labels[0][r0], 0.f);
  EXPECT_EQ(parts[p0].labels[1][r0], 0.f);
  EXPECT_EQ(parts[p1].labels[1][r1], 1.f);
  EXPECT_EQ(slot_id(p0, r0, education), id_of("education", "High school graduate"));
  EXPECT_EQ(slot_id(p0, r0, sex), id_of("sex", "Female"));
  EXPECT_EQ(slot_id(p1, r1, education), id_of("education", "Children"));
  EXPECT_EQ(slot_id(p1, r1, father), id_of("country_father", "Germany"));
  // age standardised with the train part's statistics (also in stats.yaml)
  EXPECT_NEAR(parts[p0].dense[static_cast<size_t>(r0) * 10], (35 - s.dense_mean[0]) / s.dense_std[0], 1e-5);
  EXPECT_NEAR(parts[p1].dense[static_cast<size_t>(r1) * 10], (13 - s.dense_mean[0]) / s.dense_std[0], 1e-5);
  EXPECT_NEAR(s.dense_mean[0], 34.68, 0.5);  // mean age of the train part
  EXPECT_EQ(s.dense_std[9], 0.0);            // year is constant: standardised to 0
  EXPECT_EQ(parts[p0].dense[static_cast<size_t>(r0) * 10 + 9], 0.f);
  EXPECT_TRUE(fs::exists(dir.path / "out" / "stats.yaml"));
  // The train part standardised with its own statistics has mean ~0 and std ~1.
  double m = 0, v = 0;
  for (int64_t r = 0; r < parts[0].rows; ++r) m += parts[0].dense[static_cast<size_t>(r) * 10];
  m /= static_cast<double>(parts[0].rows);
  for (int64_t r = 0; r < parts[0].rows; ++r) v += std::pow(parts[0].dense[static_cast<size_t>(r) * 10] - m, 2);
  EXPECT_NEAR(m, 0, 1e-4);
  EXPECT_NEAR(std::sqrt(v / static_cast<double>(parts[0].rows)), 1, 1e-4);
}

TEST(ConvertShipped, AliCcpKeyValueLinesGiveMultiValuedSlots) {
  const std::string input = kShared + "/ali_ccp_sample/train_small.txt.gz";
  SKIP_WITHOUT(input);
  ScratchDir dir("convert_aliccp");
  const ConvertSchema schema = load_convert_schema(kSource + "/configs/data/ali_ccp.yaml");
  const ConvertSummary s = run(schema, {input}, dir.path / "out");
  EXPECT_EQ(s.rows_read, 10);
  EXPECT_EQ(s.rows_written, 10);
  const Block b = read_folder(dir.path / "out");
  ASSERT_EQ(b.rows, 10);
  EXPECT_EQ(b.schema.tasks, (std::vector<std::string>{"click", "ctcvr"}));
  EXPECT_EQ(b.schema.slots.size(), 23u);
  EXPECT_DOUBLE_EQ(label_mean(b, 0), 0.2);  // rows 1 and 3 clicked
  EXPECT_DOUBLE_EQ(label_mean(b, 1), 0.1);  // row 1 converted
  // Row 0: "1,1,1,210:1,210:2,210:3,216:4,301:5,205:6,...,101:12,...,150_14:18,..."
  const DataSchema& ds = b.schema;
  const SparseColumn& intent = b.sparse[static_cast<size_t>(ds.slot_index("210"))];
  ASSERT_EQ(intent.offsets[1], 3);
  EXPECT_EQ(intent.ids[0], id_of("210", "1"));
  EXPECT_EQ(intent.ids[2], id_of("210", "3"));
  const SparseColumn& user = b.sparse[static_cast<size_t>(ds.slot_index("101"))];
  EXPECT_EQ(user.ids[0], id_of("101", "12"));
  // field 126 never occurs in the sample: every row has the slot's reserved missing id
  const SparseColumn& level1 = b.sparse[static_cast<size_t>(ds.slot_index("126"))];
  EXPECT_EQ(level1.offsets[10], 10);
  EXPECT_EQ(level1.ids[0], id_of("126", ""));
  // a multi-valued field absent from a row leaves it empty: 509 is in 3 of the 10 rows
  const SparseColumn& shop_cross = b.sparse[static_cast<size_t>(ds.slot_index("509"))];
  int64_t rows_with = 0;
  for (int r = 0; r < 10; ++r) rows_with += shop_cross.offsets[r + 1] > shop_cross.offsets[r];
  EXPECT_EQ(rows_with, 3);
  EXPECT_EQ(b.meta[static_cast<size_t>(ds.meta_index("sample_id"))][0], 1);
  EXPECT_EQ(b.meta[static_cast<size_t>(ds.meta_index("user_id"))][0], 12);
}

TEST(ConvertShipped, CriteoSampleFillsClipsAndLogsCounts) {
  const std::string input = kShared + "/criteo_sample/deepctr_criteo_sample.txt";
  SKIP_WITHOUT(input);
  ScratchDir dir("convert_criteo");
  const ConvertSchema schema = load_convert_schema(kSource + "/configs/data/criteo.yaml");
  const ConvertSummary s = run(schema, {input}, dir.path / "out");
  EXPECT_EQ(s.rows_read, 200);
  EXPECT_EQ(s.rows_written, 200);
  Block train = read_folder(dir.path / "out" / "train"), test = read_folder(dir.path / "out" / "test");
  EXPECT_EQ(train.rows + test.rows, 200);
  EXPECT_EQ(train.schema.dense_dim, 13);
  EXPECT_EQ(train.schema.slots.size(), 26u);
  // Row 0: "0,,3,260.0,,17668.0,,,33.0,,,,0.0,,05db9164,...,87c6f83c,,,0429f84b,..."
  // Row 1: "0,,-1,19.0,35.0,..."
  std::vector<int64_t> seen(2, 0);
  const Block* part[2] = {&train, &test};
  for (int64_t r = 0; r < 2; ++r) {
    const size_t p = static_cast<size_t>(split_part(schema.split, r));
    const Block& b = *part[p];
    const size_t at = static_cast<size_t>(seen[p]++);
    EXPECT_EQ(b.labels[0][at], 0.f);
    EXPECT_EQ(b.dense[at * 13 + 0], 0.f);  // I1 empty -> fill 0 -> log1p(0)
    if (r == 0) {
      EXPECT_FLOAT_EQ(b.dense[at * 13 + 1], std::log1p(3.f));
      EXPECT_FLOAT_EQ(b.dense[at * 13 + 2], std::log1p(260.f));
      const SparseColumn& c1 = b.sparse[0];
      EXPECT_EQ(c1.ids[static_cast<size_t>(c1.offsets[at])], id_of("C1", "05db9164"));
      const SparseColumn& c19 = b.sparse[18];  // empty -> the reserved id
      EXPECT_EQ(c19.ids[static_cast<size_t>(c19.offsets[at])], id_of("C19", ""));
    } else {
      EXPECT_EQ(b.dense[at * 13 + 1], 0.f);  // -1 clipped at 0
      EXPECT_FLOAT_EQ(b.dense[at * 13 + 3], std::log1p(35.f));
    }
  }
}

// ---- the same output for any thread count and chunk size -----------------------------------

TEST(ConvertDeterminism, ShardsDoNotDependOnThreadsOrChunkSize) {
  const std::string input = kShared + "/criteo_sample/deepctr_criteo_sample.txt";
  SKIP_WITHOUT(input);
  ScratchDir dir("convert_threads");
  ConvertSchema schema = load_convert_schema(kSource + "/configs/data/criteo.yaml");
  schema.dense[0].standardize = true;  // exercise the statistics pass too
  schema.shard_rows = 11;              // several shards per part
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  run(schema, {input}, dir.path / "one", BadRowPolicy::fail, 1 << 20);
  omp_set_num_threads(std::max(2, before));
  run(schema, {input}, dir.path / "many", BadRowPolicy::fail, 1000);  // many small chunks
  omp_set_num_threads(before);
  for (const char* part : {"train", "test"}) {
    const auto a = list_day_shards((dir.path / "one" / part).string());
    const auto b = list_day_shards((dir.path / "many" / part).string());
    ASSERT_EQ(a.size(), b.size());
    EXPECT_GT(a.size(), 1u);
    for (size_t i = 0; i < a.size(); ++i) {
      int64_t rows = 0;
      read_shard_schema(a[i], &rows);
      Block x, y;
      read_shard_rows(a[i], 0, rows, x);
      read_shard_rows(b[i], 0, rows, y);
      EXPECT_EQ(x.rows, y.rows);
      EXPECT_EQ(x.labels, y.labels);
      EXPECT_EQ(x.dense, y.dense);
      for (size_t s = 0; s < x.sparse.size(); ++s) {
        EXPECT_EQ(x.sparse[s].ids, y.sparse[s].ids);
        EXPECT_EQ(x.sparse[s].offsets, y.sparse[s].offsets);
      }
    }
  }
}

// ---- bad rows ------------------------------------------------------------------------------

const char* kSmallSchema = R"(
input: {header: true, trim: true}
labels:
  - {name: click, column: click, equals: "1", negatives: ["0"]}
  - {name: rating, column: stars, float: true}
  - {name: long_view, column: dwell, threshold: 30}
weight: {column: w, fill: 1}
dense:
  - {column: age, standardize: true}
  - {column: count, fill: 0, clip_min: 0, log1p: true}
sparse:
  - {column: city}
  - {name: tags, column: tags, separator: "|"}
meta:
  - {name: user, column: uid, type: hash}
  - {column: day, type: date}
)";

const char* kSmallCsv =
    "click,stars,dwell,w,age,count,city,tags,uid,day\n"
    "1,4.5,31,2,30,9,Paris,a|b|c,u1,2024-01-02\n"
    "0,1,5,,40,,?,,u2,2024-01-03\n"
    "\n"
    "1,\"3\",60,1,\"50\",3,\"New York, NY\",\"x|\"\"y\"\"\",u3,1970-01-01\n";

TEST(ConvertRows, EveryRuleOfTheSchemaOnAHandMadeFile) {
  ScratchDir dir("convert_rules");
  const ConvertSchema schema = parse_convert_schema(kSmallSchema, "small.yaml");
  const ConvertSummary s = run(schema, {write_file(dir.path / "in.csv", kSmallCsv)}, dir.path / "out");
  EXPECT_EQ(s.rows_read, 3);
  EXPECT_EQ(s.blank_lines, 1);
  const Block b = read_folder(dir.path / "out");
  ASSERT_EQ(b.rows, 3);
  EXPECT_EQ(b.labels[0], (std::vector<float>{1, 0, 1}));
  EXPECT_EQ(b.labels[1], (std::vector<float>{4.5f, 1, 3}));  // graded: stored as float32
  EXPECT_EQ(b.labels[2], (std::vector<float>{1, 0, 1}));     // dwell > 30
  EXPECT_EQ(b.weight, (std::vector<float>{2, 1, 1}));        // empty weight -> fill
  // age standardised over all rows (no split): mean 40, population std sqrt(200/3)
  EXPECT_NEAR(b.dense[0], (30 - 40) / std::sqrt(200.0 / 3), 1e-6);
  EXPECT_NEAR(b.dense[2], 0, 1e-6);
  EXPECT_FLOAT_EQ(b.dense[1], std::log1p(9.f));
  EXPECT_EQ(b.dense[3], 0.f);  // missing count -> fill 0 -> log1p(0)
  // city: "?" is missing -> the reserved id; a quoted value keeps its comma
  EXPECT_EQ(b.sparse[0].ids, (std::vector<int64_t>{id_of("city", "Paris"), id_of("city", ""),
                                                   id_of("city", "New York, NY")}));
  // tags: multi-valued; empty field -> no ids; "" escapes a quote; empty pieces are dropped
  EXPECT_EQ(b.sparse[1].offsets, (std::vector<int64_t>{0, 3, 3, 5}));
  EXPECT_EQ(b.sparse[1].ids[3], id_of("tags", "x"));  // "x|""y""" is x|"y": x and "y"
  EXPECT_EQ(b.sparse[1].ids[4], id_of("tags", "\"y\""));
  EXPECT_EQ(b.meta[0][1], id_of("user", "u2"));
  EXPECT_EQ(b.meta[1], (std::vector<int64_t>{19724, 19725, 0}));  // days since 1970-01-01
}

const char* kBadCsv =
    "click,stars,dwell,w,age,count,city,tags,uid,day\n"
    "1,4.5,31,2,30,9,Paris,a,u1,2024-01-02\n"
    "1,4.5,31,2,abc,9,Paris,a,u1,2024-01-02\n"       // line 3: age not a number
    "1,4.5,31,2,30,9,Paris,a,u1\n"                    // line 4: 9 fields
    "yes,4.5,31,2,30,9,Paris,a,u1,2024-01-02\n"      // line 5: label neither 1 nor 0
    "1,4.5,31,2,30,9,\"Par\"is,a,u1,2024-01-02\n"    // line 6: text after a closing quote
    "0,1,5,1,20,1,Rome,b,u2,2024-13-01\n"             // line 7: not a date
    "0,1,5,1,20,1,Rome,b,u2,2024-01-03\n";

TEST(ConvertRows, PolicyFailNamesFileLineColumnAndValue) {
  ScratchDir dir("convert_fail");
  const ConvertSchema schema = parse_convert_schema(kSmallSchema, "small.yaml");
  const std::string in = write_file(dir.path / "bad.csv", kBadCsv);
  const std::string msg = error_of([&] { run(schema, {in}, dir.path / "out"); });
  EXPECT_NE(msg.find(in + " line 3, column 'age': not a number: 'abc'"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir.path / "out")) << "a failed conversion leaves nothing behind";
}

TEST(ConvertRows, PolicySkipCountsEachReasonAndKeepsTheRowsVerbatim) {
  ScratchDir dir("convert_skip");
  const ConvertSchema schema = parse_convert_schema(kSmallSchema, "small.yaml");
  const std::string in = write_file(dir.path / "bad.csv", kBadCsv);
  const ConvertSummary s = run(schema, {in}, dir.path / "out", BadRowPolicy::skip);
  EXPECT_EQ(s.rows_read, 7);
  EXPECT_EQ(s.rows_written, 2);
  EXPECT_EQ(s.rows_rejected, 5);
  const std::map<std::string, int64_t> expected = {{"not a number", 1},
                                                   {"wrong number of fields", 1},
                                                   {"unexpected label value", 1},
                                                   {"malformed quotes", 1},
                                                   {"not a date (YYYY-MM-DD)", 1}};
  EXPECT_EQ(s.rejected_by_reason, expected);
  EXPECT_NE(s.first_rejected.at("wrong number of fields").find("line 4: wrong number of fields: expected 10 fields, found 9"),
            std::string::npos);
  std::ifstream f(s.rejects_path);
  std::stringstream text;
  text << f.rdbuf();
  const std::string lines[] = {"click,stars,dwell,w,age,count,city,tags,uid,day",  // the header first
                               "1,4.5,31,2,abc,9,Paris,a,u1,2024-01-02", "1,4.5,31,2,30,9,Paris,a,u1",
                               "yes,4.5,31,2,30,9,Paris,a,u1,2024-01-02",
                               "1,4.5,31,2,30,9,\"Par\"is,a,u1,2024-01-02", "0,1,5,1,20,1,Rome,b,u2,2024-13-01"};
  std::string want;
  for (const auto& l : lines) want += l + "\n";
  EXPECT_EQ(text.str(), want);
  EXPECT_TRUE(fs::exists(s.rejects_path + ".log"));
  const std::string summary = format_convert_summary(s);
  EXPECT_NE(summary.find("rejected: 5"), std::string::npos) << summary;
  EXPECT_NE(summary.find("not a number: 1"), std::string::npos) << summary;
  EXPECT_EQ(read_folder(dir.path / "out").rows, 2);
  // The rejects file is a valid input for the same schema once fixed: it starts with the header.
}

// ---- files that cannot be converted ----------------------------------------------------------

TEST(ConvertFiles, AMissingColumnNamesTheFileTheColumnAndWhoNeedsIt) {
  ScratchDir dir("convert_missing_column");
  const ConvertSchema schema = parse_convert_schema(kSmallSchema, "small.yaml");
  const std::string in = write_file(dir.path / "in.csv", "click,stars,dwell,w,count,city,tags,uid,day\n1,1,1,1,1,a,b,c,2024-01-01\n");
  const std::string msg = error_of([&] { run(schema, {in}, dir.path / "out"); });
  EXPECT_NE(msg.find("input file " + in + ": it has no column 'age' (needed by dense 'age' in small.yaml)"),
            std::string::npos)
      << msg;
}

TEST(ConvertFiles, AnEmptyFileIsAnErrorNamingIt) {
  ScratchDir dir("convert_empty");
  const ConvertSchema schema = parse_convert_schema(kSmallSchema, "small.yaml");
  const std::string in = write_file(dir.path / "empty.csv", "");
  EXPECT_EQ(error_of([&] { run(schema, {in}, dir.path / "out"); }), "input file " + in + " is empty");
  const std::string header_only = write_file(dir.path / "header.csv", "click,stars,dwell,w,age,count,city,tags,uid,day\n");
  EXPECT_EQ(error_of([&] { run(schema, {header_only}, dir.path / "out2"); }), "the input holds no data rows");
  EXPECT_NE(error_of([&] { run(schema, {(dir.path / "nope.csv").string()}, dir.path / "out3"); }).find("does not exist"),
            std::string::npos);
}

TEST(ConvertFiles, ATruncatedGzipIsAnErrorNotShortData) {
  ScratchDir dir("convert_truncated");
  const ConvertSchema schema = parse_convert_schema(kSmallSchema, "small.yaml");
  std::string text = "click,stars,dwell,w,age,count,city,tags,uid,day\n";
  Rng rng(3);
  for (int i = 0; i < 20000; ++i)  // random values: the stream does not compress to a few bytes
    text += "1,2,3,1," + std::to_string(rng.below(100)) + "," + std::to_string(rng.next()) + ",c" +
            std::to_string(rng.next() % 1000) + ",t,u,2024-01-01\n";
  const std::string whole = write_gzip(dir.path / "whole.csv.gz", text);
  EXPECT_EQ(run(schema, {whole}, dir.path / "ok").rows_written, 20000);
  const std::string cut = (dir.path / "cut.csv.gz").string();
  fs::copy_file(whole, cut);
  fs::resize_file(cut, fs::file_size(cut) / 2);
  const std::string msg = error_of([&] { run(schema, {cut}, dir.path / "out"); });
  EXPECT_NE(msg.find("input file " + cut + ": the gzip data is truncated or corrupt"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir.path / "out"));
}

TEST(ConvertFiles, AnOutputFolderThatIsNotEmptyIsRefused) {
  ScratchDir dir("convert_not_empty");
  const ConvertSchema schema = parse_convert_schema(kSmallSchema, "small.yaml");
  fs::create_directories(dir.path / "out");
  write_file(dir.path / "out" / "old.txt", "x");
  const std::string in = write_file(dir.path / "in.csv", kSmallCsv);
  EXPECT_NE(error_of([&] { run(schema, {in}, dir.path / "out"); }).find("is not empty"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir.path / "out" / "old.txt"));
}

// ---- CSV reading ------------------------------------------------------------------------------

TEST(CsvReader, SplitsQuotedFieldsAsRfc4180) {
  std::vector<std::string_view> f;
  std::string scratch;
  const CsvFormat csv{',', '"', false};
  ASSERT_TRUE(split_fields("a,\"b,c\",\"say \"\"hi\"\"\",,", csv, f, scratch));
  EXPECT_EQ(std::vector<std::string>(f.begin(), f.end()), (std::vector<std::string>{"a", "b,c", "say \"hi\"", "", ""}));
  ASSERT_TRUE(split_fields("5\" screen,x", csv, f, scratch));  // a quote inside a plain field is text
  EXPECT_EQ(f[0], "5\" screen");
  EXPECT_FALSE(split_fields("\"open,x", csv, f, scratch));
  EXPECT_FALSE(split_fields("\"a\"b,x", csv, f, scratch));
  ASSERT_TRUE(split_fields(" 1 ,  \"a b\" , c", CsvFormat{',', '"', true}, f, scratch));
  EXPECT_EQ(std::vector<std::string>(f.begin(), f.end()), (std::vector<std::string>{"1", "a b", "c"}));
  ASSERT_TRUE(split_fields("a\tb c\t", CsvFormat{'\t', 0, false}, f, scratch));
  EXPECT_EQ(std::vector<std::string>(f.begin(), f.end()), (std::vector<std::string>{"a", "b c", ""}));
}

TEST(CsvReader, RecordsKeepQuotedNewlinesAndTheirLineNumbersAcrossChunks) {
  ScratchDir dir("csv_reader");
  std::string text = "h1,h2\r\n";
  for (int i = 0; i < 50; ++i) text += "a" + std::to_string(i) + ",\"two\nlines\"\r\n";
  text += "\nlast,no newline";
  for (size_t chunk : {size_t(7), size_t(1) << 20}) {
    RecordReaderOptions o;
    o.files = {write_file(dir.path / "in.csv", text)};
    o.header = true;
    o.chunk_bytes = chunk;
    RecordReader reader(o);
    RecordChunk c;
    std::vector<std::string> records;
    std::vector<int64_t> lines;
    int64_t blank = 0;
    std::string header;
    while (reader.next(c)) {
      if (c.first_of_file) header = c.header;
      blank += c.blank_lines;
      for (size_t i = 0; i < c.records.size(); ++i) records.emplace_back(c.record(i)), lines.push_back(c.records[i].line);
    }
    EXPECT_EQ(header, "h1,h2");
    ASSERT_EQ(records.size(), 51u);
    EXPECT_EQ(records[0], "a0,\"two\nlines\"");
    EXPECT_EQ(lines[0], 2);
    EXPECT_EQ(lines[49], 2 + 49 * 2);
    EXPECT_EQ(records[50], "last,no newline");
    EXPECT_EQ(lines[50], 2 + 50 * 2 + 1);
    EXPECT_EQ(blank, 1);
  }
}

}  // namespace
}  // namespace ncsrec
