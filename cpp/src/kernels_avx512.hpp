// The AVX-512 (F/BW/VL/DQ) traits for kernels_generic.hpp, shared by every AVX-512 kernel set
// (avx512, avx512vnni, avx512bf16). Include only from files compiled with those flags.
#pragma once

#include <immintrin.h>

#include "kernels_generic.hpp"

namespace vsr::avx512 {

struct Avx512Traits {
  using V = __m512;
  // Tiles: 4 queries x 4 rows = 16 accumulators + 4 query vectors + 1 row vector (dot_block);
  // packed: 14 queries x 2 row vectors = 28 accumulators + 2 row vectors + 1 broadcast, of 32
  // zmm (157 -> 170 GFLOP/s over 12 x 2 on a Xeon core, with the queries packed).
  static constexpr std::size_t W = 16, NQ = 4, NR = 4, PQ = 14, PV = 2;
  static V zero() noexcept { return _mm512_setzero_ps(); }
  static V set1(float x) noexcept { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) noexcept { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) noexcept { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) noexcept { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) noexcept { return _mm512_mul_ps(a, b); }
  static void store(float* p, V v) noexcept { _mm512_storeu_ps(p, v); }
  static V load_f32(const float* p) noexcept { return _mm512_loadu_ps(p); }
  static V load_f16(const std::uint16_t* p) noexcept {
    return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V load_bf16(const std::uint16_t* p) noexcept {
    const __mmask16 all = 0xFFFF;  // zero-masked forms: see fold()
    __m512i w = _mm512_maskz_cvtepu16_epi32(all, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, w, 16));
  }
  static V load_i8(const std::int8_t* p) noexcept {
    const __mmask16 all = 0xFFFF;  // zero-masked forms: see fold()
    __m512i w = _mm512_maskz_cvtepi8_epi32(all, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_maskz_cvtepi32_ps(all, w);
  }
  // 16 x 16 transpose: pairs interleaved within 128-bit lanes, then quads, then the 4 x 4 grid of
  // 128-bit lanes in two rounds of lane shuffles (64 shuffles for 256 floats; zero-masked forms:
  // see fold()).
  static void transpose(V* v) noexcept {
    V a[16], b[16];
    for (int i = 0; i < 16; i += 2) {
      a[i] = _mm512_maskz_unpacklo_ps(0xFFFF, v[i], v[i + 1]);
      a[i + 1] = _mm512_maskz_unpackhi_ps(0xFFFF, v[i], v[i + 1]);
    }
    // b[4i + c], lane L: value 4L + c of rows 4i .. 4i + 3.
    for (int i = 0; i < 16; i += 4) {
      b[i] = _mm512_maskz_shuffle_ps(0xFFFF, a[i], a[i + 2], 0x44);
      b[i + 1] = _mm512_maskz_shuffle_ps(0xFFFF, a[i], a[i + 2], 0xEE);
      b[i + 2] = _mm512_maskz_shuffle_ps(0xFFFF, a[i + 1], a[i + 3], 0x44);
      b[i + 3] = _mm512_maskz_shuffle_ps(0xFFFF, a[i + 1], a[i + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {
      const V u0 = _mm512_maskz_shuffle_f32x4(0xFFFF, b[c], b[4 + c], 0x88), u1 = _mm512_maskz_shuffle_f32x4(0xFFFF, b[c], b[4 + c], 0xDD);
      const V u2 = _mm512_maskz_shuffle_f32x4(0xFFFF, b[8 + c], b[12 + c], 0x88), u3 = _mm512_maskz_shuffle_f32x4(0xFFFF, b[8 + c], b[12 + c], 0xDD);
      v[c] = _mm512_maskz_shuffle_f32x4(0xFFFF, u0, u2, 0x88);
      v[8 + c] = _mm512_maskz_shuffle_f32x4(0xFFFF, u0, u2, 0xDD);
      v[4 + c] = _mm512_maskz_shuffle_f32x4(0xFFFF, u1, u3, 0x88);
      v[12 + c] = _mm512_maskz_shuffle_f32x4(0xFFFF, u1, u3, 0xDD);
    }
  }
  // Zero-masked forms throughout: GCC 12 builds the plain casts, extracts and conversions from an
  // "undefined register" idiom (__Y = __Y) that trips -W(maybe-)uninitialized; the all-ones
  // zero-masked instruction has no such operand, computes the same and costs the same.
  static __m256 fold(V v) noexcept {
    return _mm256_add_ps(_mm512_maskz_extractf32x8_ps(0xFF, v, 0), _mm512_maskz_extractf32x8_ps(0xFF, v, 1));
  }
  // Fold each 512-bit sum to 256 bits, then three hadds and one lane fold for all four.
  static void reduce4(V a, V b, V c, V d, float* out) noexcept {
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(fold(a), fold(b)), _mm256_hadd_ps(fold(c), fold(d)));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
  }
};

// Sum of the 16 int32 lanes of v, as a float vector's lanes for reduce4 (exact up to 2^24 per
// lane, and the kernels keep lane sums far below 2^31).
inline __m512 to_float(__m512i v) noexcept { return _mm512_maskz_cvtepi32_ps(0xFFFF, v); }

}  // namespace vsr::avx512
