// The id -> row (or slot) map of an index: open addressing with linear probing over one flat
// array. A lookup is one hashed probe into a contiguous table (usually one cache line), where a
// node-based std::unordered_map chases a bucket and then a node: sessions resolve every cached
// candidate by id on each turn, and filters and warm starts resolve their ids per search.
//
// Ids are non-negative (the indexes reject others), so -1 marks an empty cell. Erase shifts the
// following cells of the probe run back, so no tombstones accumulate. The subset of the
// std::unordered_map interface the indexes use: find/end (a pointer to {first, second}), count,
// at, emplace, operator[], erase, reserve, size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "vsr/common.hpp"

namespace vsr {

template <typename V>
class IdMap {
 public:
  struct Entry {
    idx_t first;
    V second;
  };

  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  const Entry* end() const noexcept { return nullptr; }

  const Entry* find(idx_t id) const noexcept {
    if (size_ == 0 || id < 0) return nullptr;
    for (std::size_t i = home(id);; i = (i + 1) & mask_) {
      const Entry& e = cells_[i];
      if (e.first == id) return &e;
      if (e.first == kEmpty) return nullptr;
    }
  }
  std::size_t count(idx_t id) const noexcept { return find(id) != nullptr; }
  const V& at(idx_t id) const {
    const Entry* e = find(id);
    if (e == nullptr) throw std::out_of_range("id " + std::to_string(id) + " is not in the map");
    return e->second;
  }

  // The value of a present id, to update it in place (never allocates); nullptr when absent.
  V* find_value(idx_t id) noexcept {
    const Entry* e = find(id);
    return e != nullptr ? &const_cast<Entry*>(e)->second : nullptr;
  }

  // Inserts (id, value) unless id is present; returns the cell and whether it was inserted.
  // Never allocates when reserve() made room for the id beforehand.
  std::pair<Entry*, bool> emplace(idx_t id, V value) {
    if (id < 0) throw std::invalid_argument("ids must be non-negative");
    if (2 * (size_ + 1) > cells_.size()) rehash(2 * (size_ + 1));
    std::size_t i = home(id);
    for (; cells_[i].first != kEmpty; i = (i + 1) & mask_)
      if (cells_[i].first == id) return {&cells_[i], false};
    cells_[i] = Entry{id, std::move(value)};
    ++size_;
    return {&cells_[i], true};
  }
  V& operator[](idx_t id) { return emplace(id, V{}).first->second; }

  // Removes id; false when it was absent.
  bool erase(idx_t id) noexcept {
    if (size_ == 0 || id < 0) return false;
    std::size_t hole = home(id);
    while (cells_[hole].first != id) {
      if (cells_[hole].first == kEmpty) return false;
      hole = (hole + 1) & mask_;
    }
    // Backward shift: a later cell of the run moves into the hole unless its home lies
    // cyclically in (hole, cell], where the move would put it before its home.
    for (std::size_t j = (hole + 1) & mask_; cells_[j].first != kEmpty; j = (j + 1) & mask_) {
      const std::size_t h = home(cells_[j].first);
      const bool stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
      if (stays) continue;
      cells_[hole] = cells_[j];
      hole = j;
    }
    cells_[hole].first = kEmpty;
    --size_;
    return true;
  }

  // Room for n ids without rehashing.
  void reserve(std::size_t n) {
    if (2 * n > cells_.size()) rehash(2 * n);
  }

 private:
  static constexpr idx_t kEmpty = -1;

  // Fibonacci hashing: the top bits of id * 2^64 / phi spread consecutive ids evenly.
  std::size_t home(idx_t id) const noexcept {
    return std::size_t((std::uint64_t(id) * 0x9E3779B97F4A7C15ull) >> shift_);
  }

  void rehash(std::size_t min_cells) {
    std::size_t cells = 16;
    int bits = 4;
    while (cells < min_cells) {
      cells *= 2;
      ++bits;
    }
    // The new table is allocated before the old one is touched: a failed rehash changes nothing.
    std::vector<Entry> old(cells, Entry{kEmpty, V{}});
    old.swap(cells_);
    mask_ = cells - 1;
    shift_ = 64 - bits;
    size_ = 0;
    for (const Entry& e : old)
      if (e.first != kEmpty) emplace(e.first, e.second);
  }

  std::vector<Entry> cells_;
  std::size_t mask_ = 0;
  int shift_ = 64;
  std::size_t size_ = 0;
};

}  // namespace vsr
