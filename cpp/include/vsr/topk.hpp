// Bounded top-k selection. Scores are "higher is better" inside the engine; l2 distances are
// negated on the way in and restored on the way out by the index.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "vsr/common.hpp"

namespace vsr {

// Keeps the k best (score, id) pairs seen so far in a min-heap on score. Ties break toward the
// smaller id so results are deterministic regardless of thread split.
class TopK {
 public:
  explicit TopK(std::size_t k) : k_(k) { heap_.reserve(k); }

  std::size_t k() const noexcept { return k_; }
  std::size_t size() const noexcept { return heap_.size(); }

  // Score a candidate must beat to enter (only meaningful when full()).
  bool full() const noexcept { return heap_.size() == k_; }
  float threshold() const noexcept { return heap_.empty() ? -kInf : heap_.front().score; }

  void push(float score, idx_t id) {
    if (k_ == 0) return;
    if (heap_.size() < k_) {
      heap_.push_back({score, id});
      std::push_heap(heap_.begin(), heap_.end(), worse_first);
      return;
    }
    const Entry& worst = heap_.front();
    if (better({score, id}, worst)) {
      std::pop_heap(heap_.begin(), heap_.end(), worse_first);
      heap_.back() = {score, id};
      std::push_heap(heap_.begin(), heap_.end(), worse_first);
    }
  }

  void merge(const TopK& other) {
    for (const Entry& e : other.heap_) push(e.score, e.id);
  }

  // Writes k results best-first; unused slots get (fill_score, kNoId).
  void write_sorted(float* scores, idx_t* ids, float fill_score) {
    std::sort(heap_.begin(), heap_.end(), [](const Entry& a, const Entry& b) { return better(a, b); });
    std::size_t i = 0;
    for (; i < heap_.size(); ++i) {
      scores[i] = heap_[i].score;
      ids[i] = heap_[i].id;
    }
    for (; i < k_; ++i) {
      scores[i] = fill_score;
      ids[i] = kNoId;
    }
  }

  void clear() noexcept { heap_.clear(); }

  static constexpr float kInf = __builtin_huge_valf();

 private:
  struct Entry {
    float score;
    idx_t id;
  };
  static bool better(const Entry& a, const Entry& b) noexcept {
    return a.score > b.score || (a.score == b.score && a.id < b.id);
  }
  static bool worse_first(const Entry& a, const Entry& b) noexcept { return better(a, b); }

  std::size_t k_;
  std::vector<Entry> heap_;
};

}  // namespace vsr
