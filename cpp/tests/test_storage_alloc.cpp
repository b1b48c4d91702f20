// Index storage memory: alignment of small and huge blocks, and the huge-page request.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "test_harness.hpp"
#include "vsr/mapped_array.hpp"
#include "vsr/storage_alloc.hpp"

using namespace vsr;

static bool aligned(const void* p, std::size_t a) { return reinterpret_cast<std::uintptr_t>(p) % a == 0; }

TEST(small_blocks_are_cache_line_aligned_and_large_ones_huge_page_aligned) {
  for (std::size_t bytes : {std::size_t(1), std::size_t(100), std::size_t(4096), kHugePageBytes - 1}) {
    void* p = storage_alloc(bytes);
    CHECK(aligned(p, 64));
    std::memset(p, 0xAB, bytes);
    storage_free(p, bytes);
  }
  for (std::size_t bytes : {kHugePageBytes, kHugePageBytes + 1, 5 * kHugePageBytes + 12345}) {
    auto* p = static_cast<std::uint8_t*>(storage_alloc(bytes));
    CHECK(aligned(p, kHugePageBytes));
    std::memset(p, 0x5A, bytes);  // the whole block is usable
    CHECK(p[0] == 0x5A && p[bytes - 1] == 0x5A);
    storage_free(p, bytes);
  }
  storage_free(nullptr, 10);  // like delete
}

TEST(index_arrays_use_the_storage_allocator) {
  MappedArray<float> rows;
  rows.own().resize(kHugePageBytes);  // 8 MiB of floats
  CHECK(aligned(rows.data(), kHugePageBytes));
  MappedArray<std::uint8_t> small;
  small.own().resize(100);
  CHECK(aligned(small.data(), 64));
}

TEST(huge_pages_are_requested_where_the_kernel_offers_them) {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode((std::istreambuf_iterator<char>(f)), {});
  const bool offered = mode.find("[always]") != std::string::npos || mode.find("[madvise]") != std::string::npos;
  const std::size_t bytes = 4 * kHugePageBytes;
  void* p = storage_alloc(bytes);
  if (offered) CHECK(advise_huge_pages(p, bytes));
  // A range holding no whole huge page asks for nothing.
  CHECK(!advise_huge_pages(static_cast<std::uint8_t*>(p) + 1, kHugePageBytes));
  storage_free(p, bytes);
}

VSR_TEST_MAIN
