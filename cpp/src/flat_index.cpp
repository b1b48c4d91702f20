#include "vsr/flat_index.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>

#include "vsr/input_checks.hpp"
#include "vsr/topk.hpp"

namespace vsr {

namespace {

// Queries scored together against one block of rows: their scores for the block stay in L2.
// A multiple of every ISA's packed query group (14, 12, 6, 4) and register tile (4, 3, 2).
constexpr std::size_t kQueryTile = 84;
// From this many queries per scan, blocks are packed once (decoded to float32, dimension-major)
// and scored with the GEMM-style kernel; below it the register tiles win. Measured on MiniLM
// 24k x 384, 1 thread: tiles cost about 0.45 ms a query, packing about 17 ms per call plus 0.19 ms
// a query (8 queries packed took 2-5x as long as in tiles), so they break even near 64.
constexpr std::size_t kPackMinQueries = 64;
// Bytes of stored rows per block: the block stays in L2 while every query of a task visits it.
constexpr std::size_t kBlockBytes = 192 << 10;
// Queries per task when parallel over queries: each task passes over the data (packing every
// block) once, so a thread takes its whole share of a batch in one task (1,000 queries in two
// tasks of 500 packed the 100k x 384 rows twice: 7% of the batch); the cap only bounds a task.
constexpr std::size_t kMaxQueriesPerTask = 4096;
// Rows per task at least, when a few queries are split over rows instead.
constexpr std::size_t kMinRowsPerTask = 4096;
// An allow-list this much smaller than the index is scored row by row instead of scanning.
constexpr std::size_t kGatherRatio = 16;

std::size_t rows_per_block(std::size_t row_bytes, std::size_t multiple) noexcept {
  return std::clamp<std::size_t>(kBlockBytes / row_bytes / multiple * multiple, multiple, 4096 / multiple * multiple);
}

// Feeds block scores into one bounded top-k per query, skipping what cannot enter.
struct TopKSink {
  TopK* tops;
  const idx_t* ids;
  const IdFilter* filter;
  void consume(std::size_t q, std::size_t row0, const float* s, std::size_t n) const {
    TopK& t = tops[q];
    float thr = t.full() ? t.threshold() : -TopK::kInf;
    std::size_t j = 0;
    while (j < n) {
      // Once the list is full almost no score enters: skip 16 at a time on their maximum (a
      // branch-free loop the compiler vectorises) instead of one branch per score.
      if (j + kSkipGroup <= n && chunk_max(s + j) < thr) {
        j += kSkipGroup;
        continue;
      }
      const std::size_t e = std::min(n, j + kSkipGroup);
      for (; j < e; ++j) {
        if (s[j] < thr) continue;
        const idx_t id = ids[row0 + j];
        if (filter != nullptr && !filter->accepts(id)) continue;
        t.push(s[j], id);
        if (t.full()) thr = t.threshold();
      }
    }
  }
  static constexpr std::size_t kSkipGroup = 16;
  static float chunk_max(const float* s) noexcept {
    float m[4] = {s[0], s[1], s[2], s[3]};
    for (std::size_t i = 4; i < kSkipGroup; i += 4)
      for (std::size_t l = 0; l < 4; ++l) m[l] = m[l] > s[i + l] ? m[l] : s[i + l];
    return std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));
  }
};

// Collects every row whose block score reaches the query's threshold.
struct RangeSink {
  const float* thresholds;
  const idx_t* ids;
  const IdFilter* filter;
  std::vector<std::vector<std::pair<float, idx_t>>>* hits;
  void consume(std::size_t q, std::size_t row0, const float* s, std::size_t n) const {
    const float thr = thresholds[q];
    for (std::size_t j = 0; j < n; ++j) {
      if (s[j] < thr) continue;
      const idx_t id = ids[row0 + j];
      if (filter != nullptr && !filter->accepts(id)) continue;
      (*hits)[q].emplace_back(s[j], id);
    }
  }
};

}  // namespace

FlatIndex::FlatIndex(std::size_t dim, const FlatOptions& options)
    : dim_(dim), opts_(options), codec_(options.storage, dim), kernels_(kernels_for(codec_.isa())) {}

