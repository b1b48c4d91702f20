// Storage codecs: how a float32 vector is kept in memory (f32, f16, bf16, int8) and how a float32
// query is scored against the stored form. Shared by every index kind (flat, graph).
//
// Row layouts (one row per vector, rows contiguous, row_bytes(storage, dim) apart):
//   f32   dim x float32
//   f16   dim x IEEE binary16
//   bf16  dim x bfloat16 (the top 16 bits of a float32, rounded to nearest even)
//   int8  round_up(dim, 4) x int8 codes, then one float32 scale: x[i] ~= scale * code[i].
//         Symmetric per-vector scale = max|x| / 127, so no training pass is needed, rows can be
//         added and removed one at a time, and a row is decoded without any shared state. A
//         per-dimension scale (faiss SQ8) fits skewed dimensions better but needs a training set and
//         goes stale as the data changes; with exact re-rank the per-vector scale reaches the same
//         recall (see benchmarks/index/bench_exact.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "vsr/common.hpp"
#include "vsr/simd.hpp"

namespace vsr {

enum class Storage : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2, int8 = 3 };
inline constexpr std::size_t kNumStorages = 4;

std::string_view storage_name(Storage s) noexcept;
std::optional<Storage> storage_from_name(std::string_view name) noexcept;

// Bytes of one encoded row.
constexpr std::size_t row_bytes(Storage s, std::size_t dim) noexcept {
  switch (s) {
    case Storage::f32: return 4 * dim;
    case Storage::f16:
    case Storage::bf16: return 2 * dim;
    case Storage::int8: return (dim + 3) / 4 * 4 + 4;
  }
  return 0;
}

// Scalar conversions (round to nearest even); the kernels use the CPU's own where it has them.
std::uint16_t float_to_half(float x) noexcept;
float half_to_float(std::uint16_t h) noexcept;
std::uint16_t float_to_bf16(float x) noexcept;
inline float bf16_to_float(std::uint16_t b) noexcept {
  std::uint32_t u = std::uint32_t(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

struct StorageKernels;

// Encoder/decoder and scoring functions for one storage kind, dimension and kernel set. Cheap to
// copy; the kernel table is chosen once at construction.
class Codec {
 public:
  // An isa that is not available here falls back to scalar (isa() tells which is used); the
  // default is default_isa().
  Codec(Storage storage, std::size_t dim, Isa isa);
  Codec(Storage storage, std::size_t dim) : Codec(storage, dim, default_isa()) {}

  Storage storage() const noexcept { return storage_; }
  std::size_t dim() const noexcept { return dim_; }
  std::size_t row_bytes() const noexcept { return vsr::row_bytes(storage_, dim_); }
  Isa isa() const noexcept { return isa_; }

  // Encodes n finite rows (n x dim float32) into n * row_bytes() bytes. Fails, writing nothing
  // useful, when a value does not fit the storage type (|x| > 65504 for f16).
  Status encode(const float* x, std::size_t n, std::uint8_t* out) const;
  // Decodes one row into dim floats.
  void decode(const std::uint8_t* row, float* out) const noexcept;

  // <q, decode(row)> and ||q - decode(row)||^2 for one float32 query.
  float dot(const float* q, const std::uint8_t* row) const noexcept;
  float l2sq(const float* q, const std::uint8_t* row) const noexcept;
  // ||decode(row)||^2 (used for the l2 expansion ||q||^2 - 2<q,x> + ||x||^2 in blocked search).
  float sqnorm(const std::uint8_t* row) const noexcept;
  // out[i * ldo + j] = <queries_i, decode(rows_j)> for i < nq, j < n: queries are row-major
  // nq x dim float32, rows are n contiguous encoded rows. Register-tiled: each loaded row chunk
  // is used by several queries. nq = 1 is the streaming single-query scan.
  void dot_block(const float* queries, std::size_t nq, const std::uint8_t* rows, std::size_t n, float* out,
                 std::size_t ldo) const noexcept;

 private:
  float element(const std::uint8_t* row, std::size_t i) const noexcept;

  Storage storage_;
  std::size_t dim_;
  Isa isa_;
  const StorageKernels* k_;
};

}  // namespace vsr
