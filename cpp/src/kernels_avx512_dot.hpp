// Single-query row scans built on the AVX-512 dot-product instructions: vpdpwssd (AVX512_VNNI)
// for int8 rows and vdpbf16ps (AVX512_BF16) for bf16 rows. The float32 query is converted once
// per call (a block of hundreds of rows) into the instruction's input type, a chunk of
// kQueryChunk dimensions at a time on the stack, and every row is then read straight from
// storage with no widening to float32: one load and one or two dot-product instructions per 32
// dimensions instead of a widen, a convert and an FMA per 16.
//
// Include only from files compiled with -mavx512vnni (int8) and -mavx512bf16 (bf16).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels_avx512.hpp"

namespace vsr::avx512 {

// Query dimensions converted at a time. Bounds the int32 lanes of the int8 kernel: a lane takes
// 2 products of at most 127 * 32767 per 128 dimensions, so 2 * 16 * 4.2e6 < 2^31 per chunk.
inline constexpr std::size_t kQueryChunk = 2048;

// A row chunk's prefetch distance in a contiguous scan: generic::kScanPrefetchBytes when the query
// is one chunk (the rows are one stream); whole rows ahead, at least that far, when it is processed
// in chunks (d > kQueryChunk), so that the same chunk of a later row is fetched.
inline std::size_t prefetch_distance(std::size_t rb, std::size_t d) noexcept {
  if (d <= kQueryChunk) return generic::kScanPrefetchBytes;
  return (generic::kScanPrefetchBytes + rb - 1) / rb * rb;
}

// Mask of the first m (< 32) of 32 lanes.
inline __mmask32 first_lanes(std::size_t m) noexcept { return __mmask32((std::uint64_t(1) << m) - 1); }

// Adds four rows' score vectors together horizontally and writes out[j] = prev + sum * scale_j,
// where prev is out[j] after the first chunk (the chunks of one long query add up) and 0 before.
inline void finish4(const __m512* acc, std::size_t count, float* out, const float* scales, bool add) noexcept {
  float s[4];
  Avx512Traits::reduce4(acc[0], count > 1 ? acc[1] : _mm512_setzero_ps(), count > 2 ? acc[2] : _mm512_setzero_ps(),
                        count > 3 ? acc[3] : _mm512_setzero_ps(), s);
  for (std::size_t r = 0; r < count; ++r) out[r] = (add ? out[r] : 0.0f) + s[r] * scales[r];
}

// Rows' score vectors collected four at a time, each four written with one reduction (finish4).
class Pending4 {
 public:
  explicit Pending4(bool add) noexcept : add_(add) {}
  // Row j's score vector and scale; writes rows j-3..j once four are pending.
  void push(__m512 sum, float scale, float* out, std::size_t j) noexcept {
    sums_[count_] = sum;
    scales_[count_] = scale;
    if (++count_ == 4) {
      finish4(sums_, 4, out + j - 3, scales_, add_);
      count_ = 0;
    }
  }
  // Writes the rows still pending, the last of n.
  void flush(float* out, std::size_t n) noexcept {
    if (count_ > 0) finish4(sums_, count_, out + n - count_, scales_, add_);
  }

