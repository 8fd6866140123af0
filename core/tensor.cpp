#include "core/tensor.h"

#include <atomic>
#include <sstream>

#include "core/dispatch.h"
#include "core/error.h"

namespace ncsrec {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
  }
  return "?";
}

const char* device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

std::string shape_string(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {
std::atomic<int64_t> allocation_count[2];  // by Device
}  // namespace

int64_t storage_allocations(Device device) { return allocation_count[device == Device::CPU ? 0 : 1].load(); }

Storage::Storage(size_t bytes_, Device device_) : bytes(bytes_), device(device_) {
  const OpTable& ops = ops_for(device);
  ptr = bytes ? ops.alloc(bytes) : nullptr;
  release = ops.free;
  if (ptr == nullptr && bytes != 0)
    throw UserError(NCSREC_STR_("out of memory: cannot allocate " << bytes << " bytes on " << device_name(device)));
  if (bytes) allocation_count[device == Device::CPU ? 0 : 1].fetch_add(1, std::memory_order_relaxed);
}

Storage::Storage(size_t bytes_, Device device_, Device pinned_for) : bytes(bytes_), device(device_) {
  NCSREC_CHECK(device == Device::CPU, "page-locked memory is host memory, not " << device_name(device));
  if (pinned_for != Device::CPU && bytes != 0) {
    const OpTable& ops = ops_for(pinned_for);
    if (ops.host_alloc && ops.host_free) {
      ptr = ops.host_alloc(bytes);
      release = ops.host_free;
    }
  }
  if (ptr == nullptr && bytes != 0) {  // no page-locked memory to be had: ordinary host memory
    const OpTable& ops = ops_for(Device::CPU);
    ptr = ops.alloc(bytes);
    release = ops.free;
  }
  if (ptr == nullptr && bytes != 0)
    throw UserError(NCSREC_STR_("out of memory: cannot allocate " << bytes << " bytes on the host"));
  if (bytes) allocation_count[0].fetch_add(1, std::memory_order_relaxed);
}

Storage::~Storage() {
  if (ptr) release(ptr);
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  for (int64_t d : shape) NCSREC_CHECK(d >= 0, "negative dimension in shape " << shape_string(shape));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::empty_pinned(Shape shape, DType dtype, Device for_device) {
  for (int64_t d : shape) NCSREC_CHECK(d >= 0, "negative dimension in shape " << shape_string(shape));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), Device::CPU,
                                         for_device);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = Device::CPU;
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.zero_();
  return t;
}

int64_t Tensor::dim(int64_t i) const {
  if (i < 0) i += ndim();
  NCSREC_CHECK(i >= 0 && i < ndim(), "dimension " << i << " out of range for " << describe());
  return shape_[static_cast<size_t>(i)];
}

void* Tensor::raw() {
  return storage_ ? static_cast<char*>(storage_->ptr) + offset_ * static_cast<int64_t>(dtype_size(dtype_)) : nullptr;
}
const void* Tensor::raw() const { return const_cast<Tensor*>(this)->raw(); }

void Tensor::check_host_access(DType want) const {
  NCSREC_CHECK(dtype_ == want, "tensor " << describe() << " accessed as " << dtype_name(want));
  NCSREC_CHECK(device_ == Device::CPU, "tensor " << describe() << " read or written from the host: copy it with to(Device::CPU)");
}

Tensor Tensor::view(int64_t offset, Shape shape) const {
  NCSREC_CHECK(defined(), "view of an undefined tensor");
  NCSREC_CHECK(offset >= 0 && offset + shape_numel(shape) <= numel(),
               "view at " << offset << " of shape " << shape_string(shape) << " exceeds " << describe());
  Tensor t = *this;
  t.offset_ = offset_ + offset;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  NCSREC_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
               "rows [" << begin << ", " << end << ") out of range for " << describe());
  Shape s = shape_;
  s[0] = end - begin;
  const int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  return view(begin * row, s);
}

Tensor Tensor::reshape(Shape shape) const {
  NCSREC_CHECK(shape_numel(shape) == numel(), "cannot reshape " << describe() << " to " << shape_string(shape));
  return view(0, std::move(shape));
}

Tensor Tensor::from_bytes(const std::vector<uint8_t>& bytes, Device device) {
  Tensor t = empty({static_cast<int64_t>(bytes.size())}, DType::U8, device);
  if (!bytes.empty())
    ops_for(device).copy(t.raw(), bytes.data(), bytes.size(),
                         device == Device::CPU ? CopyKind::HostToHost : CopyKind::HostToDevice);
  return t;
}

