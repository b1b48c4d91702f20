// The interface every index kind implements (exact/flat, graph, ...). Sessions and the Python
// bindings talk to indexes only through it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

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

// Results of a range search in CSR form (faiss convention): query i's results are
// [lims[i], lims[i + 1]) of scores/ids, best first. lims has nq + 1 entries.
struct RangeResult {
  std::vector<std::size_t> lims;
  std::vector<float> scores;
  std::vector<idx_t> ids;
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

  // The methods below have defaults that report "unsupported", so a new index kind can grow
  // into them; FlatIndex implements all of them.

  // Short name of the index kind ("flat", "graph"), used in messages and files.
  virtual std::string_view kind_name() const noexcept { return "index"; }

  // Removes the listed ids. Every id must be present and listed once; otherwise nothing is
  // removed and the error names the offending id.
  virtual Status remove(const idx_t* ids, std::size_t n);

  // All results with score >= radius (inner product / cosine) or squared distance <= radius (l2).
  virtual Status range_search(const float* queries, std::size_t nq, float radius, RangeResult* out,
                              const SearchParams& params) const;

  // Writes the index to one file atomically (temp file + fsync + rename); see io.hpp.
  virtual Status save(const std::string& path) const;
};

}  // namespace vsr
