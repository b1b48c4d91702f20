// Distance kernels, one table per ISA. Kernels take pointers + sizes, never check arguments
// (the index API checks once at the edge) and never throw.
#pragma once

#include <cstddef>
#include <cstdint>

#include "vsr/codec.hpp"
#include "vsr/simd.hpp"

namespace vsr {

// Float32 queries scored against encoded rows of one storage kind (layouts in codec.hpp).
struct StorageKernels {
  // <q, decode(row)> over d dimensions.
  float (*dot)(const float* q, const std::uint8_t* row, std::size_t d) noexcept;
  // ||q - decode(row)||^2, computed directly (no norm expansion), so it is exact for f32 rows.
  float (*l2sq)(const float* q, const std::uint8_t* row, std::size_t d) noexcept;
  // out[i * ldo + j] = <queries_i, decode(row_j)>, i < nq, j < n (see Codec::dot_block).
  void (*dot_block)(const float* queries, std::size_t nq, const std::uint8_t* rows, std::size_t n,
                    std::size_t d, float* out, std::size_t ldo) noexcept;
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
};

// Kernel table for an ISA; nullptr when that ISA was not compiled in.
const Kernels* kernels_for(Isa isa) noexcept;
// Kernel table of default_isa().
const Kernels& default_kernels() noexcept;

namespace detail {
const Kernels* scalar_kernels() noexcept;
const Kernels* avx2_kernels() noexcept;
const Kernels* avx512_kernels() noexcept;
const Kernels* neon_kernels() noexcept;
}  // namespace detail

}  // namespace vsr