Result<std::unique_ptr<FlatIndex>> FlatIndex::make(std::size_t dim, const FlatOptions& options) {
  if (dim == 0) return make_error(ErrorCode::invalid_argument, "dim must be positive, got 0");
  if (dim > (std::size_t(1) << 24))
    return make_error(ErrorCode::invalid_argument, "dim " + std::to_string(dim) + " is larger than 2^24");
  if (options.rerank > 0 && options.storage == Storage::f32)
    return make_error(ErrorCode::invalid_argument,
                      "rerank needs a compressed storage (f16, bf16 or int8); f32 is already exact");
  if (options.rerank > 1024)
    return make_error(ErrorCode::invalid_argument, "rerank factor " + std::to_string(options.rerank) + " exceeds 1024");
  return std::unique_ptr<FlatIndex>(new FlatIndex(dim, options));
}

Result<FlatIndex*> FlatIndex::create(std::size_t dim, Metric metric) {
  FlatOptions o;
  o.metric = metric;
  auto r = make(dim, o);
  if (!r.ok()) return r.error();
  return r.value().release();
}

std::size_t FlatIndex::size() const noexcept {
  std::shared_lock lock(mutex_);
  return ids_.size();
}

bool FlatIndex::is_mapped() const noexcept {
  std::shared_lock lock(mutex_);
  return file_ != nullptr && file_->mapped();
}

Isa FlatIndex::isa() const noexcept {
  std::shared_lock lock(mutex_);
  return codec_.isa();
}

Status FlatIndex::set_isa(Isa isa) {
  if (!isa_available(isa))
    return make_error(ErrorCode::unsupported,
                      "ISA '" + std::string(isa_name(isa)) + "' is not available on this CPU/build");
  std::unique_lock lock(mutex_);
  codec_ = Codec(opts_.storage, dim_, isa);
  kernels_ = kernels_for(isa);
  return {};
}

Status FlatIndex::check_file() const {
  return file_ != nullptr && file_->mapped() ? file_->check_unchanged() : Status();
}

void FlatIndex::make_owned() {
  codes_.own();
  originals_.own();
  sqnorms_.own();
  ids_.own();
  file_.reset();
}

Status FlatIndex::add(const float* vectors, std::size_t n, const idx_t* ids) {
  if (n == 0) return {};
  // Encode outside the lock: searches keep running meanwhile.
  std::vector<float> normalized;
  Result<const float*> prepared = prepare_rows(vectors, n, dim_, opts_.metric, "vector", normalized);
  if (!prepared.ok()) return prepared.error();
  const float* rows = prepared.value();
  const std::size_t rb = codec_.row_bytes();
  std::vector<std::uint8_t> encoded(n * rb);
  Status st = codec_.encode(rows, n, encoded.data());
  if (!st.ok()) return st;
  std::vector<float> norms(n);
  double batch_max = 0;
  for (std::size_t r = 0; r < n; ++r) {
    norms[r] = codec_.sqnorm(&encoded[r * rb]);
    batch_max = std::max({batch_max, double(norms[r]), sqnorm(rows + r * dim_, dim_)});
  }

  std::unique_lock lock(mutex_);
  st = check_file();
  if (!st.ok()) return st;
  // Validate every id before touching storage so a failed add changes nothing.
  if (ids != nullptr) {
    Status id_check = check_new_ids(ids, n, row_of_);
    if (!id_check.ok()) return id_check;
  }
  const Result<idx_t> next_id = next_id_after(next_id_, ids, n);
  if (!next_id.ok()) return next_id.error();
  // Everything that can fail (copying rows out of a mapped file, making room in every array and
  // in the id map) happens before the first change: an exception leaves the index as it was.
  make_owned();
  auto& code_vec = codes_.own();
  auto& originals = originals_.own();
  auto& norm_vec = sqnorms_.own();
  auto& id_vec = ids_.own();
  reserve_more(code_vec, encoded.size());
  if (opts_.rerank > 0) reserve_more(originals, n * dim_);
  if (opts_.metric == Metric::l2) reserve_more(norm_vec, n);
  reserve_more(id_vec, n);
  const std::size_t old_rows = id_vec.size();
  row_of_.reserve(old_rows + n);
  // Commit: nothing below allocates or fails.
  code_vec.insert(code_vec.end(), encoded.begin(), encoded.end());
  if (opts_.rerank > 0) originals.insert(originals.end(), rows, rows + n * dim_);
  if (opts_.metric == Metric::l2) norm_vec.insert(norm_vec.end(), norms.begin(), norms.end());
  for (std::size_t i = 0; i < n; ++i) {
    const idx_t id = ids != nullptr ? ids[i] : next_id_ + idx_t(i);
    id_vec.push_back(id);
    row_of_.emplace(id, old_rows + i);
  }
  next_id_ = next_id.value();
  max_sq_norm_ = std::max(max_sq_norm_, batch_max);
  generation_.fetch_add(1);
  return {};
}

