// Exact (brute-force) search over float32 vectors, parallel over query blocks.
#pragma once

#include <atomic>
#include <cstddef>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include "vsr/index.hpp"
#include "vsr/kernels.hpp"
#include "vsr/parallel.hpp"

namespace vsr {

class FlatIndex final : public Index {
 public:
  // dim must be positive. Cosine normalises stored vectors and queries.
  static Result<FlatIndex*> create(std::size_t dim, Metric metric);

  std::size_t dim() const noexcept override { return dim_; }
  Metric metric() const noexcept override { return metric_; }
  std::size_t size() const noexcept override;

  Status add(const float* vectors, std::size_t n, const idx_t* ids) override;
  Status search(const float* queries, std::size_t nq, std::size_t k, float* scores, idx_t* ids,
                const SearchParams& params) const override;
  Status score_ids(const float* query, const idx_t* ids, std::size_t n,
                   float* scores) const override;
  Status score_ids_batch(const float* queries, std::size_t nq, const idx_t* ids, std::size_t n,
                         float* scores) const override;
  std::uint64_t generation() const noexcept override { return generation_.load(); }
  std::optional<float> max_norm() const noexcept override;
  bool exact_search() const noexcept override { return true; }

  // Kernel set used by this index (defaults to the best the CPU supports).
  Status set_isa(Isa isa);
  Isa isa() const noexcept { return kernels_->isa; }
  void set_num_threads(int n) noexcept { num_threads_ = n; }
  int num_threads() const noexcept { return num_threads_; }

 private:
  FlatIndex(std::size_t dim, Metric metric);
  // Score of query q against stored row i, in "higher is better" form.
  void score_block(const float* q, std::size_t row_begin, std::size_t row_end, float* out) const;

  std::size_t dim_;
  Metric metric_;
  const Kernels* kernels_;
  int num_threads_ = 0;
  std::vector<float> data_;   // row-major size() x dim_
  std::vector<idx_t> ids_;    // external id of each row
  std::unordered_map<idx_t, std::size_t> row_of_;
  idx_t next_id_ = 0;
  double max_sq_norm_ = 0;                 // largest squared norm added (never decreases)
  std::atomic<std::uint64_t> generation_{0};
  mutable std::shared_mutex mutex_;  // searches share, writes exclude
};

// Worker count for a request: requested > 0 wins, else hardware concurrency.
int resolve_threads(int requested) noexcept;

}  // namespace vsr