 private:
  __m512 sums_[4];
  float scales_[4];
  std::size_t count_ = 0;
  bool add_;
};

#if defined(__AVX512VNNI__)
// int8 rows (codes times a per-row scale) against the query quantised to int16 with its own
// scale max|q| / 32767: vpdpwssd multiplies 32 sign-extended codes by 32 query values and adds
// pairs into 16 int32 lanes, exactly. The only rounding is the query's, at most half a step
// (max|q| / 65534) per dimension, so a score is within max|q| / 65534 * sum|x_i| of the float
// path; sixteen-bit query values keep that four orders below the int8 storage error itself,
// which is why this does not quantise the query to 8 bits for vpdpbusd: the scan is
// memory-bound either way, and the 8-bit query would cost ranking accuracy.

// max|q| (zero-masked forms: see Avx512Traits::fold).
inline float abs_max(const float* q, std::size_t d) noexcept {
  const __m512i no_sign = _mm512_set1_epi32(0x7FFFFFFF);
  __m512i vmax = _mm512_setzero_si512();
  std::size_t i = 0;
  for (; i + 16 <= d; i += 16)
    vmax = _mm512_maskz_max_epu32(0xFFFF, vmax, _mm512_and_si512(_mm512_loadu_si512(q + i), no_sign));
  alignas(64) float lanes[16];
  _mm512_store_si512(lanes, vmax);  // non-negative floats order as their bit patterns
  float amax = *std::max_element(lanes, lanes + 16);
  for (; i < d; ++i) amax = std::max(amax, q[i] < 0 ? -q[i] : q[i]);
  return amax;
}

// qi[k] = round(q[k] * 32767 / amax) for k < len, zeros up to the next multiple of 32 (so a
// masked row tail meets zero query values). qi is 64-byte aligned.
inline void quantize_int16(const float* q, std::size_t len, float amax, std::int16_t* qi) noexcept {
  const __m512 inv = _mm512_set1_ps(32767.0f / amax);
  for (std::size_t k = 0; k < (len + 31) / 32 * 32; k += 16) {
    const __mmask16 m = k >= len ? 0 : len - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (len - k)) - 1);
    const __m512i v = _mm512_maskz_cvtps_epi32(0xFFFF, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, q + k), inv));
    _mm256_store_si256(reinterpret_cast<__m256i*>(qi + k), _mm512_maskz_cvtepi32_epi16(0xFFFF, v));
  }
}

// Dimensions [c0, c0 + len) of every row against qi (those dimensions of the quantised query):
// out[j] = sum * scale_j * qscale, added to out[j] when c0 > 0 (the chunks of a long query).
template <class Rows>
void int8_chunk_vnni(const std::int16_t* qi, float qscale, const Rows& rows, std::size_t n, std::size_t d,
                     std::size_t c0, std::size_t len, float* out) noexcept {
  const std::size_t rb = row_bytes(Storage::int8, d), scale_at = (d + 3) / 4 * 4;
  const std::size_t ahead = prefetch_distance(rb, d), full = len / 32 * 32;
  const __mmask32 tail = first_lanes(len - full);
  Pending4 pending(c0 > 0);
  for (std::size_t j = 0; j < n; ++j) {
    const std::uint8_t* row = rows(j);
    const std::int8_t* x = reinterpret_cast<const std::int8_t*>(row) + c0;
    // The chunk's bytes, and the scale after the last chunk.
    const std::size_t chunk_bytes = c0 + len == d ? rb - c0 : len;
    if constexpr (!Rows::kStream) rows.prefetch_next(j, c0, chunk_bytes);
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                      _mm512_setzero_si512()};
    auto step = [&](__m512i& a, std::size_t k) {
      const __m512i xv =
          _mm512_maskz_cvtepi8_epi16(~__mmask32(0), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k)));
      a = _mm512_dpwssd_epi32(a, xv, _mm512_load_si512(qi + k));
    };
    const std::uint8_t* ahead_x = row + c0 + ahead;  // this chunk of a row ahead (see prefetch_distance)
    std::size_t k = 0;
    for (; k + 128 <= full; k += 128) {
      if constexpr (Rows::kStream) generic::prefetch_range(ahead_x + k, 128);
      for (std::size_t u = 0; u < 4; ++u) step(acc[u], k + 32 * u);
    }
    if constexpr (Rows::kStream) generic::prefetch_range(ahead_x + k, chunk_bytes - k);
    for (; k < full; k += 32) step(acc[0], k);
    if (tail) {
      const __m512i xv = _mm512_maskz_cvtepi8_epi16(~__mmask32(0), _mm256_maskz_loadu_epi8(tail, x + k));
      acc[1] = _mm512_dpwssd_epi32(acc[1], xv, _mm512_load_si512(qi + k));
    }
    const __m512i total = _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]));
    float scale;
    std::memcpy(&scale, row + scale_at, sizeof scale);
    pending.push(to_float(total), scale * qscale, out, j);
  }
  pending.flush(out, n);
}

