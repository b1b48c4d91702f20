// The interface every index kind implements (exact/flat, graph, ...). Sessions and the Python
// bindings talk to indexes only through it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
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

// Work counters a caller can ask a search to add to (safe to share between threads).
struct SearchStats {
  std::atomic<std::uint64_t> distances{0};  // query-to-vector distances computed
};

struct SearchParams {
  const IdFilter* filter = nullptr;  // not owned; nullptr = no filtering
  int num_threads = 0;               // 0 = the index's default
  SearchStats* stats = nullptr;      // not owned; nullptr = not counted
  // k may exceed the number of vectors: the missing results are kNoId, as with a filter that
  // accepts fewer than k. Otherwise k > size() is an error. Sessions search with it, so that
  // vectors removed by another thread between their reading size() and searching cannot make
  // their search fail.
  bool pad = false;
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
  // id the index has held. Ids must be in [0, 2^63 - 2] and new; under ip / l2 a vector's norm must
  // be at most 1e18 (see input_checks.hpp). All or nothing: a rejected call, or one that runs out of
  // memory part-way (std::bad_alloc), leaves the index unchanged.
  virtual Status add(const float* vectors, std::size_t n, const idx_t* ids) = 0;

  virtual Status search(const float* queries, std::size_t nq, std::size_t k, float* scores,
                        idx_t* ids, const SearchParams& params) const = 0;

  // Exact scores of one query against the listed ids (used for re-ranking cached candidates).
  // An id not in the index is an error naming it.
  virtual Status score_ids(const float* query, const idx_t* ids, std::size_t n,
                           float* scores) const = 0;

  // score_ids for a query already checked and prepared as search() prepares it (finite, of this
  // dimension, normalised for cosine): a session re-scores its pool block by block with one
  // prepared query and so skips the per-call checks. The default checks anyway.
  virtual Status score_ids_prepared(const float* query, const idx_t* ids, std::size_t n, float* scores) const {
    return score_ids(query, ids, n, scores);
  }

  // Exact scores of nq queries against the same n ids: scores[i * n + j] for query i, id j.
  // Indexes override this with one blocked pass over the rows; the default scores query by query.
  virtual Status score_ids_batch(const float* queries, std::size_t nq, const idx_t* ids,
                                 std::size_t n, float* scores) const {
    for (std::size_t i = 0; i < nq; ++i) {
      Status s = score_ids(queries + i * dim(), ids, n, scores + i * n);
      if (!s.ok()) return s;
    }
    return {};
  }

  // Changes whenever the set of stored vectors changes (add, remove), so a cached result can
  // tell it is stale.
  virtual std::uint64_t generation() const noexcept = 0;

  // True when search() returns the exhaustive answer (exact index), false for approximate indexes.
  virtual bool exact_search() const noexcept { return false; }

  // An upper bound on the norm of every stored vector, when the index keeps one. Sessions use it
  // to prove inner-product refinements exact; nullopt disables that proof.
  virtual std::optional<float> max_norm() const noexcept { return std::nullopt; }

  // k-NN search that starts from known good candidates (e.g. the previous turn's results) instead
  // of the index's usual entry point; seeds no longer in the index are skipped (they are hints).
  // Indexes without such a search return ErrorCode::unsupported.
  virtual Status search_warm(const float* query, std::size_t k, const idx_t* seeds,
                             std::size_t n_seeds, float* scores, idx_t* ids,
                             const SearchParams& params) const {
    return make_error(ErrorCode::unsupported, "this index kind has no warm-started search");
  }

  // The methods below have defaults that report "unsupported", so a new index kind can grow
  // into them; FlatIndex implements all of them.

  // Short name of the index kind ("flat", "graph"), used in messages and files.
  virtual std::string_view kind_name() const noexcept { return "index"; }

  // Removes the listed ids. Every id must be present and listed once; otherwise nothing is
  // removed and the error names the offending id. All or nothing, like add.
  virtual Status remove(const idx_t* ids, std::size_t n);

  // The stored vectors of n ids, in the given order, as float32 rows (out: n x dim). Exact when
  // the index keeps float32 rows (f32 storage, or float32 originals beside a compressed form);
  // otherwise decoded from the compressed form, so approximate. Cosine indexes return the
  // normalised rows they store. Unknown ids are a not_found error naming them; nothing useful is
  // written then.
  virtual Status reconstruct(const idx_t* ids, std::size_t n, float* out) const;

  // All results with score >= radius (inner product / cosine) or squared distance <= radius (l2).
  virtual Status range_search(const float* queries, std::size_t nq, float radius, RangeResult* out,
                              const SearchParams& params) const;

  // Writes the index to one file atomically (temp file + fsync + rename); see io.hpp.
  virtual Status save(const std::string& path) const;
};

}  // namespace vsr
