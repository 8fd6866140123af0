// HDF5 shard files (layout in docs/data-format.md), through the HDF5 C API only: the C API is
// the part of our HDF5 build that is thread-safe, and the reader calls in here from its own
// thread. Every call's status is checked and turned into a UserError naming the file, and
// HDF5's own error-stack printing is switched off so a bad file gives one clear message.
#include "core/data/hdf5_shard.h"

#include "core/hdf5_util.h"

#include <hdf5.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "core/error.h"

namespace ncsrec {
namespace {

namespace fs = std::filesystem;

// Root attributes that record the column order: HDF5 lists group members by name (or by
// creation order only if tracked), neither of which is the schema's order.
constexpr const char* kOrderAttributes[] = {"tasks", "slots", "meta", "truth"};

// The innermost HDF5 error description of the calling thread, for appending to messages.
std::string hdf5_reason() {
  std::string reason;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* err, void* data) -> herr_t {
        if (n == 0 && err->desc && *err->desc) *static_cast<std::string*>(data) = err->desc;
        return 0;
      },
      &reason);
  H5Eclear2(H5E_DEFAULT);
  return reason.empty() ? std::string() : " (HDF5: " + reason + ")";
}

// The error-stack switch is per thread in a thread-safe HDF5, so every entry point sets it.
void silence_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw UserError("data file " + path + ": " + what + hdf5_reason());
}

using h5::Handle;

Handle checked(hid_t id, Handle::Closer closer, const std::string& path, const std::string& what) {
  if (id < 0) fail(path, what);
  return Handle(id, closer);
}

void check(herr_t status, const std::string& path, const std::string& what) {
  if (status < 0) fail(path, what);
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i ? "," : "") + names[i];
  return out;
}