// Rows: generic::ContiguousRows (a flat scan) or generic::GatheredRows (a graph walk). The query
// is quantised a chunk at a time on the stack.
template <class Rows>
void int8_scan_vnni(const float* q, const Rows& rows, std::size_t n, std::size_t d, float* out) noexcept {
  const float amax = abs_max(q, d);
  if (!(amax > 0.0f)) {
    std::fill(out, out + n, 0.0f);
    return;
  }
  alignas(64) std::int16_t qi[kQueryChunk];
  for (std::size_t c0 = 0; c0 < d; c0 += kQueryChunk) {
    const std::size_t len = std::min(kQueryChunk, d - c0);
    quantize_int16(q + c0, len, amax, qi);
    int8_chunk_vnni(qi, amax / 32767.0f, rows, n, d, c0, len, out);
  }
}

// The prepared query (StorageKernels::prepare): the scale max|q| / 32767 (0 for a zero query) in
// the first 64 bytes, then the whole query quantised to int16, zero-padded to a multiple of 32.
inline std::size_t int8_prepared_bytes(std::size_t d) noexcept { return 64 + (d + 31) / 32 * 32 * 2; }

inline void int8_prepare_vnni(const float* q, std::size_t d, std::uint8_t* out) noexcept {
  const float amax = abs_max(q, d);
  const float qscale = amax > 0.0f ? amax / 32767.0f : 0.0f;
  std::memcpy(out, &qscale, sizeof qscale);
  auto* qi = reinterpret_cast<std::int16_t*>(out + 64);
  if (amax > 0.0f) {
    quantize_int16(q, d, amax, qi);
  } else {
    std::fill(qi, qi + (d + 31) / 32 * 32, std::int16_t(0));
  }
}

inline void int8_gather_prepared_vnni(const std::uint8_t* prepared, const std::uint8_t* base,
                                      const std::uint32_t* slots, std::size_t n, std::size_t d, float* out) noexcept {
  float qscale;
  std::memcpy(&qscale, prepared, sizeof qscale);
  if (!(qscale > 0.0f)) {
    std::fill(out, out + n, 0.0f);
    return;
  }
  const auto* qi = reinterpret_cast<const std::int16_t*>(prepared + 64);
  const generic::GatheredRows rows{base, row_bytes(Storage::int8, d), slots, n};
  for (std::size_t c0 = 0; c0 < d; c0 += kQueryChunk)
    int8_chunk_vnni(qi + c0, qscale, rows, n, d, c0, std::min(kQueryChunk, d - c0), out);
}

// The avx512 kernel set with int8 rows scanned by int8_scan_vnni, labelled isa.
constexpr Kernels vnni_kernels(Isa isa) noexcept {
  Kernels k = generic::make_kernels<Avx512Traits>(isa);
  StorageKernels& int8 = k.storage[std::size_t(Storage::int8)];
  int8.dot_block = &generic::dot_block<Avx512Traits, Storage::int8,
                                       &generic::scan_contiguous<Storage::int8, &int8_scan_vnni<generic::ContiguousRows>>>;
  int8.dot_gather = &generic::scan_gathered<Storage::int8, &int8_scan_vnni<generic::GatheredRows>>;
  int8.prepared_bytes = &int8_prepared_bytes;
  int8.prepare = &int8_prepare_vnni;
  int8.dot_gather_prepared = &int8_gather_prepared_vnni;
  return k;
}
#endif

#if defined(__AVX512BF16__)
// bf16 rows against the query split into two bfloat16 parts, hi = bf16(q) and
// lo = bf16(q - hi): vdpbf16ps multiplies 32 pairs exactly and adds them in float32, once with
// hi and once with lo. The split leaves at most 2^-17 |q_i| of each query value out, so scores
// match the float32-widening path to float32 rounding, not to bfloat16's 8 bits.

// hi/lo[k] for k < len, zeros up to the next multiple of 32; hi and lo are 64-byte aligned.
inline void split_bf16(const float* q, std::size_t len, std::uint16_t* hi, std::uint16_t* lo) noexcept {
  for (std::size_t k = 0; k < (len + 31) / 32 * 32; k += 16) {
    const __mmask16 m = k >= len ? 0 : len - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (len - k)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(m, q + k);
    const __m256bh h = _mm512_cvtneps_pbh(v);
    const __m512 back = _mm512_castsi512_ps(
        _mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, reinterpret_cast<__m256i>(h)), 16));
    const __m256bh l = _mm512_cvtneps_pbh(_mm512_sub_ps(v, back));
    _mm256_store_si256(reinterpret_cast<__m256i*>(hi + k), reinterpret_cast<__m256i>(h));
    _mm256_store_si256(reinterpret_cast<__m256i*>(lo + k), reinterpret_cast<__m256i>(l));
  }
}

