// Small checked wrappers over the HDF5 C API (our HDF5 build is thread-safe only for the C
// API). Every call's status is checked; a failure throws UserError naming the file and the
// object. Handles close themselves (RAII), so an error path leaves nothing open.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ncsrec::h5 {

// Turns off HDF5's own error-stack printing (we report errors ourselves). Idempotent.
void silence_errors();

// Owns one HDF5 identifier and closes it with the matching H5?close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = -1;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  explicit operator bool() const { return id_ >= 0; }
  // Closes now and reports whether the close succeeded (a file close flushes).
  bool close() {
    const bool ok = id_ < 0 || !close_ || close_(id_) >= 0;
    id_ = -1;
    return ok;
  }
  hid_t release() {
    const hid_t id = id_;
    id_ = -1;
    return id;
  }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }

 private:
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

class File {
 public:
  static File create(const std::string& path);  // truncates
  static File open_read(const std::string& path);
  const std::string& path() const { return path_; }
  hid_t id() const { return handle_.get(); }
  void close();  // flushes and closes, checked

  bool exists(const std::string& object) const;
  void create_group(const std::string& name);  // intermediate groups too
  // Datasets: `name` may contain '/', intermediate groups are created.
  void write(const std::string& name, const float* data, const std::vector<uint64_t>& dims);
  void write(const std::string& name, const double* data, const std::vector<uint64_t>& dims);
  void write(const std::string& name, const int64_t* data, const std::vector<uint64_t>& dims);
  void write(const std::string& name, const uint8_t* data, const std::vector<uint64_t>& dims);
  std::vector<uint64_t> dims(const std::string& name) const;
  // Reads a whole dataset converting to the requested type (HDF5 converts numerically).
  std::vector<float> read_f32(const std::string& name) const;
  std::vector<double> read_f64(const std::string& name) const;
  std::vector<int64_t> read_i64(const std::string& name) const;
  std::vector<uint8_t> read_u8(const std::string& name) const;
  // Attributes on an object ("/" for the root).
  void set_attr(const std::string& object, const std::string& name, const std::string& value);
  void set_attr(const std::string& object, const std::string& name, int64_t value);
  // A float64 scalar, and a 1-D int64 array (h5py reads a numpy int64 array, of length 0 for {}).
  void set_attr_f64(const std::string& object, const std::string& name, double value);
  void set_attr_i64s(const std::string& object, const std::string& name, const std::vector<int64_t>& values);
  std::string attr_string(const std::string& object, const std::string& name) const;
  int64_t attr_int(const std::string& object, const std::string& name) const;
  bool has_attr(const std::string& object, const std::string& name) const;
  // Names of the members of a group, sorted.
  std::vector<std::string> list(const std::string& group) const;

 private:
  void write_raw(const std::string& name, hid_t mem_type, hid_t file_type, const void* data,
                 const std::vector<uint64_t>& dims);
  void read_raw(const std::string& name, hid_t mem_type, void* out, size_t elem_count) const;
  std::string path_;
  Handle handle_;
};

}  // namespace ncsrec::h5
