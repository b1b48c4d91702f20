#include "vsr/storage_alloc.hpp"

#include <cstdint>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace vsr {

namespace {

constexpr std::align_val_t kCacheLine{64};
constexpr std::align_val_t kHugePage{kHugePageBytes};

}  // namespace

bool advise_huge_pages(const void* p, std::size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = (begin + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  const std::uintptr_t last = (begin + bytes) / kHugePageBytes * kHugePageBytes;
  if (last <= first) return false;
  return ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE) == 0;
#else
  (void)p;
  (void)bytes;
  return false;
#endif
}

void* storage_alloc(std::size_t bytes) {
  if (bytes < kHugePageBytes) return ::operator new(bytes, kCacheLine);
  // Rounded up to whole huge pages so the advice covers the block's tail too.
  const std::size_t rounded = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  void* p = ::operator new(rounded, kHugePage);
  // Before the first touch: the pages are then faulted in as huge pages.
  advise_huge_pages(p, rounded);
  return p;
}

void storage_free(void* p, std::size_t bytes) noexcept {
  if (p == nullptr) return;
  if (bytes < kHugePageBytes)
    ::operator delete(p, kCacheLine);
  else
    ::operator delete(p, kHugePage);
}

}  // namespace vsr