Status FlatIndex::remove(const idx_t* ids, std::size_t n) {
  if (n == 0) return {};
  if (ids == nullptr) return make_error(ErrorCode::invalid_argument, "ids is null");
  std::unique_lock lock(mutex_);
  Status st = check_file();
  if (!st.ok()) return st;
  st = check_existing_ids(ids, n, row_of_);
  if (!st.ok()) return st;
  make_owned();  // the only step that can fail; the loop below moves rows within the arrays
  auto& codes = codes_.own();
  auto& originals = originals_.own();
  auto& norms = sqnorms_.own();
  auto& id_vec = ids_.own();
  const std::size_t rb = codec_.row_bytes();
  // Swap-with-last keeps rows contiguous in O(removed) row moves.
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t row = row_of_.at(ids[i]);
    const std::size_t last = id_vec.size() - 1;
    if (row != last) {
      std::memcpy(&codes[row * rb], &codes[last * rb], rb);
      if (!originals.empty()) std::memcpy(&originals[row * dim_], &originals[last * dim_], dim_ * sizeof(float));
      if (!norms.empty()) norms[row] = norms[last];
      id_vec[row] = id_vec[last];
      *row_of_.find_value(id_vec[row]) = row;
    }
    row_of_.erase(ids[i]);
    id_vec.pop_back();
    codes.resize(last * rb);
    if (!originals.empty()) originals.resize(last * dim_);
    if (!norms.empty()) norms.resize(last);
  }
  generation_.fetch_add(1);
  return {};
}

template <class Sink>
void FlatIndex::scan(const float* queries, std::size_t nq, std::size_t row_begin, std::size_t row_end,
                     Sink& sink) const {
  const std::size_t rb = codec_.row_bytes();
  const bool packed = nq >= kPackMinQueries;
  const Kernels& kt = *kernels_;
  const StorageKernels& sk = kt.storage[std::size_t(opts_.storage)];
  // Packed blocks are float32, so their size in cache is 4 * dim bytes per row.
  const std::size_t block = packed ? rows_per_block(4 * dim_, kt.panel_rows) : rows_per_block(rb, 8);
  std::vector<float> buffer(std::min(kQueryTile, nq) * block);
  std::vector<float> panels(packed ? packed_floats(kt, block, dim_) : 0);
  // The queries are packed once; each block's tiles read their group's slice.
  std::vector<float> packed_queries(packed ? packed_query_floats(kt, nq, dim_) : 0);
  if (packed) kt.pack_queries(queries, nq, dim_, packed_queries.data());
  const std::uint8_t* codes = codes_.data();
  const float* norms = sqnorms_.data();
  const bool l2 = opts_.metric == Metric::l2;
  for (std::size_t r0 = row_begin; r0 < row_end; r0 += block) {
    const std::size_t nb = std::min(block, row_end - r0);
    if (packed) sk.pack(codes + r0 * rb, nb, dim_, panels.data());
    for (std::size_t q0 = 0; q0 < nq; q0 += kQueryTile) {
      const std::size_t nt = std::min(kQueryTile, nq - q0);
      float* buf = buffer.data();
      if (packed)
        kt.dot_packed(packed_queries.data() + q0 * dim_, nt, panels.data(), nb, dim_, buf, block);
      else
        codec_.dot_block(queries + q0 * dim_, nt, codes + r0 * rb, nb, buf, block);
      for (std::size_t a = 0; a < nt; ++a) {
        float* s = buf + a * block;
        // Ranking l2 by 2<q,x> - ||x||^2 (= ||q||^2 - ||q - x||^2) keeps "higher is better".
        if (l2)
          for (std::size_t j = 0; j < nb; ++j) s[j] = 2.0f * s[j] - norms[r0 + j];
        sink.consume(q0 + a, r0, s, nb);
      }
    }
  }
}

