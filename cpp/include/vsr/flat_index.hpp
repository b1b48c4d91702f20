// Exact (brute-force) search over stored vectors in f32, f16, bf16 or int8, with optional exact
// re-ranking from float32 originals kept on the side.
//
// Thread safety: every const method (search, range_search, score_ids, save, size) may run
// concurrently with any other; add, remove and set_isa take an exclusive lock, so they are safe
// to call while searches run (each search sees the index either before or after a write, never in
// between). Searches hold a shared lock for their whole duration.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "vsr/codec.hpp"
#include "vsr/index.hpp"
#include "vsr/id_map.hpp"
#include "vsr/io.hpp"
#include "vsr/kernels.hpp"
#include "vsr/mapped_array.hpp"
#include "vsr/parallel.hpp"

namespace vsr {

struct FlatOptions {
  Metric metric = Metric::inner_product;
  Storage storage = Storage::f32;
  // 0: search the stored form only. r >= 1: also keep float32 originals, take the r * k best
  // candidates by the stored form, and re-rank them exactly. Needs a compressed storage.
  std::size_t rerank = 0;
};

class FlatIndex final : public Index {
 public:
  // dim must be positive; cosine normalises stored vectors and queries.
  static Result<std::unique_ptr<FlatIndex>> make(std::size_t dim, const FlatOptions& options);
  // Same as make(dim, {metric}); the caller owns the returned index.
  static Result<FlatIndex*> create(std::size_t dim, Metric metric);
  // Loads a file written by save(). use_mmap serves the vectors from the mapped file (indexes
  // larger than memory work; the first add/remove copies them into memory). verify checks every
  // section checksum while loading.
  static Result<std::unique_ptr<FlatIndex>> load(const std::string& path, bool use_mmap, bool verify);

  std::size_t dim() const noexcept override { return dim_; }
  Metric metric() const noexcept override { return opts_.metric; }
  Storage storage() const noexcept { return opts_.storage; }
  std::size_t rerank() const noexcept { return opts_.rerank; }
  std::size_t size() const noexcept override;
  std::string_view kind_name() const noexcept override { return "flat"; }
  // True while the vectors are served from a mapped file.
  bool is_mapped() const noexcept;

  Status add(const float* vectors, std::size_t n, const idx_t* ids) override;
  Status remove(const idx_t* ids, std::size_t n) override;
  Status search(const float* queries, std::size_t nq, std::size_t k, float* scores, idx_t* ids,
                const SearchParams& params) const override;
  Status range_search(const float* queries, std::size_t nq, float radius, RangeResult* out,
                      const SearchParams& params) const override;
  // Exact scores when float32 is available (f32 storage or rerank), else from the stored form.
  Status score_ids(const float* query, const idx_t* ids, std::size_t n, float* scores) const override;
  Status score_ids_prepared(const float* query, const idx_t* ids, std::size_t n, float* scores) const override;
  // One pass over the gathered rows for all queries (sessions' group refinement).
  Status score_ids_batch(const float* queries, std::size_t nq, const idx_t* ids, std::size_t n,
                         float* scores) const override;
  // Float32 originals when kept (rerank), else the stored rows decoded (exact for f32 storage).
  Status reconstruct(const idx_t* ids, std::size_t n, float* out) const override;
  std::uint64_t generation() const noexcept override { return generation_.load(); }
  // Largest norm ever added (never decreases on remove), over the vectors that exact scores use.
  std::optional<float> max_norm() const noexcept override;
  // Exact when the stored form is float32 (compressed storage ranks approximately, re-ranked or not).
  bool exact_search() const noexcept override { return opts_.storage == Storage::f32; }
  Status save(const std::string& path) const override;

  // Kernel set used by this index (defaults to default_isa()).
  Status set_isa(Isa isa);
  Isa isa() const noexcept;
  // Default worker count of searches (0 = all hardware threads); SearchParams overrides it.
  void set_num_threads(int n) noexcept { num_threads_.store(n < 0 ? 0 : n); }
  int num_threads() const noexcept { return num_threads_.load(); }

 private:
  FlatIndex(std::size_t dim, const FlatOptions& options);

  template <class Sink>
  void scan(const float* queries, std::size_t nq, std::size_t row_begin, std::size_t row_end, Sink& sink) const;
  // Rows of the allow-list ids present in the index, ascending.
  std::vector<std::size_t> allowed_rows(const IdFilter& filter) const;
  float exact_score(const float* q, std::size_t row) const noexcept;
  // score_ids_batch for queries already prepared (checked, normalised for cosine).
  Status score_prepared(const float* q, std::size_t nq, const idx_t* ids, std::size_t n, float* scores) const;
  void make_owned();
  // For an index served from a mapped file: an error when the file changed on disk since it was
  // mapped (reading it then could return other data or kill the process with SIGBUS).
  Status check_file() const;

  std::size_t dim_;
  FlatOptions opts_;
  Codec codec_;
  const Kernels* kernels_;  // for exact float32 scores of originals
  std::atomic<int> num_threads_{0};
  MappedArray<std::uint8_t> codes_;  // size() x codec_.row_bytes()
  MappedArray<float> originals_;     // size() x dim_ float32, only with rerank
  MappedArray<float> sqnorms_;       // ||stored row||^2, only for l2
  MappedArray<idx_t> ids_;           // external id of each row
  IdMap<std::size_t> row_of_;
  idx_t next_id_ = 0;
  double max_sq_norm_ = 0;  // largest squared norm added (never decreases)
  std::atomic<std::uint64_t> generation_{0};
  std::shared_ptr<io::FileReader> file_;  // keeps a mapping alive while views point into it
  mutable std::shared_mutex mutex_;       // searches share, writes exclude
};

}  // namespace vsr
