// AVX2 + FMA + F16C kernels. Compiled with -mavx2 -mfma -mf16c; only called when the CPU has them.
#include <immintrin.h>

#include "kernels_generic.hpp"

namespace vsr {
namespace {

struct Avx2Traits {
  using V = __m256;
  // Tiles: 3 queries x 4 rows = 12 accumulators + 3 query vectors + 1 row vector (dot_block);
  // packed: 6 queries x 2 row vectors = 12 accumulators + 2 row vectors + 1 broadcast. 16 ymm.
  static constexpr std::size_t W = 8, NQ = 3, NR = 4, PQ = 6, PV = 2;
  static V zero() noexcept { return _mm256_setzero_ps(); }
  static V set1(float x) noexcept { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) noexcept { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) noexcept { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) noexcept { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) noexcept { return _mm256_mul_ps(a, b); }
  static void store(float* p, V v) noexcept { _mm256_storeu_ps(p, v); }
  static V load_f32(const float* p) noexcept { return _mm256_loadu_ps(p); }
  static V load_f16(const std::uint16_t* p) noexcept {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static V load_bf16(const std::uint16_t* p) noexcept {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static V load_i8(const std::int8_t* p) noexcept {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // 8 x 8 transpose: pairs, then quads within 128-bit lanes, then the lanes (24 shuffles).
  static void transpose(V* v) noexcept {
    V a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
      a[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
      a[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
    }
    // b[4i + c], lane L: value 4L + c of rows 4i .. 4i + 3.
    for (int i = 0; i < 8; i += 4) {
      b[i] = _mm256_shuffle_ps(a[i], a[i + 2], 0x44);
      b[i + 1] = _mm256_shuffle_ps(a[i], a[i + 2], 0xEE);
      b[i + 2] = _mm256_shuffle_ps(a[i + 1], a[i + 3], 0x44);
      b[i + 3] = _mm256_shuffle_ps(a[i + 1], a[i + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {
      v[c] = _mm256_permute2f128_ps(b[c], b[4 + c], 0x20);
      v[4 + c] = _mm256_permute2f128_ps(b[c], b[4 + c], 0x31);
    }
  }
  // Four horizontal sums at once: three hadds and one lane fold instead of four full reductions.
  static void reduce4(V a, V b, V c, V d, float* out) noexcept {
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
  }
};

const Kernels kAvx2 = generic::make_kernels<Avx2Traits>(Isa::avx2);

}  // namespace

namespace detail {
const Kernels* avx2_kernels() noexcept { return &kAvx2; }
}  // namespace detail

}  // namespace vsr