std::vector<std::size_t> FlatIndex::allowed_rows(const IdFilter& filter) const {
  std::vector<std::size_t> rows;
  rows.reserve(filter.ids.size());
  for (idx_t id : filter.ids) {
    auto it = row_of_.find(id);
    if (it != row_of_.end()) rows.push_back(it->second);
  }
  std::sort(rows.begin(), rows.end());
  return rows;
}

float FlatIndex::exact_score(const float* q, std::size_t row) const noexcept {
  // Float32 originals when kept, else the stored row; l2 is computed directly, never expanded.
  const bool l2 = opts_.metric == Metric::l2;
  if (opts_.rerank == 0) {
    const std::uint8_t* code = codes_.data() + row * codec_.row_bytes();
    return l2 ? -codec_.l2sq(q, code) : codec_.dot(q, code);
  }
  const float* x = originals_.data() + row * dim_;
  return l2 ? -kernels_->l2sq_f32(q, x, dim_) : kernels_->dot_f32(q, x, dim_);
}

Status FlatIndex::search(const float* queries, std::size_t nq, std::size_t k, float* scores, idx_t* ids,
                         const SearchParams& params) const {
  if (nq == 0) return {};
  Status st = check_search_args(k, scores, ids);
  if (!st.ok()) return st;
  std::vector<float> qstore;
  Result<const float*> prepared = prepare_rows(queries, nq, dim_, opts_.metric, "query", qstore);
  if (!prepared.ok()) return prepared.error();
  const float* q = prepared.value();

  std::shared_lock lock(mutex_);
  st = check_file();
  if (!st.ok()) return st;
  const std::size_t n = ids_.size();
  if (!params.pad) st = check_k_fits(k, n);
  if (!st.ok()) return st;
  const std::size_t cand = opts_.rerank > 0 ? std::min(n, k * opts_.rerank) : k;
  const int threads = resolve_threads(params.num_threads, num_threads_.load());
  const IdFilter* filter = params.filter != nullptr && params.filter->mode != IdFilter::Mode::none ? params.filter : nullptr;
  std::vector<TopK> tops(nq, TopK(cand));
  const std::size_t rb = codec_.row_bytes();

  if (filter != nullptr && filter->mode == IdFilter::Mode::allow && filter->ids.size() * kGatherRatio < n) {
    // Small allow-list: score just those rows.
    const std::vector<std::size_t> rows = allowed_rows(*filter);
    const bool l2 = opts_.metric == Metric::l2;
    parallel_for_chunks(nq, threads, [&](std::size_t qb, std::size_t qe) {
      for (std::size_t qi = qb; qi < qe; ++qi)
        for (std::size_t row : rows) {
          const float dot = codec_.dot(q + qi * dim_, codes_.data() + row * rb);
          tops[qi].push(l2 ? 2.0f * dot - sqnorms_[row] : dot, ids_[row]);
        }
    });
  } else if (threads == 1 || n < 2 * kMinRowsPerTask || (nq >= std::size_t(threads) && nq < kPackMinQueries)) {
    // Parallel over queries: each task passes over the data once for its queries.
    const std::size_t per = std::clamp<std::size_t>((nq + threads - 1) / threads, 1, kMaxQueriesPerTask);
    const std::size_t tasks = (nq + per - 1) / per;
    parallel_for(tasks, threads, [&](std::size_t t) {
      const std::size_t a = t * per, m = std::min(nq, a + per) - a;
      TopKSink sink{tops.data() + a, ids_.data(), filter};
      scan(q + a * dim_, m, 0, n, sink);
    });
  } else {
    // Fewer queries than threads, or a batch that packs its blocks: split the rows (so each block
    // is packed once, not once per thread) and merge the per-chunk top-k lists.
    const std::size_t chunks = std::min<std::size_t>(std::size_t(threads), (n + kMinRowsPerTask - 1) / kMinRowsPerTask);
    const std::size_t per = (n + chunks - 1) / chunks;
    std::vector<std::vector<TopK>> part(chunks, std::vector<TopK>(nq, TopK(cand)));
    parallel_for(chunks, threads, [&](std::size_t c) {
      TopKSink sink{part[c].data(), ids_.data(), filter};
      scan(q, nq, c * per, std::min(n, (c + 1) * per), sink);
    });
    for (std::size_t qi = 0; qi < nq; ++qi)
      for (std::size_t c = 0; c < chunks; ++c) tops[qi].merge(part[c][qi]);
  }

  // Final scores: exact re-rank from originals, and l2 distances computed directly (the block
  // scan's expansion loses precision for near neighbours).
  const bool l2 = opts_.metric == Metric::l2;
  const bool rescore = opts_.rerank > 0 || l2;
  if (params.stats != nullptr) {
    const bool gathered = filter != nullptr && filter->mode == IdFilter::Mode::allow && filter->ids.size() * kGatherRatio < n;
    const std::size_t scanned = gathered ? allowed_rows(*filter).size() : n;
    params.stats->distances.fetch_add(nq * (scanned + (rescore ? cand : 0)), std::memory_order_relaxed);
  }
  parallel_for_chunks(nq, rescore ? threads : 1, [&](std::size_t qb, std::size_t qe) {
    std::vector<float> cs(cand);
    std::vector<idx_t> ci(cand);
    for (std::size_t qi = qb; qi < qe; ++qi) {
      TopK& t = tops[qi];
      if (rescore) {
        t.write_sorted(cs.data(), ci.data(), -TopK::kInf);
        TopK final_top(k);
        for (std::size_t j = 0; j < cand && ci[j] != kNoId; ++j)
          final_top.push(exact_score(q + qi * dim_, row_of_.at(ci[j])), ci[j]);
        final_top.write_sorted(scores + qi * k, ids + qi * k, -TopK::kInf);
      } else {
        t.write_sorted(scores + qi * k, ids + qi * k, -TopK::kInf);
      }
      // Internal scores are "higher is better"; l2 reports distances, +inf for empty slots.
      if (l2)
        for (std::size_t j = 0; j < k; ++j) scores[qi * k + j] = -scores[qi * k + j];
    }
  });
  return {};
}

