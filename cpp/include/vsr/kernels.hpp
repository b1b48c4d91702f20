// Distance kernels, one table per ISA. Kernels take pointers + sizes, never check arguments
// (the index API checks once at the edge) and never throw.
#pragma once

#include <cstddef>
#include <cstdint>

#include "vsr/codec.hpp"
#include "vsr/simd.hpp"

namespace vsr {

// How much of each row the caller of a gather kernel requests up front (StorageKernels::dot_gather).
inline constexpr std::size_t kGatherHeadBytes = 512;

// Float32 queries scored against encoded rows of one storage kind (layouts in codec.hpp).
struct StorageKernels {
  // <q, decode(row)> over d dimensions.
  float (*dot)(const float* q, const std::uint8_t* row, std::size_t d) noexcept;
  // ||q - decode(row)||^2, computed directly (no norm expansion), so it is exact for f32 rows.
  float (*l2sq)(const float* q, const std::uint8_t* row, std::size_t d) noexcept;
  // out[i * ldo + j] = <queries_i, decode(row_j)>, i < nq, j < n (see Codec::dot_block).
  void (*dot_block)(const float* queries, std::size_t nq, const std::uint8_t* rows, std::size_t n,
                    std::size_t d, float* out, std::size_t ldo) noexcept;
  // out[i] = <q, decode(base + slots[i] * row_bytes)> for i < n: rows gathered by slot (a graph
  // walk's neighbours, a re-rank's candidates). The caller requests the first kGatherHeadBytes of
  // every row before the call (all rows at once, as soon as it knows them); the kernel requests
  // the rest of the next rows while it scores the current ones.
  void (*dot_gather)(const float* q, const std::uint8_t* base, const std::uint32_t* slots, std::size_t n,
                     std::size_t d, float* out) noexcept;
  // out[i] = ||q - decode(base + slots[i] * row_bytes)||^2, gathered the same way.
  void (*l2sq_gather)(const float* q, const std::uint8_t* base, const std::uint32_t* slots, std::size_t n,
                      std::size_t d, float* out) noexcept;
  // A graph walk scores many small gathers against one query, so it converts the query once into
  // the form this storage's gather kernel reads (int8 rows under VNNI: int16 values and a scale;
  // bf16 rows under AVX512_BF16: two bfloat16 parts; elsewhere float32 as given). prepare writes
  // prepared_bytes(d) bytes to 64-byte aligned memory; dot_gather_prepared then scores exactly
  // as dot_gather does.
  std::size_t (*prepared_bytes)(std::size_t d) noexcept;
  void (*prepare)(const float* q, std::size_t d, std::uint8_t* out) noexcept;
  void (*dot_gather_prepared)(const std::uint8_t* prepared, const std::uint8_t* base, const std::uint32_t* slots,
                              std::size_t n, std::size_t d, float* out) noexcept;
  // Decodes n rows into ceil(n / panel_rows) panels for dot_packed: panel p holds rows
  // [p * panel_rows, ...) dimension-major (packed[k * panel_rows + r]), zero-padded.
  void (*pack)(const std::uint8_t* rows, std::size_t n, std::size_t d, float* packed) noexcept;
};

struct Kernels {
  Isa isa;
  // <a, b> over d float32 values.
  float (*dot_f32)(const float* a, const float* b, std::size_t d) noexcept;
  // ||a - b||^2 over d float32 values.
  float (*l2sq_f32)(const float* a, const float* b, std::size_t d) noexcept;
  // out[i] = <q, base + i*d> for i in [0, n): one query streamed over a contiguous block of rows.
  void (*dot_f32_rows)(const float* q, const float* base, std::size_t n, std::size_t d,
                       float* out) noexcept;
  // out[i] = ||q - row_i||^2 for i in [0, n).
  void (*l2sq_f32_rows)(const float* q, const float* base, std::size_t n, std::size_t d,
                        float* out) noexcept;
  // Indexed by Storage.
  StorageKernels storage[kNumStorages];
  // Rows per packed panel (a multiple of the vector width).
  std::size_t panel_rows;
  // Queries per packed query group: the register tile's query count.
  std::size_t query_group;
  // Packs nq float32 queries into ceil(nq / query_group) groups for dot_packed, each
  // dimension-major (group g: out[g * query_group * d + k * query_group + a]), zero-padded; a
  // tile then broadcasts its queries' values for one dimension from one or two cache lines.
  void (*pack_queries)(const float* queries, std::size_t nq, std::size_t d, float* out) noexcept;
  // GEMM-style batch scoring: out[i * ldo + j] = <query_i, row_j> for nq packed queries and n
  // packed rows. The register tile holds a query group x one panel with no horizontal sums; for
  // large batches, where packing a block once is repaid by every query that visits it.
  void (*dot_packed)(const float* packed_queries, std::size_t nq, const float* packed, std::size_t n,
                     std::size_t d, float* out, std::size_t ldo) noexcept;
};

// Floats needed to pack n rows (whole panels).
inline std::size_t packed_floats(const Kernels& k, std::size_t n, std::size_t d) noexcept {
  return (n + k.panel_rows - 1) / k.panel_rows * k.panel_rows * d;
}

// Floats needed to pack nq queries (whole groups).
inline std::size_t packed_query_floats(const Kernels& k, std::size_t nq, std::size_t d) noexcept {
  return (nq + k.query_group - 1) / k.query_group * k.query_group * d;
}

// Kernel table for an ISA; nullptr when that ISA was not compiled in.
const Kernels* kernels_for(Isa isa) noexcept;
// Kernel table of default_isa().
const Kernels& default_kernels() noexcept;

namespace detail {
const Kernels* scalar_kernels() noexcept;
const Kernels* avx2_kernels() noexcept;
const Kernels* avx512_kernels() noexcept;
const Kernels* avx512vnni_kernels() noexcept;
const Kernels* avx512bf16_kernels() noexcept;
const Kernels* neon_kernels() noexcept;
}  // namespace detail

}  // namespace vsr