std::vector<std::string> split(const std::string& joined) {
  std::vector<std::string> out;
  if (joined.empty()) return out;
  size_t start = 0;
  for (;;) {
    const size_t comma = joined.find(',', start);
    out.push_back(joined.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

// ---- writing ---------------------------------------------------------------------------

void write_int_attribute(hid_t obj, const char* name, int value, const std::string& path) {
  Handle space = checked(H5Screate(H5S_SCALAR), H5Sclose, path, "cannot create a dataspace");
  Handle attr = checked(H5Acreate2(obj, name, H5T_STD_I32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                        path, std::string("cannot create attribute ") + name);
  check(H5Awrite(attr.get(), H5T_NATIVE_INT, &value), path, std::string("cannot write attribute ") + name);
}

// Fixed-length strings: they live inside the checksummed object header, where variable-length
// strings would live in the global heap, which has no checksum (HDF5 crashes on a damaged one).
void write_string_attribute(hid_t obj, const char* name, const std::string& value, const std::string& path) {
  Handle type = checked(H5Tcopy(H5T_C_S1), H5Tclose, path, "cannot copy the string type");
  check(H5Tset_size(type.get(), value.size() + 1), path, "cannot size the string type");
  check(H5Tset_strpad(type.get(), H5T_STR_NULLTERM), path, "cannot set the string padding");
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), path, "cannot set the string character set");
  Handle space = checked(H5Screate(H5S_SCALAR), H5Sclose, path, "cannot create a dataspace");
  Handle attr = checked(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, path,
                        std::string("cannot create attribute ") + name);
  check(H5Awrite(attr.get(), type.get(), value.c_str()), path, std::string("cannot write attribute ") + name);
}

void create_group(hid_t file, const std::string& name, const std::string& path) {
  checked(H5Gcreate2(file, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose, path,
          "cannot create group " + name);
}

void write_dataset(hid_t file, const std::string& name, hid_t file_type, hid_t mem_type, const void* data,
                   const std::vector<hsize_t>& dims, const std::string& path) {
  Handle space = checked(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose, path,
                         "cannot create the dataspace of " + name);
  Handle dset = checked(H5Dcreate2(file, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                        H5Dclose, path, "cannot create dataset " + name);
  hsize_t count = 1;
  for (hsize_t d : dims) count *= d;
  if (count > 0)
    check(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), path, "cannot write dataset " + name);
}

void write_floats(hid_t file, const std::string& name, const std::vector<float>& values, const std::string& path) {
  write_dataset(file, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, values.data(), {values.size()}, path);
}

void write_int64s(hid_t file, const std::string& name, const std::vector<int64_t>& values, const std::string& path) {
  write_dataset(file, name, H5T_STD_I64LE, H5T_NATIVE_INT64, values.data(), {values.size()}, path);
}

void write_labels(hid_t file, const std::string& name, const std::vector<float>& values, const std::string& path) {
  const bool binary = std::all_of(values.begin(), values.end(), [](float v) { return v == 0.0f || v == 1.0f; });
  if (!binary) return write_floats(file, name, values, path);
  std::vector<uint8_t> bytes(values.begin(), values.end());
  write_dataset(file, name, H5T_STD_U8LE, H5T_NATIVE_UINT8, bytes.data(), {bytes.size()}, path);
}

void check_column_names(const std::vector<std::string>& names, const char* kind, const std::string& path) {
  for (const auto& name : names)
    NCSREC_USER_CHECK(!name.empty() && name.find_first_of(",/") == std::string::npos && name != "." && name != "..",
                      "data file " << path << ": " << kind << " name '" << name
                                   << "' is not allowed (empty, '.', or containing ',' or '/')");
}

void write_file(const std::string& path, const std::string& target, const Block& block) {
  const DataSchema& s = block.schema;
  // The 1.8 file format checksums its metadata, so a damaged file is caught by a checksum
  // instead of being parsed (HDF5 can crash on corrupt unchecksummed metadata); h5py and any
  // HDF5 >= 1.8 read it.
  Handle fapl = checked(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, target, "cannot create a file access list");
  check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST), target, "cannot set the format version");
  Handle file = checked(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose, target,
                        "cannot create " + path);
  const hid_t f = file.get();
  write_int_attribute(f, "ncsrec_schema_version", kDataSchemaVersion, target);
  const std::vector<std::string>* order[] = {&s.tasks, &s.slots, &s.meta, &s.truth};
  for (int i = 0; i < 4; ++i) write_string_attribute(f, kOrderAttributes[i], join(*order[i]), target);

  const auto rows = static_cast<hsize_t>(block.rows);
  create_group(f, "labels", target);
  for (size_t t = 0; t < s.tasks.size(); ++t) write_labels(f, "labels/" + s.tasks[t], block.labels[t], target);
  if (s.has_weight) write_floats(f, "weight", block.weight, target);
  if (s.dense_dim > 0)
    write_dataset(f, "dense", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, block.dense.data(),
                  {rows, static_cast<hsize_t>(s.dense_dim)}, target);
  if (!s.slots.empty()) create_group(f, "sparse", target);
  for (size_t i = 0; i < s.slots.size(); ++i) {
    const std::string group = "sparse/" + s.slots[i];
    create_group(f, group, target);
    write_int64s(f, group + "/offsets", block.sparse[i].offsets, target);
    write_int64s(f, group + "/ids", block.sparse[i].ids, target);
  }
  if (!s.meta.empty()) create_group(f, "meta", target);
  for (size_t m = 0; m < s.meta.size(); ++m) write_int64s(f, "meta/" + s.meta[m], block.meta[m], target);
  if (!s.truth.empty()) create_group(f, "truth", target);
  for (size_t t = 0; t < s.truth.size(); ++t) write_floats(f, "truth/" + s.truth[t], block.truth[t], target);
  if (!file.close()) fail(target, "cannot close (flush) " + path);
}

// ---- reading ---------------------------------------------------------------------------

Handle open_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw UserError("data file " + path + ": does not exist");
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw UserError("data file " + path + ": not an HDF5 file (or its header is damaged)");
  }
  return checked(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, path,
                 "cannot open (truncated or corrupt HDF5 file?)");
}

bool link_exists(hid_t file, const std::string& name, const std::string& path) {
  // H5Lexists needs every intermediate group to exist, so walk the path one level at a time.
  size_t slash = 0;
  for (;;) {
    slash = name.find('/', slash + 1);
    const std::string prefix = name.substr(0, slash);
    const htri_t exists = H5Lexists(file, prefix.c_str(), H5P_DEFAULT);
    if (exists < 0) fail(path, "cannot look up " + prefix);
    if (exists == 0) return false;
    if (slash == std::string::npos) return true;
  }
}

