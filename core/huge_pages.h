// Memory for large arrays read at random rows: embedding tables, their optimizer state, hash
// indexes. From kHugePageMinBytes up an allocation is 2 MiB aligned and advised into transparent
// huge pages (MADV_HUGEPAGE; the kernel's "madvise" mode, Debian's default, needs the advice),
// so that a step's few thousand random rows cost cache misses but few TLB misses: with 4 KiB
// pages a 2 GB table spans 500k pages, far beyond any TLB. Smaller ones are 64-byte aligned.
// The advice is given before the memory is first touched, so the pages are huge from the start.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace ncsrec {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugePageMinBytes = size_t{32} << 20;

// Like aligned_alloc (null when out of memory); free with std::free.
void* allocate_for_random_access(size_t bytes);

// Loops over rows scattered through such arrays ask for the row kPrefetchAhead places ahead
// while they work on the current one, so that the DRAM misses of the rows overlap instead of
// queueing one after the other (docs/results/hash_tables.md).
constexpr int64_t kPrefetchAhead = 8;
// Asks the cache for the first `bytes` (up to 4 lines) at `p`; `Write` when the loop will write.
template <bool Write = false>
inline void prefetch_row(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t off = 0; off < bytes && off < 256; off += 64) __builtin_prefetch(c + off, Write ? 1 : 0);
}

// A std::vector allocator over allocate_for_random_access.
template <class T>
struct RandomAccessAllocator {
  using value_type = T;
  RandomAccessAllocator() = default;
  template <class U>
  RandomAccessAllocator(const RandomAccessAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    void* p = allocate_for_random_access(n * sizeof(T));
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) noexcept { std::free(p); }
  template <class U>
  bool operator==(const RandomAccessAllocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const RandomAccessAllocator<U>&) const noexcept { return false; }
};

}  // namespace ncsrec
