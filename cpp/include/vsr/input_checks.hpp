// Argument checks every index kind applies at its edge, so each rule and its message exist once.
#pragma once

#include <cstddef>
#include <limits>
#include <string>
#include <unordered_set>
#include <vector>

#include "vsr/common.hpp"
#include "vsr/index.hpp"

namespace vsr {

// The largest id an index stores: one below 2^63 - 1, so that the next automatic id (largest id
// + 1) is always representable.
inline constexpr idx_t kMaxId = std::numeric_limits<idx_t>::max() - 1;
// The largest norm of a vector or query under inner product and l2: scores of two such vectors,
// and every partial sum of them, stay far inside float32's range (3.4e38). Cosine normalises, so
// any finite non-zero vector is accepted there.
inline constexpr double kMaxNorm = 1e18;

// True when none of the n values is NaN or infinite.
bool all_finite(const float* x, std::size_t n) noexcept;
// Sum of squares in double precision.
double sqnorm(const float* x, std::size_t d) noexcept;
// Normalises each of n rows in place; false (and *bad_row) at the first row with zero norm.
bool normalize_rows(float* x, std::size_t n, std::size_t d, std::size_t* bad_row) noexcept;

// Rows as the metric scores them: rejects NaN/inf, norms above kMaxNorm (inner product, l2) and,
// for cosine, all-zero rows, naming the row as `noun` ("query", "vector"); for cosine returns
// normalised copies held in `storage`, otherwise the input itself.
Result<const float*> prepare_rows(const float* rows, std::size_t n, std::size_t dim, Metric metric,
                                  const char* noun, std::vector<float>& storage);

// k positive and output buffers present.
Status check_search_args(std::size_t k, const float* scores, const idx_t* ids);
// k no larger than the number of vectors searched.
Status check_k_fits(std::size_t k, std::size_t size);

// The first automatic id after an add of n vectors (`ids` == nullptr: automatic ids from
// `next_id` on), or an error when automatic ids would pass kMaxId. Explicit ids must have passed
// check_new_ids.
Result<idx_t> next_id_after(idx_t next_id, const idx_t* ids, std::size_t n);

// New ids: in [0, kMaxId], not in `existing`, not repeated in the batch.
template <typename Lookup>
Status check_new_ids(const idx_t* ids, std::size_t n, const Lookup& existing) {
  std::unordered_set<idx_t> batch;
  batch.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (ids[i] < 0)
      return make_error(ErrorCode::invalid_argument, "ids must be non-negative, got " + std::to_string(ids[i]));
    if (ids[i] > kMaxId)
      return make_error(ErrorCode::invalid_argument, "ids must be at most 2^63 - 2 = " + std::to_string(kMaxId) +
                                                         ", got " + std::to_string(ids[i]));
    if (existing.count(ids[i]) || !batch.insert(ids[i]).second)
      return make_error(ErrorCode::invalid_argument, "duplicate id " + std::to_string(ids[i]));
  }
  return {};
}

// Ids to remove: each present in `existing` and listed once.
template <typename Lookup>
Status check_existing_ids(const idx_t* ids, std::size_t n, const Lookup& existing) {
  std::unordered_set<idx_t> seen;
  seen.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (existing.count(ids[i]) == 0)
      return make_error(ErrorCode::not_found, "id " + std::to_string(ids[i]) + " is not in the index");
    if (!seen.insert(ids[i]).second)
      return make_error(ErrorCode::invalid_argument, "id " + std::to_string(ids[i]) + " is listed twice");
  }
  return {};
}

// "id 7 is not in the index" / "3 ids are not in the index: 7, 9, 12" (at most 10 listed).
std::string missing_ids_message(const std::vector<idx_t>& missing);
// Rows (or slots) of n looked-up ids, in order, from an id -> row map. Unknown ids are a not_found
// error naming them (the first few, then how many in all).
template <typename Map, typename Row>
Status lookup_rows(const idx_t* ids, std::size_t n, const Map& row_of, std::vector<Row>& rows) {
  if (ids == nullptr && n > 0) return make_error(ErrorCode::invalid_argument, "ids is null");
  rows.resize(n);
  std::vector<idx_t> missing;
  for (std::size_t j = 0; j < n; ++j) {
    auto it = row_of.find(ids[j]);
    if (it == row_of.end())
      missing.push_back(ids[j]);
    else
      rows[j] = it->second;
  }
  if (missing.empty()) return {};
  return make_error(ErrorCode::not_found, missing_ids_message(missing));
}

// Range search arguments: a finite radius and somewhere to write.
Status check_range_args(float radius, const RangeResult* out);

// Per-query hits (score as "higher is better" key: l2 distances negated, each list best first)
// into CSR form in the metric's units.
void write_range_result(Metric metric, const std::vector<std::vector<std::pair<float, idx_t>>>& hits,
                        RangeResult* out);

}  // namespace vsr