std::string read_string_attribute(hid_t obj, const char* name, const std::string& path) {
  Handle attr = checked(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose, path, std::string("cannot open attribute ") + name);
  Handle type = checked(H5Aget_type(attr.get()), H5Tclose, path, std::string("cannot read the type of attribute ") + name);
  if (H5Tget_class(type.get()) != H5T_STRING) fail(path, std::string("attribute ") + name + " is not a string");
  const htri_t variable = H5Tis_variable_str(type.get());
  if (variable < 0) fail(path, std::string("cannot read the type of attribute ") + name);
  Handle mem = checked(H5Tcopy(H5T_C_S1), H5Tclose, path, "cannot copy the string type");
  // HDF5 has no ASCII <-> UTF-8 conversion: read in whichever character set was written.
  const H5T_cset_t cset = H5Tget_cset(type.get());
  if (cset < 0) fail(path, std::string("cannot read the character set of attribute ") + name);
  check(H5Tset_cset(mem.get(), cset), path, "cannot set the string character set");
  if (variable) {
    check(H5Tset_size(mem.get(), H5T_VARIABLE), path, "cannot make a variable-length string type");
    char* text = nullptr;
    check(H5Aread(attr.get(), mem.get(), &text), path, std::string("cannot read attribute ") + name);
    std::string value = text ? text : "";
    H5free_memory(text);
    return value;
  }
  const size_t size = H5Tget_size(type.get());
  if (size == 0) fail(path, std::string("cannot read the size of attribute ") + name);
  check(H5Tset_size(mem.get(), size), path, "cannot size the string type");
  std::string buffer(size, '\0');
  check(H5Aread(attr.get(), mem.get(), buffer.data()), path, std::string("cannot read attribute ") + name);
  return buffer.substr(0, buffer.find('\0'));
}

// Member names of a group in name order: the fallback order for files written without the
// order attributes (for example by a hand-written h5py script).
std::vector<std::string> group_members(hid_t file, const std::string& group, const std::string& path) {
  std::vector<std::string> names;
  if (!link_exists(file, group, path)) return names;
  Handle g = checked(H5Gopen2(file, group.c_str(), H5P_DEFAULT), H5Gclose, path, "cannot open group " + group);
  check(H5Literate(
            g.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr,
            [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
              static_cast<std::vector<std::string>*>(data)->push_back(name);
              return 0;
            },
            &names),
        path, "cannot list group " + group);
  return names;
}

struct OpenDataset {
  Handle dset, space;
  std::vector<hsize_t> dims;
};

OpenDataset open_dataset(hid_t file, const std::string& name, const std::string& path) {
  if (!link_exists(file, name, path)) fail(path, "dataset " + name + " is missing");
  OpenDataset d;
  d.dset = checked(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose, path, "cannot open dataset " + name);
  d.space = checked(H5Dget_space(d.dset.get()), H5Sclose, path, "cannot read the shape of dataset " + name);
  const int rank = H5Sget_simple_extent_ndims(d.space.get());
  if (rank < 0) fail(path, "cannot read the shape of dataset " + name);
  d.dims.resize(rank);
  if (rank > 0 && H5Sget_simple_extent_dims(d.space.get(), d.dims.data(), nullptr) < 0)
    fail(path, "cannot read the shape of dataset " + name);
  return d;
}

// Reads elements [begin, begin + count) of the leading dimension of `name` (all of the
// trailing dimension for 2-D datasets), converting to `mem_type`.
void read_rows(hid_t file, const std::string& name, hid_t mem_type, int64_t begin, int64_t count, void* out,
               const std::string& path) {
  if (count == 0) return;
  OpenDataset d = open_dataset(file, name, path);
  std::vector<hsize_t> start(d.dims.size(), 0), extent = d.dims;
  if (d.dims.empty() || static_cast<int64_t>(d.dims[0]) < begin + count)
    fail(path, "dataset " + name + " is shorter than the rows requested");
  start[0] = static_cast<hsize_t>(begin);
  extent[0] = static_cast<hsize_t>(count);
  check(H5Sselect_hyperslab(d.space.get(), H5S_SELECT_SET, start.data(), nullptr, extent.data(), nullptr), path,
        "cannot select rows of dataset " + name);
  Handle mem = checked(H5Screate_simple(static_cast<int>(extent.size()), extent.data(), nullptr), H5Sclose, path,
                       "cannot create a memory dataspace");
  check(H5Dread(d.dset.get(), mem_type, mem.get(), d.space.get(), H5P_DEFAULT, out), path,
        "cannot read dataset " + name + " (truncated or corrupt file?)");
}