void Tensor::assign_bytes(const std::vector<uint8_t>& bytes, Device device) {
  if (!(defined() && dtype_ == DType::U8 && device_ == device && ndim() == 1 &&
        numel() == static_cast<int64_t>(bytes.size()))) {
    *this = from_bytes(bytes, device);
    return;
  }
  if (!bytes.empty())
    ops_for(device).copy(raw(), bytes.data(), bytes.size(),
                         device == Device::CPU ? CopyKind::HostToHost : CopyKind::HostToDevice);
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

namespace {

// How bytes go from memory on `src` to memory on `dst`, and whose table copies them.
struct CopyRoute {
  CopyKind kind;
  Device backend;
};
CopyRoute copy_route(Device dst, Device src) {
  if (dst != Device::CPU && src != Device::CPU) return {CopyKind::DeviceToDevice, dst};
  if (dst != Device::CPU) return {CopyKind::HostToDevice, dst};
  if (src != Device::CPU) return {CopyKind::DeviceToHost, src};
  return {CopyKind::HostToHost, Device::CPU};
}

}  // namespace

void Tensor::copy_from(const Tensor& src) {
  NCSREC_CHECK(src.numel() == numel() && src.dtype() == dtype_,
               "copy from " << src.describe() << " into " << describe());
  const size_t n = nbytes();
  if (n == 0) return;
  const CopyRoute route = copy_route(device_, src.device());
  ops_for(route.backend).copy(raw(), src.raw(), n, route.kind);
}

void Tensor::copy_columns_from(const Tensor& src, int64_t cols) { copy_columns_from(src, 0, cols); }

void Tensor::copy_columns_from(const Tensor& src, int64_t begin, int64_t end) {
  NCSREC_CHECK(ndim() == 2 && src.ndim() == 2 && src.dim(1) == dim(1) && begin <= end,
               "copy of columns [" << begin << ", " << end << ") from " << src.describe() << " into " << describe());
  copy_column_block(begin, src, begin, end - begin);
}

void Tensor::copy_column_block(int64_t col, const Tensor& src, int64_t src_col, int64_t cols) {
  NCSREC_CHECK(ndim() == 2 && src.ndim() == 2 && src.dim(0) == dim(0) && src.dtype() == dtype_ && cols >= 0 &&
                   col >= 0 && src_col >= 0 && col + cols <= dim(1) && src_col + cols <= src.dim(1),
               "copy of columns [" << src_col << ", " << src_col + cols << ") of " << src.describe() << " to ["
                                   << col << ", " << col + cols << ") of " << describe());
  const size_t elem = dtype_size(dtype_), rows = static_cast<size_t>(dim(0)), width = static_cast<size_t>(cols) * elem;
  if (width == 0 || rows == 0) return;
  const size_t pitch = static_cast<size_t>(dim(1)) * elem, src_pitch = static_cast<size_t>(src.dim(1)) * elem;
  char* dst = static_cast<char*>(raw()) + static_cast<size_t>(col) * elem;
  const char* from = static_cast<const char*>(src.raw()) + static_cast<size_t>(src_col) * elem;
  const CopyRoute route = copy_route(device_, src.device());
  const OpTable& ops = ops_for(route.backend);
  if (ops.copy_2d) {
    ops.copy_2d(dst, pitch, from, src_pitch, width, rows, route.kind);
    return;
  }
  for (size_t r = 0; r < rows; ++r) ops.copy(dst + r * pitch, from + r * src_pitch, width, route.kind);
}

void Tensor::zero_() {
  if (nbytes()) ops_for(device_).memset_zero(raw(), nbytes());
}

std::string Tensor::describe() const {
  std::ostringstream os;
  os << dtype_name(dtype_) << shape_string(shape_) << " on " << device_name(device_);
  return os.str();
}

std::vector<double> host_values(const Tensor& t) {
  NCSREC_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, "host_values of " << t.describe());
  const size_t n = static_cast<size_t>(t.numel()), bytes = t.nbytes();
  std::vector<char> raw(bytes);
  if (bytes) ops_for(t.device()).copy(raw.data(), t.raw(), bytes, t.device() == Device::CPU ? CopyKind::HostToHost
                                                                                             : CopyKind::DeviceToHost);
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i)
    out[i] = t.dtype() == DType::F32 ? reinterpret_cast<const float*>(raw.data())[i]
                                     : reinterpret_cast<const double*>(raw.data())[i];
  return out;
}

void set_host_values(Tensor& t, const std::vector<double>& values) {
  NCSREC_CHECK((t.dtype() == DType::F32 || t.dtype() == DType::F64) && static_cast<int64_t>(values.size()) == t.numel(),
               "set_host_values: " << values.size() << " values for " << t.describe());
  std::vector<char> raw(t.nbytes());
  for (size_t i = 0; i < values.size(); ++i) {
    if (t.dtype() == DType::F32) reinterpret_cast<float*>(raw.data())[i] = static_cast<float>(values[i]);
    else reinterpret_cast<double*>(raw.data())[i] = values[i];
  }
  if (!raw.empty())
    ops_for(t.device()).copy(t.raw(), raw.data(), raw.size(),
                             t.device() == Device::CPU ? CopyKind::HostToHost : CopyKind::HostToDevice);
}

void add_host_values(Tensor& t, const std::vector<double>& d) {
  std::vector<double> v = host_values(t);
  NCSREC_CHECK(v.size() == d.size(), "add_host_values: " << d.size() << " values for " << t.describe());
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = t.dtype() == DType::F32 ? static_cast<double>(static_cast<float>(v[i]) + static_cast<float>(d[i])) : v[i] + d[i];
  set_host_values(t, v);
}

}  // namespace ncsrec
