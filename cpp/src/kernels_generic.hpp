// The one implementation of every distance kernel, written against a small SIMD "traits" type.
// Each kernels_<isa>.cpp defines its traits (vector type, loads that widen f16/bf16/int8 to
// float32, fma, a 4-way horizontal reduction) and instantiates make_kernels<Traits>() in a
// translation unit compiled with that ISA's flags. Private to the library.
//
// Traits must provide:
//   using V; static constexpr size_t W (floats per vector), NQ x NR (multi-query register tile),
//   PQ x PV (packed tile: PQ queries x PV vectors of rows); store(float*, V);
//   zero(), set1(float), fma(a, b, c) = a*b + c, add(a, b), sub(a, b), mul(a, b),
//   load_f32(const float*), load_f16(const uint16_t*), load_bf16(const uint16_t*),
//   load_i8(const int8_t*) (W values widened to float32), reduce4(a, b, c, d, float out[4]).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "vsr/codec.hpp"
#include "vsr/kernels.hpp"

namespace vsr::generic {

// How one storage kind is read: vector and scalar widening loads, and the per-row scale.
template <Storage S>
struct Row;

template <>
struct Row<Storage::f32> {
  static constexpr std::size_t kBytes = 4;  // per stored value
  static constexpr bool kScaled = false;
  template <class T>
  static typename T::V load(const std::uint8_t* row, std::size_t i) noexcept {
    return T::load_f32(reinterpret_cast<const float*>(row) + i);
  }
  static float get(const std::uint8_t* row, std::size_t i) noexcept {
    return reinterpret_cast<const float*>(row)[i];
  }
  static float scale(const std::uint8_t*, std::size_t) noexcept { return 1.0f; }
};

template <>
struct Row<Storage::f16> {
  static constexpr std::size_t kBytes = 2;  // per stored value
  static constexpr bool kScaled = false;
  template <class T>
  static typename T::V load(const std::uint8_t* row, std::size_t i) noexcept {
    return T::load_f16(reinterpret_cast<const std::uint16_t*>(row) + i);
  }
  static float get(const std::uint8_t* row, std::size_t i) noexcept {
    return half_to_float(reinterpret_cast<const std::uint16_t*>(row)[i]);
  }
  static float scale(const std::uint8_t*, std::size_t) noexcept { return 1.0f; }
};

template <>
struct Row<Storage::bf16> {
  static constexpr std::size_t kBytes = 2;  // per stored value
  static constexpr bool kScaled = false;
  template <class T>
  static typename T::V load(const std::uint8_t* row, std::size_t i) noexcept {
    return T::load_bf16(reinterpret_cast<const std::uint16_t*>(row) + i);
  }
  static float get(const std::uint8_t* row, std::size_t i) noexcept {
    return bf16_to_float(reinterpret_cast<const std::uint16_t*>(row)[i]);
  }
  static float scale(const std::uint8_t*, std::size_t) noexcept { return 1.0f; }
};

template <>
struct Row<Storage::int8> {
  static constexpr std::size_t kBytes = 1;  // per stored value
  static constexpr bool kScaled = true;  // codes are integers; multiply by the row's scale
  template <class T>
  static typename T::V load(const std::uint8_t* row, std::size_t i) noexcept {
    return T::load_i8(reinterpret_cast<const std::int8_t*>(row) + i);
  }
  static float get(const std::uint8_t* row, std::size_t i) noexcept {
    return float(reinterpret_cast<const std::int8_t*>(row)[i]);
  }
  static float scale(const std::uint8_t* row, std::size_t d) noexcept {
    float s;
    std::memcpy(&s, row + (d + 3) / 4 * 4, sizeof s);
    return s;
  }
};

// How far ahead of the row being scored a single-query scan asks for the bytes it will read next.
// A single core's read stream is capped by the cache misses it has in flight; the hardware
// prefetchers alone kept a Xeon core at 11-14 GB/s on a float32 scan, and asking for the line
// 2 KiB ahead of each line read lifted it to 15-17 GB/s (1 and 4 KiB were no better). Past the
// last row the requests are dropped: a prefetch never faults.
inline constexpr std::size_t kScanPrefetchBytes = 2048;

// Requests the cache lines of [p, p + bytes).
inline void prefetch_range(const std::uint8_t* p, std::size_t bytes) noexcept {
  for (std::size_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b);
}

// <q, decode(row)>. Prefetch: also request the bytes kScanPrefetchBytes past those read, one
// request per line, spread through the loop (a burst of a whole long row's requests at once
// waits on the line-fill buffers).
template <class T, Storage S, bool Prefetch = false>
float dot(const float* q, const std::uint8_t* row, std::size_t d) noexcept {
  using R = Row<S>;
  constexpr std::size_t kStep = 4 * T::W * R::kBytes;  // bytes of row per main-loop iteration
  typename T::V acc[4] = {T::zero(), T::zero(), T::zero(), T::zero()};
  std::size_t i = 0;
  for (; i + 4 * T::W <= d; i += 4 * T::W) {
    if constexpr (Prefetch) prefetch_range(row + i * R::kBytes + kScanPrefetchBytes, kStep);
    for (std::size_t u = 0; u < 4; ++u)
      acc[u] = T::fma(T::load_f32(q + i + u * T::W), R::template load<T>(row, i + u * T::W), acc[u]);
  }
  if constexpr (Prefetch)  // the rest of the row (and an int8 row's scale)
    prefetch_range(row + i * R::kBytes + kScanPrefetchBytes, row_bytes(S, d) - i * R::kBytes);
  for (; i + T::W <= d; i += T::W) acc[0] = T::fma(T::load_f32(q + i), R::template load<T>(row, i), acc[0]);
  float part[4];
  T::reduce4(acc[0], acc[1], acc[2], acc[3], part);
  float s = (part[0] + part[1]) + (part[2] + part[3]);
  for (; i < d; ++i) s += q[i] * R::get(row, i);
  return s * R::scale(row, d);
}

template <class T, Storage S>
float l2sq(const float* q, const std::uint8_t* row, std::size_t d) noexcept {
  using R = Row<S>;
  const float sc = R::scale(row, d);
  const typename T::V vsc = T::set1(sc);
  typename T::V acc[4] = {T::zero(), T::zero(), T::zero(), T::zero()};
  auto load_x = [&](std::size_t i) {
    typename T::V x = R::template load<T>(row, i);
    if constexpr (R::kScaled) x = T::mul(x, vsc);
    return x;
  };
  std::size_t i = 0;
  for (; i + 4 * T::W <= d; i += 4 * T::W)
    for (std::size_t u = 0; u < 4; ++u) {
      typename T::V t = T::sub(T::load_f32(q + i + u * T::W), load_x(i + u * T::W));
      acc[u] = T::fma(t, t, acc[u]);
    }
  for (; i + T::W <= d; i += T::W) {
    typename T::V t = T::sub(T::load_f32(q + i), load_x(i));
    acc[0] = T::fma(t, t, acc[0]);
  }
  float part[4];
  T::reduce4(acc[0], acc[1], acc[2], acc[3], part);
  float s = (part[0] + part[1]) + (part[2] + part[3]);
  for (; i < d; ++i) {
    float t = q[i] - sc * R::get(row, i);
    s += t * t;
  }
  return s;
}

// NQ queries x NR rows of dot products, all accumulators in registers: each row chunk is loaded
// once and used NQ times, each query chunk loaded once and used NR times.
template <class T, Storage S, std::size_t NQ, std::size_t NR>
inline void dot_tile(const float* queries, const std::uint8_t* rows, std::size_t rb, std::size_t d, float* out,
                     std::size_t ldo) noexcept {
  using R = Row<S>;
  using V = typename T::V;
  V acc[NQ][NR];
  for (std::size_t a = 0; a < NQ; ++a)
    for (std::size_t r = 0; r < NR; ++r) acc[a][r] = T::zero();
  std::size_t i = 0;
  for (; i + T::W <= d; i += T::W) {
    V qv[NQ];
    for (std::size_t a = 0; a < NQ; ++a) qv[a] = T::load_f32(queries + a * d + i);
    for (std::size_t r = 0; r < NR; ++r) {
      V x = R::template load<T>(rows + r * rb, i);
      for (std::size_t a = 0; a < NQ; ++a) acc[a][r] = T::fma(qv[a], x, acc[a][r]);
    }
  }
  for (std::size_t a = 0; a < NQ; ++a) {
    float sums[NR];
    if constexpr (NR % 4 == 0) {
      for (std::size_t r = 0; r < NR; r += 4) T::reduce4(acc[a][r], acc[a][r + 1], acc[a][r + 2], acc[a][r + 3], sums + r);
    } else {
      for (std::size_t r = 0; r < NR; ++r) {
        float p[4];
        T::reduce4(acc[a][r], T::zero(), T::zero(), T::zero(), p);
        sums[r] = p[0];
      }
    }
    for (std::size_t r = 0; r < NR; ++r) {
      const std::uint8_t* row = rows + r * rb;
      float s = sums[r];
      for (std::size_t j = i; j < d; ++j) s += queries[a * d + j] * R::get(row, j);
      out[a * ldo + r] = s * R::scale(row, d);
    }
  }
}

// Rows of one query tile: full NR tiles, then single rows.
template <class T, Storage S, std::size_t NQ, std::size_t NR>
inline void dot_rows_tiled(const float* queries, const std::uint8_t* rows, std::size_t n, std::size_t rb,
                           std::size_t d, float* out, std::size_t ldo) noexcept {
  std::size_t j = 0;
  for (; j + NR <= n; j += NR) dot_tile<T, S, NQ, NR>(queries, rows + j * rb, rb, d, out + j, ldo);
  for (; j < n; ++j) dot_tile<T, S, NQ, 1>(queries, rows + j * rb, rb, d, out + j, ldo);
}

// One query over n contiguous rows: out[j] = <q, decode(row_j)>, one row at a time with the
// stream prefetched ahead. (Eight rows scored side by side, one accumulator each, was faster
// without prefetching, but its eight interleaved streams gain less from it.)
template <class T, Storage S>
void dot_rows(const float* q, const std::uint8_t* rows, std::size_t n, std::size_t d, float* out) noexcept {
  const std::size_t rb = row_bytes(S, d);
  for (std::size_t j = 0; j < n; ++j) out[j] = dot<T, S, true>(q, rows + j * rb, d);
}

// Where a single-query kernel finds row j, and how it prefetches. Contiguous rows (a flat scan)
// stream: each line read requests the line kScanPrefetchBytes later. Gathered rows (a graph walk)
// are scattered: the caller has requested each row's first kGatherHeadBytes, and each row
// requests the rest of the next one before it is scored.
struct ContiguousRows {
  static constexpr bool kStream = true;
  const std::uint8_t* rows;
  std::size_t rb;
  const std::uint8_t* operator()(std::size_t j) const noexcept { return rows + j * rb; }
};
struct GatheredRows {
  static constexpr bool kStream = false;
  const std::uint8_t* base;
  std::size_t rb;
  const std::uint32_t* slots;
  std::size_t n;
  const std::uint8_t* operator()(std::size_t j) const noexcept { return base + std::size_t(slots[j]) * rb; }
  // Requests bytes [offset, offset + bytes) of row j + 1, if there is one, but its head.
  void prefetch_next(std::size_t j, std::size_t offset, std::size_t bytes) const noexcept {
    if (j + 1 < n) prefetch_rest((*this)(j + 1), offset, offset + bytes);
  }
  // Requests bytes [begin, end) of a row less its first kGatherHeadBytes (the caller's).
  static void prefetch_rest(const std::uint8_t* row, std::size_t begin, std::size_t end) noexcept {
    begin = begin > kGatherHeadBytes ? begin : kGatherHeadBytes;
    if (begin < end) prefetch_range(row + begin, end - begin);
  }
};

// A row scan written over a row source (an ISA's own kernel, e.g. vpdpwssd) as a contiguous
// single-query scan (a RowsFn) and as a gather (StorageKernels::dot_gather).
template <class Rows>
using ScanFn = void (*)(const float* q, const Rows& rows, std::size_t n, std::size_t d, float* out) noexcept;

template <Storage S, ScanFn<ContiguousRows> Scan>
void scan_contiguous(const float* q, const std::uint8_t* rows, std::size_t n, std::size_t d, float* out) noexcept {
  Scan(q, ContiguousRows{rows, row_bytes(S, d)}, n, d, out);
}

template <Storage S, ScanFn<GatheredRows> Scan>
void scan_gathered(const float* q, const std::uint8_t* base, const std::uint32_t* slots, std::size_t n, std::size_t d,
                   float* out) noexcept {
  Scan(q, GatheredRows{base, row_bytes(S, d), slots, n}, n, d, out);
}

// Rows gathered by slot (a graph walk's neighbours; StorageKernels::dot_gather and l2sq_gather),
// four at a time: two accumulators per row and one four-way reduction for the four rows, where
// a row at a time pays a whole horizontal sum per row. The rest of the next four rows (past the
// head the caller requested) is requested while these are scored. L2: squared distances, else
// inner products.
template <class T, Storage S, bool L2>
void gather4(const float* q, const std::uint8_t* base, const std::uint32_t* slots, std::size_t n, std::size_t d,
             float* out) noexcept {
  using R = Row<S>;
  using V = typename T::V;
  const std::size_t rb = row_bytes(S, d), full = d / T::W * T::W;
  std::size_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const std::uint8_t* rows[4];
    V scale[4];
    for (std::size_t r = 0; r < 4; ++r) {
      rows[r] = base + std::size_t(slots[j + r]) * rb;
      if constexpr (L2 && R::kScaled) scale[r] = T::set1(R::scale(rows[r], d));
    }
    for (std::size_t r = j + 4; r < n && r < j + 8; ++r) GatheredRows::prefetch_rest(base + std::size_t(slots[r]) * rb, 0, rb);
    V acc[4][2];
    for (std::size_t r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = T::zero();
    auto step = [&](std::size_t i, std::size_t u) {
      const V qv = T::load_f32(q + i);
      for (std::size_t r = 0; r < 4; ++r) {
        V x = R::template load<T>(rows[r], i);
        if constexpr (L2) {
          if constexpr (R::kScaled) x = T::mul(x, scale[r]);
          const V t = T::sub(qv, x);
          acc[r][u] = T::fma(t, t, acc[r][u]);
        } else {
          acc[r][u] = T::fma(qv, x, acc[r][u]);
        }
      }
    };
    std::size_t i = 0;
    for (; i + 2 * T::W <= full; i += 2 * T::W) {
      step(i, 0);
      step(i + T::W, 1);
    }
    if (i < full) step(i, 0);
    float sums[4];
    T::reduce4(T::add(acc[0][0], acc[0][1]), T::add(acc[1][0], acc[1][1]), T::add(acc[2][0], acc[2][1]),
               T::add(acc[3][0], acc[3][1]), sums);
    for (std::size_t r = 0; r < 4; ++r) {
      const float sc = R::scale(rows[r], d);
      float s = sums[r];
      for (std::size_t k = full; k < d; ++k) {
        if constexpr (L2) {
          const float t = q[k] - sc * R::get(rows[r], k);
          s += t * t;
        } else {
          s += q[k] * R::get(rows[r], k);
        }
      }
      out[j + r] = L2 ? s : s * sc;
    }
  }
  for (; j < n; ++j) {
    const std::uint8_t* row = base + std::size_t(slots[j]) * rb;
    out[j] = L2 ? l2sq<T, S>(q, row, d) : dot<T, S>(q, row, d);
  }
}

// The prepared query of kernels that read float32 queries: a copy (StorageKernels::prepare).
inline std::size_t float_prepared_bytes(std::size_t d) noexcept { return d * sizeof(float); }
inline void float_prepare(const float* q, std::size_t d, std::uint8_t* out) noexcept {
  std::memcpy(out, q, d * sizeof(float));
}
template <class T, Storage S>
void gather4_prepared(const std::uint8_t* prepared, const std::uint8_t* base, const std::uint32_t* slots,
                      std::size_t n, std::size_t d, float* out) noexcept {
  gather4<T, S, false>(reinterpret_cast<const float*>(prepared), base, slots, n, d, out);
}

// A single-query row scan (dot_rows or an ISA's own, e.g. integer or bf16 dot products).
using RowsFn = void (*)(const float* q, const std::uint8_t* rows, std::size_t n, std::size_t d,
                        float* out) noexcept;

// Groups of NQ queries go through the register tile; the leftover queries (and the single-query
// scan) through Rows.
template <class T, Storage S, RowsFn Rows = &dot_rows<T, S>>
void dot_block(const float* queries, std::size_t nq, const std::uint8_t* rows, std::size_t n, std::size_t d,
               float* out, std::size_t ldo) noexcept {
  const std::size_t rb = row_bytes(S, d);
  std::size_t a = 0;
  for (; a + T::NQ <= nq; a += T::NQ)
    dot_rows_tiled<T, S, T::NQ, T::NR>(queries + a * d, rows, n, rb, d, out + a * ldo, ldo);
  for (; a < nq; ++a) Rows(queries + a * d, rows, n, d, out + a * ldo);
}

// Whether traits T can transpose a W x W block of vectors in registers (transpose(V* v): v[j]
// holds row j's W values before and value j of every row after).
template <class T, class = void>
struct HasTranspose : std::false_type {};
template <class T>
struct HasTranspose<T, std::void_t<decltype(T::transpose(static_cast<typename T::V*>(nullptr)))>> : std::true_type {};

// Panels of P = PV * W rows, dimension-major, decoded to float32 (int8 scales applied). With an
// in-register transpose, W rows x W dimensions are decoded, transposed and stored as W full
// vectors; otherwise each decoded vector is scattered one float at a time.
template <class T, Storage S>
void pack(const std::uint8_t* rows, std::size_t n, std::size_t d, float* packed) noexcept {
  using R = Row<S>;
  using V = typename T::V;
  constexpr std::size_t W = T::W, P = T::PV * T::W;
  const std::size_t rb = row_bytes(S, d);
  for (std::size_t p0 = 0; p0 < n; p0 += P) {
    float* panel = packed + p0 * d;
    const std::size_t m = n - p0 < P ? n - p0 : P;
    std::size_t k_done = 0;  // dimensions [0, k_done) of every row of the panel are written
    if constexpr (HasTranspose<T>::value) {
      const std::size_t full = d / W * W;
      for (std::size_t r0 = 0; r0 < P; r0 += W) {
        const std::size_t live = r0 >= m ? 0 : m - r0 < W ? m - r0 : W;  // real rows in this group
        V scale[W];
        for (std::size_t j = 0; j < W; ++j) scale[j] = T::set1(j < live ? R::scale(rows + (p0 + r0 + j) * rb, d) : 0.0f);
        for (std::size_t k = 0; k < full; k += W) {
          V v[W];
          for (std::size_t j = 0; j < W; ++j) {
            v[j] = j < live ? R::template load<T>(rows + (p0 + r0 + j) * rb, k) : T::zero();
            if constexpr (R::kScaled) v[j] = T::mul(v[j], scale[j]);
          }
          T::transpose(v);
          for (std::size_t j = 0; j < W; ++j) T::store(panel + (k + j) * P + r0, v[j]);
        }
      }
      k_done = full;
    } else {
      for (std::size_t r = 0; r < m; ++r) {
        const std::uint8_t* row = rows + (p0 + r) * rb;
        const V vsc = T::set1(R::scale(row, d));
        alignas(64) float tmp[W];
        for (std::size_t k = 0; k + W <= d; k += W) {
          V v = R::template load<T>(row, k);
          if constexpr (R::kScaled) v = T::mul(v, vsc);
          T::store(tmp, v);
          for (std::size_t j = 0; j < W; ++j) panel[(k + j) * P + r] = tmp[j];
        }
      }
      for (std::size_t r = m; r < P; ++r)
        for (std::size_t k = 0; k < d / W * W; ++k) panel[k * P + r] = 0.0f;
      k_done = d / W * W;
    }
    // Dimensions past the last whole vector, one float at a time; padding rows are zero.
    for (std::size_t r = 0; r < P; ++r) {
      const std::uint8_t* row = rows + (p0 + r) * rb;
      const float sc = r < m ? R::scale(row, d) : 0.0f;
      for (std::size_t k = k_done; k < d; ++k) panel[k * P + r] = r < m ? R::get(row, k) * sc : 0.0f;
    }
  }
}

// Groups of PQ queries, dimension-major, zero-padded (Kernels::pack_queries).
template <class T>
void pack_queries(const float* queries, std::size_t nq, std::size_t d, float* out) noexcept {
  constexpr std::size_t G = T::PQ;
  for (std::size_t g0 = 0; g0 < nq; g0 += G) {
    float* group = out + g0 * d;
    const std::size_t m = nq - g0 < G ? nq - g0 : G;
    for (std::size_t a = 0; a < G; ++a)
      for (std::size_t k = 0; k < d; ++k) group[k * G + a] = a < m ? queries[(g0 + a) * d + k] : 0.0f;
  }
}

// One query group x one panel: PQ * PV accumulators, each holding W row scores of one query;
// the query values of a dimension are broadcast from the group's packed line, so no horizontal
// sums are needed. Writes the first `queries` x `valid` scores.
template <class T>
inline void packed_tile(const float* group, const float* panel, std::size_t d, std::size_t queries,
                        std::size_t valid, float* out, std::size_t ldo) noexcept {
  using V = typename T::V;
  constexpr std::size_t NQ = T::PQ, PV = T::PV, P = T::PV * T::W;
  V acc[NQ][PV];
  for (std::size_t a = 0; a < NQ; ++a)
    for (std::size_t v = 0; v < PV; ++v) acc[a][v] = T::zero();
  for (std::size_t k = 0; k < d; ++k) {
    V x[PV];
    for (std::size_t v = 0; v < PV; ++v) x[v] = T::load_f32(panel + k * P + v * T::W);
    for (std::size_t a = 0; a < NQ; ++a) {
      const V b = T::set1(group[k * NQ + a]);
      for (std::size_t v = 0; v < PV; ++v) acc[a][v] = T::fma(b, x[v], acc[a][v]);
    }
  }
  for (std::size_t a = 0; a < queries; ++a) {
    alignas(64) float tmp[P];
    for (std::size_t v = 0; v < PV; ++v) T::store(tmp + v * T::W, acc[a][v]);
    for (std::size_t r = 0; r < valid; ++r) out[a * ldo + r] = tmp[r];
  }
}

template <class T>
void dot_packed(const float* packed_queries, std::size_t nq, const float* packed, std::size_t n, std::size_t d,
                float* out, std::size_t ldo) noexcept {
  constexpr std::size_t P = T::PV * T::W;
  for (std::size_t a = 0; a < nq; a += T::PQ)
    for (std::size_t p0 = 0; p0 < n; p0 += P)
      packed_tile<T>(packed_queries + a * d, packed + p0 * d, d, nq - a < T::PQ ? nq - a : T::PQ,
                     n - p0 < P ? n - p0 : P, out + a * ldo + p0, ldo);
}

template <class T, Storage S>
constexpr StorageKernels storage_kernels() noexcept {
  return StorageKernels{&dot<T, S>,
                        &l2sq<T, S>,
                        &dot_block<T, S>,
                        &gather4<T, S, false>,
                        &gather4<T, S, true>,
                        &float_prepared_bytes,
                        &float_prepare,
                        &gather4_prepared<T, S>,
                        &pack<T, S>};
}

template <class T>
float dot_f32(const float* a, const float* b, std::size_t d) noexcept {
  return dot<T, Storage::f32>(a, reinterpret_cast<const std::uint8_t*>(b), d);
}
template <class T>
float l2sq_f32(const float* a, const float* b, std::size_t d) noexcept {
  return l2sq<T, Storage::f32>(a, reinterpret_cast<const std::uint8_t*>(b), d);
}
template <class T>
void dot_f32_rows(const float* q, const float* base, std::size_t n, std::size_t d, float* out) noexcept {
  dot_block<T, Storage::f32>(q, 1, reinterpret_cast<const std::uint8_t*>(base), n, d, out, n);
}
template <class T>
void l2sq_f32_rows(const float* q, const float* base, std::size_t n, std::size_t d, float* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = l2sq_f32<T>(q, base + i * d, d);
}

template <class T>
constexpr Kernels make_kernels(Isa isa) noexcept {
  return Kernels{isa,
                 &dot_f32<T>,
                 &l2sq_f32<T>,
                 &dot_f32_rows<T>,
                 &l2sq_f32_rows<T>,
                 {storage_kernels<T, Storage::f32>(), storage_kernels<T, Storage::f16>(),
                  storage_kernels<T, Storage::bf16>(), storage_kernels<T, Storage::int8>()},
                 T::PV * T::W,
                 T::PQ,
                 &pack_queries<T>,
                 &dot_packed<T>};
}

}  // namespace vsr::generic
