// The interface every index kind implements (exact/flat, graph, ...). Sessions and the Python
// bindings talk to indexes only through it.
#pragma once

#include <cstddef>
#include <unordered_set>

#include "vsr/common.hpp"

namespace vsr {

// Restricts a search to allowed ids or away from denied ids.
struct IdFilter {
  enum class Mode : unsigned char { none, allow, deny };
  Mode mode = Mode::none;
  std::unordered_set<idx_t> ids;

  bool accepts(idx_t id) const noexcept {
    switch (mode) {
      case Mode::none: return true;
      case Mode::allow: return ids.count(id) != 0;
      case Mode::deny: return ids.count(id) == 0;
    }
    return true;
  }
};

struct SearchParams {
  const IdFilter* filter = nullptr;  // not owned; nullptr = no filtering
  int num_threads = 0;               // 0 = the index's default
};

// Results of a k-NN search are written to caller buffers of nq * k. Scores follow the metric:
// inner product / cosine similarity (descending) or squared l2 distance (ascending). Missing
// results (fewer than k candidates) are id kNoId.
class Index {
 public:
  virtual ~Index() = default;

  virtual std::size_t dim() const noexcept = 0;
  virtual Metric metric() const noexcept = 0;
  virtual std::size_t size() const noexcept = 0;

  // Adds n vectors (row-major n x dim). ids == nullptr assigns consecutive ids after the largest
  // id in the index. Duplicate or negative ids are rejected and nothing is added.
  virtual Status add(const float* vectors, std::size_t n, const idx_t* ids) = 0;

  virtual Status search(const float* queries, std::size_t nq, std::size_t k, float* scores,
                        idx_t* ids, const SearchParams& params) const = 0;

  // Exact scores of one query against the listed ids (used for re-ranking cached candidates).
  // An id not in the index is an error naming it.
  virtual Status score_ids(const float* query, const idx_t* ids, std::size_t n,
                           float* scores) const = 0;
};

}  // namespace vsr
