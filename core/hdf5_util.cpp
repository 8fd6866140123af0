#include "core/hdf5_util.h"

#include <algorithm>

#include "core/error.h"

namespace ncsrec::h5 {

void silence_errors() {
  // No exit-time cleanup by the library: every file is closed by its owner (Handle), and
  // HDF5 1.10's cleanup crashes (H5F__close_cb) on a file whose write failed (disk full, a file
  // size limit), turning a clean "error: ..." and exit 1 into a segfault. Effective only before
  // the library's first call; later calls fail harmlessly.
  H5dont_atexit();
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

namespace {
[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw UserError("HDF5 file " + path + ": " + what);
}
}  // namespace

File File::create(const std::string& path) {
  silence_errors();
  File f;
  f.path_ = path;
  const hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (id < 0) fail(path, "cannot create the file (check the folder exists and is writable)");
  f.handle_ = Handle(id, H5Fclose);
  return f;
}

File File::open_read(const std::string& path) {
  silence_errors();
  File f;
  f.path_ = path;
  const htri_t is = H5Fis_hdf5(path.c_str());
  if (is <= 0) fail(path, is == 0 ? "not an HDF5 file (truncated or corrupt?)" : "cannot open the file");
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) fail(path, "cannot open the file (truncated or corrupt?)");
  f.handle_ = Handle(id, H5Fclose);
  return f;
}

void File::close() {
  if (!handle_) return;
  if (H5Fflush(handle_.get(), H5F_SCOPE_LOCAL) < 0) fail(path_, "flush failed");
  const hid_t id = handle_.release();  // close explicitly to check the status
  if (H5Fclose(id) < 0) fail(path_, "close failed");
}

bool File::exists(const std::string& object) const {
  if (object == "/" || object.empty()) return true;
  // Check each prefix: H5Lexists fails on a missing intermediate group.
  size_t pos = 0;
  while (true) {
    pos = object.find('/', pos + 1);
    const std::string prefix = object.substr(0, pos);
    if (!prefix.empty() && prefix != "/" && H5Lexists(handle_.get(), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (pos == std::string::npos) return true;
  }
}

void File::create_group(const std::string& name) {
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  if (!lcpl || H5Pset_create_intermediate_group(lcpl.get(), 1) < 0) fail(path_, "property list for " + name);
  Handle g(H5Gcreate2(handle_.get(), name.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  if (!g) fail(path_, "cannot create group " + name);
}

void File::write_raw(const std::string& name, hid_t mem_type, hid_t file_type, const void* data,
                     const std::vector<uint64_t>& dims) {
  std::vector<hsize_t> d(dims.begin(), dims.end());
  Handle space(H5Screate_simple(static_cast<int>(d.size()), d.data(), nullptr), H5Sclose);
  if (!space) fail(path_, "cannot make a dataspace for " + name);
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  if (!lcpl || H5Pset_create_intermediate_group(lcpl.get(), 1) < 0) fail(path_, "property list for " + name);
  Handle ds(H5Dcreate2(handle_.get(), name.c_str(), file_type, space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
            H5Dclose);
  if (!ds) fail(path_, "cannot create dataset " + name);
  size_t n = 1;
  for (auto x : dims) n *= x;
  if (n > 0 && H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    fail(path_, "cannot write dataset " + name);
}

void File::write(const std::string& name, const float* data, const std::vector<uint64_t>& dims) {
  write_raw(name, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, data, dims);
}
void File::write(const std::string& name, const double* data, const std::vector<uint64_t>& dims) {
  write_raw(name, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, data, dims);
}
void File::write(const std::string& name, const int64_t* data, const std::vector<uint64_t>& dims) {
  write_raw(name, H5T_NATIVE_INT64, H5T_STD_I64LE, data, dims);
}
void File::write(const std::string& name, const uint8_t* data, const std::vector<uint64_t>& dims) {
  write_raw(name, H5T_NATIVE_UINT8, H5T_STD_U8LE, data, dims);
}

std::vector<uint64_t> File::dims(const std::string& name) const {
  if (!exists(name)) fail(path_, "has no dataset " + name);
  Handle ds(H5Dopen2(handle_.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds) fail(path_, "cannot open dataset " + name);
  Handle space(H5Dget_space(ds.get()), H5Sclose);
  const int nd = space ? H5Sget_simple_extent_ndims(space.get()) : -1;
  if (nd < 0) fail(path_, "cannot read the shape of " + name);
  std::vector<hsize_t> d(static_cast<size_t>(nd));
  if (H5Sget_simple_extent_dims(space.get(), d.data(), nullptr) < 0) fail(path_, "cannot read the shape of " + name);
  return std::vector<uint64_t>(d.begin(), d.end());
}

void File::read_raw(const std::string& name, hid_t mem_type, void* out, size_t elem_count) const {
  Handle ds(H5Dopen2(handle_.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!ds) fail(path_, "cannot open dataset " + name);
  if (elem_count > 0 && H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    fail(path_, "cannot read dataset " + name + " (truncated or corrupt?)");
}

namespace {
size_t count(const std::vector<uint64_t>& d) {
  size_t n = 1;
  for (auto x : d) n *= x;
  return n;
}
}  // namespace

std::vector<float> File::read_f32(const std::string& name) const {
  std::vector<float> v(count(dims(name)));
  read_raw(name, H5T_NATIVE_FLOAT, v.data(), v.size());
  return v;
}
std::vector<double> File::read_f64(const std::string& name) const {
  std::vector<double> v(count(dims(name)));
  read_raw(name, H5T_NATIVE_DOUBLE, v.data(), v.size());
  return v;
}
std::vector<int64_t> File::read_i64(const std::string& name) const {
  std::vector<int64_t> v(count(dims(name)));
  read_raw(name, H5T_NATIVE_INT64, v.data(), v.size());
  return v;
}
std::vector<uint8_t> File::read_u8(const std::string& name) const {
  std::vector<uint8_t> v(count(dims(name)));
  read_raw(name, H5T_NATIVE_UINT8, v.data(), v.size());
  return v;
}

void File::set_attr(const std::string& object, const std::string& name, const std::string& value) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  if (!type || H5Tset_size(type.get(), std::max<size_t>(value.size(), 1)) < 0) fail(path_, "string type for " + name);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate_by_name(handle_.get(), object.c_str(), name.c_str(), type.get(), space.get(), H5P_DEFAULT,
                                H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose);
  if (!attr) fail(path_, "cannot create attribute " + name + " on " + object);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  if (H5Awrite(attr.get(), type.get(), padded.data()) < 0) fail(path_, "cannot write attribute " + name);
}

void File::set_attr(const std::string& object, const std::string& name, int64_t value) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate_by_name(handle_.get(), object.c_str(), name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT,
                                H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose);
  if (!attr || H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) < 0)
    fail(path_, "cannot write attribute " + name + " on " + object);
}

void File::set_attr_f64(const std::string& object, const std::string& name, double value) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate_by_name(handle_.get(), object.c_str(), name.c_str(), H5T_IEEE_F64LE, space.get(), H5P_DEFAULT,
                                H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose);
  if (!attr || H5Awrite(attr.get(), H5T_NATIVE_DOUBLE, &value) < 0)
    fail(path_, "cannot write attribute " + name + " on " + object);
}

void File::set_attr_i64s(const std::string& object, const std::string& name, const std::vector<int64_t>& values) {
  const hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  if (!space) fail(path_, "cannot make a dataspace for attribute " + name);
  Handle attr(H5Acreate_by_name(handle_.get(), object.c_str(), name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT,
                                H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose);
  if (!attr || (n > 0 && H5Awrite(attr.get(), H5T_NATIVE_INT64, values.data()) < 0))
    fail(path_, "cannot write attribute " + name + " on " + object);
}

bool File::has_attr(const std::string& object, const std::string& name) const {
  return H5Aexists_by_name(handle_.get(), object.c_str(), name.c_str(), H5P_DEFAULT) > 0;
}

std::string File::attr_string(const std::string& object, const std::string& name) const {
  Handle attr(H5Aopen_by_name(handle_.get(), object.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr) fail(path_, "has no attribute " + name + " on " + object);
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  if (!type || H5Tget_class(type.get()) != H5T_STRING) fail(path_, "attribute " + name + " is not a string");
  if (H5Tis_variable_str(type.get()) > 0) {
    char* s = nullptr;
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem.get(), H5T_VARIABLE);
    if (H5Aread(attr.get(), mem.get(), &s) < 0) fail(path_, "cannot read attribute " + name);
    std::string out = s ? s : "";
    Handle space(H5Aget_space(attr.get()), H5Sclose);
    H5Dvlen_reclaim(mem.get(), space.get(), H5P_DEFAULT, &s);
    return out;
  }
  const size_t size = H5Tget_size(type.get());
  std::string out(size, '\0');
  if (H5Aread(attr.get(), type.get(), out.data()) < 0) fail(path_, "cannot read attribute " + name);
  out.resize(std::find(out.begin(), out.end(), '\0') - out.begin());
  return out;
}

int64_t File::attr_int(const std::string& object, const std::string& name) const {
  Handle attr(H5Aopen_by_name(handle_.get(), object.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  int64_t v = 0;
  if (!attr || H5Aread(attr.get(), H5T_NATIVE_INT64, &v) < 0) fail(path_, "cannot read attribute " + name + " on " + object);
  return v;
}

std::vector<std::string> File::list(const std::string& group) const {
  std::vector<std::string> names;
  if (!exists(group)) return names;
  Handle g(H5Gopen2(handle_.get(), group.c_str(), H5P_DEFAULT), H5Gclose);
  if (!g) fail(path_, "cannot open group " + group);
  H5G_info_t info;
  if (H5Gget_info(g.get(), &info) < 0) fail(path_, "cannot list group " + group);
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (len < 0) fail(path_, "cannot list group " + group);
    std::string name(static_cast<size_t>(len) + 1, '\0');
    H5Lget_name_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT);
    name.resize(static_cast<size_t>(len));
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace ncsrec::h5
