// Portable reference kernels: every SIMD path is tested against these.
#include "vsr/kernels.hpp"

namespace vsr {
namespace {

float dot_f32(const float* a, const float* b, std::size_t d) noexcept {
  // Four accumulators keep the reference reasonably fast and its rounding close to SIMD sums.
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::size_t i = 0;
  for (; i + 4 <= d; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < d; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

float l2sq_f32(const float* a, const float* b, std::size_t d) noexcept {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::size_t i = 0;
  for (; i + 4 <= d; i += 4) {
    float t0 = a[i] - b[i], t1 = a[i + 1] - b[i + 1], t2 = a[i + 2] - b[i + 2], t3 = a[i + 3] - b[i + 3];
    s0 += t0 * t0;
    s1 += t1 * t1;
    s2 += t2 * t2;
    s3 += t3 * t3;
  }
  for (; i < d; ++i) {
    float t = a[i] - b[i];
    s0 += t * t;
  }
  return (s0 + s1) + (s2 + s3);
}

void dot_f32_rows(const float* q, const float* base, std::size_t n, std::size_t d, float* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = dot_f32(q, base + i * d, d);
}

void l2sq_f32_rows(const float* q, const float* base, std::size_t n, std::size_t d, float* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = l2sq_f32(q, base + i * d, d);
}

const Kernels kScalar{Isa::scalar, dot_f32, l2sq_f32, dot_f32_rows, l2sq_f32_rows};

}  // namespace

namespace detail {
const Kernels* scalar_kernels() noexcept { return &kScalar; }
}  // namespace detail

}  // namespace vsr
