// An array that either owns its elements or views memory owned elsewhere (a mapped index file).
// Reads never copy; the first write of a view copies it into owned memory (copy-on-write), so an
// index served from a mapping stays read-only on disk and becomes private once modified.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

#include "vsr/storage_alloc.hpp"

namespace vsr {

// Owned storage starts on a 64-byte boundary, like a mapped file's sections, so that rows whose
// size is a multiple of 64 bytes never straddle cache lines in a full-width AVX-512 load (malloc
// returns 16-byte aligned blocks, which split every other 64-byte load). Blocks of at least a
// huge page start on a huge-page boundary and ask the kernel for transparent huge pages (see
// storage_alloc).
template <typename T>
struct CacheAlignedAllocator {
  using value_type = T;
  CacheAlignedAllocator() noexcept = default;
  template <typename U>
  CacheAlignedAllocator(const CacheAlignedAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(storage_alloc(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { storage_free(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const CacheAlignedAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const CacheAlignedAllocator<U>&) const noexcept { return false; }
};

// Makes room for `extra` more elements, so that the inserts that follow cannot fail: an index
// writer reserves everything first, then commits. Capacity grows geometrically, as push_back's
// would (or exactly, when memory is too short for that).
template <typename Vec>
void reserve_more(Vec& v, std::size_t extra) {
  const std::size_t need = v.size() + extra;
  if (need <= v.capacity()) return;
  try {
    v.reserve(need > 2 * v.capacity() ? need : 2 * v.capacity());
  } catch (const std::bad_alloc&) {
    v.reserve(need);
  }
}

template <typename T>
class MappedArray {
 public:
  std::size_t size() const noexcept { return view_ != nullptr ? view_size_ : owned_.size(); }
  const T* data() const noexcept { return view_ != nullptr ? view_ : owned_.data(); }
  const T& operator[](std::size_t i) const noexcept { return data()[i]; }
  bool is_view() const noexcept { return view_ != nullptr; }

  void set_view(const T* data, std::size_t n) {
    owned_.clear();
    owned_.shrink_to_fit();
    view_ = n > 0 ? data : nullptr;
    view_size_ = n;
  }

  // Mutable access; materialises a view first (all or nothing: a failed copy leaves the view).
  std::vector<T, CacheAlignedAllocator<T>>& own() {
    if (view_ != nullptr) {
      owned_.assign(view_, view_ + view_size_);
      view_ = nullptr;
      view_size_ = 0;
    }
    return owned_;
  }

 private:
  std::vector<T, CacheAlignedAllocator<T>> owned_;
  const T* view_ = nullptr;
  std::size_t view_size_ = 0;
};

}  // namespace vsr
