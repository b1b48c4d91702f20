// An array that either owns its elements or views memory owned elsewhere (a mapped index file).
// Reads never copy; the first write of a view copies it into owned memory (copy-on-write), so an
// index served from a mapping stays read-only on disk and becomes private once modified.
#pragma once

#include <cstddef>
#include <vector>

namespace vsr {

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

  // Mutable access; materialises a view first.
  std::vector<T>& own() {
    if (view_ != nullptr) {
      owned_.assign(view_, view_ + view_size_);
      view_ = nullptr;
      view_size_ = 0;
    }
    return owned_;
  }

 private:
  std::vector<T> owned_;
  const T* view_ = nullptr;
  std::size_t view_size_ = 0;
};

}  // namespace vsr