Status FlatIndex::range_search(const float* queries, std::size_t nq, float radius, RangeResult* out,
                               const SearchParams& params) const {
  Status st = check_range_args(radius, out);
  if (!st.ok()) return st;
  std::vector<float> qstore;
  Result<const float*> prepared = prepare_rows(queries, nq, dim_, opts_.metric, "query", qstore);
  if (!prepared.ok()) return prepared.error();
  const float* q = prepared.value();
  const bool l2 = opts_.metric == Metric::l2;
  // Block scores reach the threshold with a small slack for rounding (and for the stored form's
  // error), then each hit is confirmed with its exact score.
  std::vector<float> thresholds(nq);
  for (std::size_t i = 0; i < nq; ++i) {
    const float qn = l2 ? float(sqnorm(q + i * dim_, dim_)) : 0.0f;
    const float thr = l2 ? qn - radius : radius;
    thresholds[i] = thr - (1e-3f * (std::fabs(thr) + qn) + 1e-6f);
  }
  std::vector<std::vector<std::pair<float, idx_t>>> hits(nq);
  std::shared_lock lock(mutex_);
  st = check_file();
  if (!st.ok()) return st;
  const std::size_t n = ids_.size();
  const int threads = resolve_threads(params.num_threads, num_threads_.load());
  const IdFilter* filter = params.filter != nullptr && params.filter->mode != IdFilter::Mode::none ? params.filter : nullptr;
  parallel_for_chunks(nq, threads, [&](std::size_t qb, std::size_t qe) {
    for (std::size_t a = qb; a < qe; a += kMaxQueriesPerTask) {
      const std::size_t m = std::min(qe, a + kMaxQueriesPerTask) - a;
      std::vector<std::vector<std::pair<float, idx_t>>> local(m);  // by query number within this group
      RangeSink sink{thresholds.data() + a, ids_.data(), filter, &local};
      scan(q + a * dim_, m, 0, n, sink);
      for (std::size_t i = 0; i < m; ++i) {
        auto& h = hits[a + i];
        for (auto& [s, id] : local[i]) {
          const float exact = exact_score(q + (a + i) * dim_, row_of_.at(id));
          if (l2 ? -exact <= radius : exact >= radius) h.emplace_back(exact, id);
        }
        std::sort(h.begin(), h.end(),
                  [](const auto& x, const auto& y) { return x.first > y.first || (x.first == y.first && x.second < y.second); });
      }
    }
  });
  write_range_result(opts_.metric, hits, out);
  return {};
}

