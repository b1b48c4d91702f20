// NEON kernels for AArch64.
#include <arm_neon.h>

#include "vsr/kernels.hpp"

namespace vsr {
namespace {

float dot_f32(const float* a, const float* b, std::size_t d) noexcept {
  float32x4_t acc0 = vdupq_n_f32(0), acc1 = vdupq_n_f32(0);
  std::size_t i = 0;
  for (; i + 8 <= d; i += 8) {
    acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
    acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
  }
  float s = vaddvq_f32(vaddq_f32(acc0, acc1));
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

float l2sq_f32(const float* a, const float* b, std::size_t d) noexcept {
  float32x4_t acc = vdupq_n_f32(0);
  std::size_t i = 0;
  for (; i + 4 <= d; i += 4) {
    float32x4_t t = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
    acc = vfmaq_f32(acc, t, t);
  }
  float s = vaddvq_f32(acc);
  for (; i < d; ++i) {
    float t = a[i] - b[i];
    s += t * t;
  }
  return s;
}

void dot_f32_rows(const float* q, const float* base, std::size_t n, std::size_t d, float* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = dot_f32(q, base + i * d, d);
}

void l2sq_f32_rows(const float* q, const float* base, std::size_t n, std::size_t d, float* out) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = l2sq_f32(q, base + i * d, d);
}

const Kernels kNeon{Isa::neon, dot_f32, l2sq_f32, dot_f32_rows, l2sq_f32_rows};

}  // namespace

namespace detail {
const Kernels* neon_kernels() noexcept { return &kNeon; }
}  // namespace detail

}  // namespace vsr
