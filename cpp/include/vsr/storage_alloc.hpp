// Memory for index storage (rows, link lists, ids): 64-byte aligned, and for blocks of at least
// kHugePageBytes, aligned to a huge page and backed by transparent huge pages where the OS has
// them (Linux madvise). A full scan streams the rows and a graph walk jumps between them; with
// 4 KiB pages both miss the TLB every few rows and the hardware prefetchers stop at each page
// boundary, which costs a single core 10-20% of its read bandwidth on a flat scan.
#pragma once

#include <cstddef>

namespace vsr {

inline constexpr std::size_t kHugePageBytes = std::size_t(2) << 20;

// Throws std::bad_alloc on failure, like operator new.
void* storage_alloc(std::size_t bytes);
// bytes: the size given to storage_alloc.
void storage_free(void* p, std::size_t bytes) noexcept;

// Asks for transparent huge pages over the whole huge pages inside [p, p + bytes) (a mapped
// index file's sections; file-backed huge pages depend on the kernel and file system). Returns
// whether the request was accepted; failing is harmless.
bool advise_huge_pages(const void* p, std::size_t bytes) noexcept;

}  // namespace vsr