Status FlatIndex::score_ids(const float* query, const idx_t* ids, std::size_t n, float* scores) const {
  return score_ids_batch(query, 1, ids, n, scores);
}

Status FlatIndex::score_ids_prepared(const float* query, const idx_t* ids, std::size_t n, float* scores) const {
  return score_prepared(query, 1, ids, n, scores);
}

Status FlatIndex::score_ids_batch(const float* queries, std::size_t nq, const idx_t* ids, std::size_t n,
                                  float* scores) const {
  if (nq == 0 || n == 0) return {};
  std::vector<float> qstore;
  Result<const float*> prepared = prepare_rows(queries, nq, dim_, opts_.metric, "query", qstore);
  if (!prepared.ok()) return prepared.error();
  return score_prepared(prepared.value(), nq, ids, n, scores);
}

Status FlatIndex::score_prepared(const float* q, std::size_t nq, const idx_t* ids, std::size_t n,
                                 float* scores) const {
  if (nq == 0 || n == 0) return {};
  if (ids == nullptr) return make_error(ErrorCode::invalid_argument, "ids is null");
  std::shared_lock lock(mutex_);
  Status st = check_file();
  if (!st.ok()) return st;
  std::vector<std::size_t> rows;
  st = lookup_rows(ids, n, row_of_, rows);
  if (!st.ok()) return st;
  if (opts_.metric == Metric::l2) {
    // Direct distances (no norm expansion), tile by tile so each row serves every query from cache.
    const std::size_t tile = std::max<std::size_t>(1, 16384 / dim_);
    for (std::size_t j0 = 0; j0 < n; j0 += tile)
      for (std::size_t i = 0; i < nq; ++i)
        for (std::size_t j = j0; j < std::min(n, j0 + tile); ++j) scores[i * n + j] = -exact_score(q + i * dim_, rows[j]);
    return {};
  }
  // Gather the rows exact scores use into one contiguous block, then one register-tiled pass.
  const bool originals = opts_.rerank > 0;
  const Codec codec = originals ? Codec(Storage::f32, dim_, codec_.isa()) : codec_;
  const std::size_t rb = codec.row_bytes();
  std::vector<std::uint8_t> gathered(n * rb);
  for (std::size_t j = 0; j < n; ++j) {
    const std::uint8_t* src = originals ? reinterpret_cast<const std::uint8_t*>(originals_.data() + rows[j] * dim_)
                                        : codes_.data() + rows[j] * rb;
    std::memcpy(&gathered[j * rb], src, rb);
  }
  codec.dot_block(q, nq, gathered.data(), n, scores, n);
  return {};
}

Status FlatIndex::reconstruct(const idx_t* ids, std::size_t n, float* out) const {
  if (n == 0) return {};
  if (out == nullptr) return make_error(ErrorCode::invalid_argument, "output is null");
  std::shared_lock lock(mutex_);
  Status st = check_file();
  if (!st.ok()) return st;
  std::vector<std::size_t> rows;
  st = lookup_rows(ids, n, row_of_, rows);
  if (!st.ok()) return st;
  // Only the requested rows are read, so a mapped index stays mapped.
  const std::size_t rb = codec_.row_bytes();
  for (std::size_t j = 0; j < n; ++j) {
    if (opts_.rerank > 0)
      std::memcpy(out + j * dim_, originals_.data() + rows[j] * dim_, dim_ * sizeof(float));
    else
      codec_.decode(codes_.data() + rows[j] * rb, out + j * dim_);
  }
  return {};
}

std::optional<float> FlatIndex::max_norm() const noexcept {
  std::shared_lock lock(mutex_);
  // Rounded up by a relative 1e-6 so float rounding of stored rows cannot exceed it.
  return float(std::sqrt(max_sq_norm_) * (1 + 1e-6));
}

}  // namespace vsr
