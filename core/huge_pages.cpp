#include "core/huge_pages.h"

#include <sys/mman.h>

namespace ncsrec {

void* allocate_for_random_access(size_t bytes) {
  if (bytes >= kHugePageMinBytes) {
    const size_t size = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, size);
    if (p) (void)madvise(p, size, MADV_HUGEPAGE);  // advice: refused, the pages stay 4 KiB
    return p;
  }
  // 64-byte alignment for vector loads; aligned_alloc needs a multiple of the alignment.
  return std::aligned_alloc(64, (bytes + 63) / 64 * 64);
}

}  // namespace ncsrec