// Dimensions [c0, c0 + len) of every row against those of the split query, added to out[j]
// when c0 > 0 (the chunks of a long query).
template <class Rows>
void bf16_chunk_dpbf16(const std::uint16_t* hi, const std::uint16_t* lo, const Rows& rows, std::size_t n,
                       std::size_t d, std::size_t c0, std::size_t len, float* out) noexcept {
  const std::size_t ahead = prefetch_distance(row_bytes(Storage::bf16, d), d), full = len / 32 * 32;
  const __mmask32 tail = first_lanes(len - full);
  Pending4 pending(c0 > 0);
  for (std::size_t j = 0; j < n; ++j) {
    const std::uint16_t* x = reinterpret_cast<const std::uint16_t*>(rows(j)) + c0;
    if constexpr (!Rows::kStream) rows.prefetch_next(j, 2 * c0, 2 * len);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    auto step = [&](__m512& a, __m512& b, __m512i xv, std::size_t k) {
      const __m512bh xb = reinterpret_cast<__m512bh>(xv);
      a = _mm512_dpbf16_ps(a, xb, reinterpret_cast<__m512bh>(_mm512_load_si512(hi + k)));
      b = _mm512_dpbf16_ps(b, xb, reinterpret_cast<__m512bh>(_mm512_load_si512(lo + k)));
    };
    const std::uint8_t* ahead_x = rows(j) + 2 * c0 + ahead;  // see prefetch_distance
    std::size_t k = 0;
    for (; k + 64 <= full; k += 64) {
      if constexpr (Rows::kStream) generic::prefetch_range(ahead_x + 2 * k, 128);
      step(acc[0], acc[1], _mm512_loadu_si512(x + k), k);
      step(acc[2], acc[3], _mm512_loadu_si512(x + k + 32), k + 32);
    }
    if constexpr (Rows::kStream) generic::prefetch_range(ahead_x + 2 * k, 2 * (len - k));
    for (; k < full; k += 32) step(acc[0], acc[1], _mm512_loadu_si512(x + k), k);
    if (tail) step(acc[2], acc[3], _mm512_maskz_loadu_epi16(tail, x + k), k);
    pending.push(_mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3])), 1.0f, out, j);
  }
  pending.flush(out, n);
}

// A scan that splits the query a chunk at a time on the stack.
template <class Rows>
void bf16_scan_dpbf16(const float* q, const Rows& rows, std::size_t n, std::size_t d, float* out) noexcept {
  alignas(64) std::uint16_t hi[kQueryChunk], lo[kQueryChunk];
  for (std::size_t c0 = 0; c0 < d; c0 += kQueryChunk) {
    const std::size_t len = std::min(kQueryChunk, d - c0);
    split_bf16(q + c0, len, hi, lo);
    bf16_chunk_dpbf16(hi, lo, rows, n, d, c0, len, out);
  }
}

// The prepared query (StorageKernels::prepare): hi, then lo, each padded to a multiple of 32.
inline std::size_t bf16_prepared_bytes(std::size_t d) noexcept { return 4 * ((d + 31) / 32 * 32); }

inline void bf16_prepare_dpbf16(const float* q, std::size_t d, std::uint8_t* out) noexcept {
  auto* hi = reinterpret_cast<std::uint16_t*>(out);
  split_bf16(q, d, hi, hi + (d + 31) / 32 * 32);
}

inline void bf16_gather_prepared_dpbf16(const std::uint8_t* prepared, const std::uint8_t* base,
                                        const std::uint32_t* slots, std::size_t n, std::size_t d,
                                        float* out) noexcept {
  const auto* hi = reinterpret_cast<const std::uint16_t*>(prepared);
  const std::uint16_t* lo = hi + (d + 31) / 32 * 32;
  const generic::GatheredRows rows{base, row_bytes(Storage::bf16, d), slots, n};
  for (std::size_t c0 = 0; c0 < d; c0 += kQueryChunk)
    bf16_chunk_dpbf16(hi + c0, lo + c0, rows, n, d, c0, std::min(kQueryChunk, d - c0), out);
}
#endif

}  // namespace vsr::avx512