struct ShardHeader {
  DataSchema schema;
  int64_t rows = 0;
};

// Reads the schema and checks every dataset's shape against it, so row reads need no checks.
ShardHeader read_header(hid_t file, const std::string& path) {
  const htri_t has_version = H5Aexists(file, "ncsrec_schema_version");
  if (has_version < 0) fail(path, "cannot read the root attributes");
  if (has_version == 0) fail(path, "no ncsrec_schema_version attribute: not an ncsrec data file");
  {
    Handle attr = checked(H5Aopen(file, "ncsrec_schema_version", H5P_DEFAULT), H5Aclose, path,
                          "cannot open attribute ncsrec_schema_version");
    int version = 0;
    check(H5Aread(attr.get(), H5T_NATIVE_INT, &version), path, "cannot read attribute ncsrec_schema_version");
    NCSREC_USER_CHECK(version == kDataSchemaVersion, "data file " << path << ": schema version " << version
                                                                  << ", this build reads version " << kDataSchemaVersion);
  }
  ShardHeader h;
  std::vector<std::string>* order[] = {&h.schema.tasks, &h.schema.slots, &h.schema.meta, &h.schema.truth};
  const char* groups[] = {"labels", "sparse", "meta", "truth"};
  for (int i = 0; i < 4; ++i) {
    const htri_t present = H5Aexists(file, kOrderAttributes[i]);
    if (present < 0) fail(path, std::string("cannot look up attribute ") + kOrderAttributes[i]);
    *order[i] = present ? split(read_string_attribute(file, kOrderAttributes[i], path))
                        : group_members(file, groups[i], path);
  }
  h.schema.has_weight = link_exists(file, "weight", path);

  // The row count comes from the first column present; every other column must agree.
  bool rows_known = false;
  auto expect_rows = [&](const std::string& name, int64_t found) {
    if (!rows_known) {
      h.rows = found;
      rows_known = true;
    } else if (found != h.rows) {
      throw UserError("data file " + path + ": dataset " + name + " has " + std::to_string(found) +
                      " rows but the shard has " + std::to_string(h.rows));
    }
  };
  auto vector_rows = [&](const std::string& name, int64_t extra) {
    OpenDataset d = open_dataset(file, name, path);
    if (d.dims.size() != 1) fail(path, "dataset " + name + " is not one-dimensional");
    expect_rows(name, static_cast<int64_t>(d.dims[0]) - extra);
    return static_cast<int64_t>(d.dims[0]);
  };
  for (const auto& t : h.schema.tasks) vector_rows("labels/" + t, 0);
  if (h.schema.has_weight) vector_rows("weight", 0);
  if (link_exists(file, "dense", path)) {
    OpenDataset d = open_dataset(file, "dense", path);
    if (d.dims.size() != 2) fail(path, "dataset dense is not two-dimensional");
    h.schema.dense_dim = static_cast<int64_t>(d.dims[1]);
    expect_rows("dense", static_cast<int64_t>(d.dims[0]));
  }
  for (const auto& slot : h.schema.slots) {
    const std::string group = "sparse/" + slot;
    if (vector_rows(group + "/offsets", 1) < 1) fail(path, "dataset " + group + "/offsets is empty (needs rows + 1)");
    OpenDataset ids = open_dataset(file, group + "/ids", path);
    if (ids.dims.size() != 1) fail(path, "dataset " + group + "/ids is not one-dimensional");
  }
  for (const auto& m : h.schema.meta) vector_rows("meta/" + m, 0);
  for (const auto& t : h.schema.truth) vector_rows("truth/" + t, 0);
  return h;
}

}  // namespace

void write_shard(const std::string& path, const Block& block) {
  silence_hdf5();
  block.validate("data file " + path);
  const DataSchema& s = block.schema;
  check_column_names(s.tasks, "task", path);
  check_column_names(s.slots, "slot", path);
  check_column_names(s.meta, "meta", path);
  check_column_names(s.truth, "truth", path);
  const std::string tmp = path + ".tmp";
  try {
    write_file(tmp, path, block);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw UserError("data file " + path + ": cannot rename " + tmp + " into place: " + ec.message());
  }
}

