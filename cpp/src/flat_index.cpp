#include "vsr/flat_index.hpp"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>

#include "vsr/topk.hpp"

namespace vsr {

namespace {

// Rows scored per kernel call: small enough that a block of scores stays in L1.
constexpr std::size_t kRowBlock = 256;

bool all_finite(const float* x, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

void normalize(float* x, std::size_t d) noexcept {
  double s = 0;
  for (std::size_t i = 0; i < d; ++i) s += double(x[i]) * x[i];
  if (s > 0) {
    float inv = float(1.0 / std::sqrt(s));
    for (std::size_t i = 0; i < d; ++i) x[i] *= inv;
  }
}

}  // namespace

int resolve_threads(int requested) noexcept {
  if (requested > 0) return requested;
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : int(hc);
}

FlatIndex::FlatIndex(std::size_t dim, Metric metric)
    : dim_(dim), metric_(metric), kernels_(&default_kernels()) {}

Result<FlatIndex*> FlatIndex::create(std::size_t dim, Metric metric) {
  if (dim == 0) return make_error(ErrorCode::invalid_argument, "dim must be positive, got 0");
  return new FlatIndex(dim, metric);
}

std::size_t FlatIndex::size() const noexcept {
  std::shared_lock lock(mutex_);
  return ids_.size();
}

Status FlatIndex::set_isa(Isa isa) {
  if (!isa_available(isa))
    return make_error(ErrorCode::unsupported,
                      "ISA '" + std::string(isa_name(isa)) + "' is not available on this CPU/build");
  std::unique_lock lock(mutex_);
  kernels_ = kernels_for(isa);
  return {};
}

Status FlatIndex::add(const float* vectors, std::size_t n, const idx_t* ids) {
  if (n == 0) return {};
  if (vectors == nullptr) return make_error(ErrorCode::invalid_argument, "vectors is null");
  if (!all_finite(vectors, n * dim_))
    return make_error(ErrorCode::invalid_argument, "vectors contain NaN or infinity");
  std::unique_lock lock(mutex_);
  // Validate every id before touching storage so a failed add changes nothing.
  if (ids != nullptr) {
    std::unordered_set<idx_t> batch;
    batch.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (ids[i] < 0)
        return make_error(ErrorCode::invalid_argument, "ids must be non-negative, got " + std::to_string(ids[i]));
      if (row_of_.count(ids[i]) || !batch.insert(ids[i]).second)
        return make_error(ErrorCode::invalid_argument, "duplicate id " + std::to_string(ids[i]));
    }
  }
  std::size_t old_rows = ids_.size();
  data_.insert(data_.end(), vectors, vectors + n * dim_);
  if (metric_ == Metric::cosine)
    for (std::size_t i = 0; i < n; ++i) normalize(data_.data() + (old_rows + i) * dim_, dim_);
  for (std::size_t i = 0; i < n; ++i) {
    idx_t id = ids ? ids[i] : next_id_ + idx_t(i);
    ids_.push_back(id);
    row_of_.emplace(id, old_rows + i);
  }
  for (std::size_t i = 0; i < n; ++i) {
    idx_t id = ids ? ids[i] : next_id_ + idx_t(i);
    if (id + 1 > next_id_) next_id_ = id + 1;
  }
  for (std::size_t i = 0; i < n; ++i) {
    const float* row = data_.data() + (old_rows + i) * dim_;
    double s = 0;
    for (std::size_t j = 0; j < dim_; ++j) s += double(row[j]) * row[j];
    max_sq_norm_ = std::max(max_sq_norm_, s);
  }
  generation_.fetch_add(1);
  return {};
}

void FlatIndex::score_block(const float* q, std::size_t row_begin, std::size_t row_end, float* out) const {
  const float* base = data_.data() + row_begin * dim_;
  std::size_t n = row_end - row_begin;
  if (metric_ == Metric::l2) {
    kernels_->l2sq_f32_rows(q, base, n, dim_, out);
    for (std::size_t i = 0; i < n; ++i) out[i] = -out[i];
  } else {
    kernels_->dot_f32_rows(q, base, n, dim_, out);
  }
}

Status FlatIndex::search(const float* queries, std::size_t nq, std::size_t k, float* scores, idx_t* ids,
                         const SearchParams& params) const {
  if (nq == 0) return {};
  if (k == 0) return make_error(ErrorCode::invalid_argument, "k must be positive");
  if (!all_finite(queries, nq * dim_))
    return make_error(ErrorCode::invalid_argument, "queries contain NaN or infinity");
  std::shared_lock lock(mutex_);
  const std::size_t rows = ids_.size();
  int threads = resolve_threads(params.num_threads > 0 ? params.num_threads : num_threads_);
  const IdFilter* filter = params.filter;
  parallel_for_chunks(nq, threads, [&](std::size_t qb, std::size_t qe) {
    std::vector<float> qbuf(dim_);
    std::vector<float> block(kRowBlock);
    TopK top(k);
    for (std::size_t qi = qb; qi < qe; ++qi) {
      const float* q = queries + qi * dim_;
      if (metric_ == Metric::cosine) {
        std::copy(q, q + dim_, qbuf.begin());
        normalize(qbuf.data(), dim_);
        q = qbuf.data();
      }
      top.clear();
      for (std::size_t r = 0; r < rows; r += kRowBlock) {
        std::size_t re = std::min(rows, r + kRowBlock);
        score_block(q, r, re, block.data());
        for (std::size_t i = 0; i < re - r; ++i) {
          idx_t id = ids_[r + i];
          if (top.full() && block[i] < top.threshold()) continue;
          if (filter && !filter->accepts(id)) continue;
          top.push(block[i], id);
        }
      }
      float* s = scores + qi * k;
      // Empty slots get -inf internally, which becomes +inf distance for l2.
      top.write_sorted(s, ids + qi * k, -TopK::kInf);
      if (params.stats) params.stats->distances.fetch_add(rows, std::memory_order_relaxed);
      if (metric_ == Metric::l2)
        for (std::size_t j = 0; j < k; ++j) s[j] = -s[j];
    }
  });
  return {};
}

Status FlatIndex::score_ids(const float* query, const idx_t* ids, std::size_t n, float* scores) const {
  if (!all_finite(query, dim_)) return make_error(ErrorCode::invalid_argument, "query contains NaN or infinity");
  std::vector<float> qbuf(query, query + dim_);
  if (metric_ == Metric::cosine) normalize(qbuf.data(), dim_);
  std::shared_lock lock(mutex_);
  for (std::size_t i = 0; i < n; ++i) {
    auto it = row_of_.find(ids[i]);
    if (it == row_of_.end())
      return make_error(ErrorCode::not_found, "id " + std::to_string(ids[i]) + " is not in the index");
    const float* row = data_.data() + it->second * dim_;
    scores[i] = metric_ == Metric::l2 ? kernels_->l2sq_f32(qbuf.data(), row, dim_)
                                      : kernels_->dot_f32(qbuf.data(), row, dim_);
  }
  return {};
}

std::optional<float> FlatIndex::max_norm() const noexcept {
  std::shared_lock lock(mutex_);
  // Rounded up by a relative 1e-6 so float rounding of stored rows cannot exceed it.
  return float(std::sqrt(max_sq_norm_) * (1 + 1e-6));
}

Status FlatIndex::score_ids_batch(const float* queries, std::size_t nq, const idx_t* ids, std::size_t n,
                                  float* scores) const {
  if (!all_finite(queries, nq * dim_))
    return make_error(ErrorCode::invalid_argument, "queries contain NaN or infinity");
  std::vector<float> qbuf(queries, queries + nq * dim_);
  if (metric_ == Metric::cosine)
    for (std::size_t i = 0; i < nq; ++i) normalize(qbuf.data() + i * dim_, dim_);
  std::shared_lock lock(mutex_);
  std::vector<const float*> rows(n);
  for (std::size_t j = 0; j < n; ++j) {
    auto it = row_of_.find(ids[j]);
    if (it == row_of_.end())
      return make_error(ErrorCode::not_found, "id " + std::to_string(ids[j]) + " is not in the index");
    rows[j] = data_.data() + it->second * dim_;
  }
  // Tiles of rows small enough to stay in L1/L2 while every query is scored against them.
  const std::size_t tile = std::max<std::size_t>(1, 16384 / dim_);
  for (std::size_t j0 = 0; j0 < n; j0 += tile) {
    std::size_t j1 = std::min(n, j0 + tile);
    for (std::size_t i = 0; i < nq; ++i) {
      const float* q = qbuf.data() + i * dim_;
      float* out = scores + i * n;
      for (std::size_t j = j0; j < j1; ++j)
        out[j] = metric_ == Metric::l2 ? kernels_->l2sq_f32(q, rows[j], dim_) : kernels_->dot_f32(q, rows[j], dim_);
    }
  }
  return {};
}

}  // namespace vsr
