// Tensor: a typed, shaped view of a buffer on one device.
//
// Storage is reference-counted and freed through the owning device's allocator in the
// dispatch table, so a tensor made on the GPU is freed by cudaFree without core knowing CUDA.
// Views (`view`, `slice_rows`) share storage; this is how parameters live as named views of
// one contiguous buffer. Tensors are always contiguous row-major: there are no strides.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace ncsrec {

enum class DType : uint8_t { F32, F64, I64, U8 };
enum class Device : uint8_t { CPU, CUDA };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }

using Shape = std::vector<int64_t>;
std::string shape_string(const Shape& shape);
int64_t shape_numel(const Shape& shape);

struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  void (*release)(void*) = nullptr;  // the allocator's own free, taken when allocated
  Storage(size_t bytes, Device device);
  // Host memory from `pinned_for`'s page-locked allocator (OpTable::host_alloc), or ordinary
  // host memory where it has none.
  Storage(size_t bytes, Device device, Device pinned_for);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

// How many tensor storages have been allocated on `device` in this process so far: a training
// step after the first allocates none (tests/unit/test_device_training.cpp checks it).
int64_t storage_allocations(Device device);

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(Shape shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(Shape shape, DType dtype, Device device = Device::CPU);
  // A host tensor for copies to and from `for_device`: page-locked where its backend offers it
  // (faster copies), ordinary host memory otherwise (and always for Device::CPU).
  static Tensor empty_pinned(Shape shape, DType dtype, Device for_device);
  // A u8 tensor [bytes.size()] holding `bytes` on `device` (masks for the kernels).
  static Tensor from_bytes(const std::vector<uint8_t>& bytes, Device device);
  // The same bytes into this tensor: into its own memory when it already is a u8 tensor of that
  // size on `device` (no allocation), else a new one as from_bytes.
  void assign_bytes(const std::vector<uint8_t>& bytes, Device device);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int64_t ndim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t dim(int64_t i) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* raw();
  const void* raw() const;
  // Typed HOST access: the tensor must be on the CPU (a device tensor's memory goes to kernels
  // through raw(), and to the host through to(Device::CPU)).
  template <class T> T* data() { check_host_access(dtype_of<T>()); return static_cast<T*>(raw()); }
  template <class T> const T* data() const { check_host_access(dtype_of<T>()); return static_cast<const T*>(raw()); }

  // A view of `shape` starting `offset` elements into this tensor's storage (shares storage).
  Tensor view(int64_t offset, Shape shape) const;
  // Rows [begin, end) of the leading dimension (shares storage).
  Tensor slice_rows(int64_t begin, int64_t end) const;
  Tensor reshape(Shape shape) const;

  // Deep copy, possibly to another device.
  Tensor to(Device device) const;
  Tensor clone() const { return to(device_); }
  void copy_from(const Tensor& src);  // same numel and dtype, any devices
  // The first `cols` columns of every row of src into this tensor's: both 2-D, the same rows,
  // columns and dtype, any devices (the other columns are left as they are).
  void copy_columns_from(const Tensor& src, int64_t cols);
  // Columns [begin, end) of every row, likewise.
  void copy_columns_from(const Tensor& src, int64_t begin, int64_t end);
  // Columns [src_col, src_col + cols) of src into columns [col, col + cols) of this tensor: both
  // 2-D with the same rows and dtype, widths free, any devices (one strided copy where the
  // backend has copy_2d).
  void copy_column_block(int64_t col, const Tensor& src, int64_t src_col, int64_t cols);
  void zero_();

  std::string describe() const;  // "f32[4, 8] on cpu"

 private:
  void check_host_access(DType want) const;
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

// A small tensor's values (a scalar parameter, a query vector) as doubles on the host, wherever
// the tensor is: one copy down from a device, nothing allocated in device memory.
std::vector<double> host_values(const Tensor& t);
// t = values, each rounded to t's dtype (one copy up to a device); as many values as elements.
void set_host_values(Tensor& t, const std::vector<double>& values);
// t += d elementwise in t's dtype (an f32 t adds float(d[i]), as a host `+=` of a float would).
void add_host_values(Tensor& t, const std::vector<double>& d);

}  // namespace ncsrec