DataSchema read_shard_schema(const std::string& path, int64_t* rows) {
  silence_hdf5();
  Handle file = open_file(path);
  ShardHeader h = read_header(file.get(), path);
  if (rows) *rows = h.rows;
  return h.schema;
}

void read_shard_rows(const std::string& path, int64_t begin, int64_t end, Block& out) {
  silence_hdf5();
  Handle file = open_file(path);
  const hid_t f = file.get();
  const ShardHeader h = read_header(f, path);
  NCSREC_USER_CHECK(0 <= begin && begin <= end && end <= h.rows,
                    "data file " << path << ": rows [" << begin << ", " << end << ") requested from a shard of "
                                 << h.rows << " rows");
  const DataSchema& s = h.schema;
  const int64_t n = end - begin;
  out = Block::with_schema(s);
  out.rows = n;
  for (size_t t = 0; t < s.tasks.size(); ++t) {
    out.labels[t].resize(n);
    read_rows(f, "labels/" + s.tasks[t], H5T_NATIVE_FLOAT, begin, n, out.labels[t].data(), path);
  }
  if (s.has_weight) {
    out.weight.resize(n);
    read_rows(f, "weight", H5T_NATIVE_FLOAT, begin, n, out.weight.data(), path);
  }
  if (s.dense_dim > 0) {
    out.dense.resize(n * s.dense_dim);
    read_rows(f, "dense", H5T_NATIVE_FLOAT, begin, n, out.dense.data(), path);
  }
  for (size_t i = 0; i < s.slots.size(); ++i) {
    const std::string group = "sparse/" + s.slots[i];
    SparseColumn& col = out.sparse[i];
    col.offsets.resize(n + 1);
    read_rows(f, group + "/offsets", H5T_NATIVE_INT64, begin, n + 1, col.offsets.data(), path);
    const int64_t first = col.offsets[0], last = col.offsets[n];
    // Check before allocating: garbage offsets must not become a huge allocation.
    for (int64_t r = 0; r < n; ++r)
      NCSREC_USER_CHECK(col.offsets[r] <= col.offsets[r + 1],
                        "data file " << path << ": " << group << "/offsets decreases at row " << begin + r);
    OpenDataset ids = open_dataset(f, group + "/ids", path);
    NCSREC_USER_CHECK(first >= 0 && last <= static_cast<int64_t>(ids.dims[0]),
                      "data file " << path << ": " << group << "/offsets point at ids [" << first << ", " << last
                                   << ") but there are " << ids.dims[0] << " ids");
    col.ids.resize(last - first);
    read_rows(f, group + "/ids", H5T_NATIVE_INT64, first, last - first, col.ids.data(), path);
    for (auto& o : col.offsets) o -= first;
  }
  for (size_t m = 0; m < s.meta.size(); ++m) {
    out.meta[m].resize(n);
    read_rows(f, "meta/" + s.meta[m], H5T_NATIVE_INT64, begin, n, out.meta[m].data(), path);
  }
  for (size_t t = 0; t < s.truth.size(); ++t) {
    out.truth[t].resize(n);
    read_rows(f, "truth/" + s.truth[t], H5T_NATIVE_FLOAT, begin, n, out.truth[t].data(), path);
  }
  if (!file.close()) fail(path, "cannot close");
}

std::vector<std::string> list_day_shards(const std::string& day_dir) {
  std::error_code ec;
  NCSREC_USER_CHECK(fs::is_directory(day_dir, ec), "day folder " << day_dir << " does not exist");
  NCSREC_USER_CHECK(fs::exists(fs::path(day_dir) / "_DONE", ec),
                    "day folder " << day_dir
                                  << " is incomplete (no _DONE marker): its shards may still be being written; "
                                     "wait for the producer to finish or remove the folder");
  std::vector<std::string> shards;
  for (const auto& entry : fs::directory_iterator(day_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && name.size() > 8 && name.compare(0, 5, "part-") == 0 &&
        name.compare(name.size() - 3, 3, ".h5") == 0)
      shards.push_back(entry.path().string());
  }
  NCSREC_USER_CHECK(!ec, "day folder " << day_dir << ": cannot list: " << ec.message());
  NCSREC_USER_CHECK(!shards.empty(), "day folder " << day_dir << " has a _DONE marker but no part-*.h5 shards");
  std::sort(shards.begin(), shards.end());
  return shards;
}

}  // namespace ncsrec
