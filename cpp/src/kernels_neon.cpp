// NEON kernels for AArch64 (Advanced SIMD with fp16 conversion, both mandatory there).
#include <arm_neon.h>

#include <cstring>

#include "kernels_generic.hpp"

namespace vsr {
namespace {

struct NeonTraits {
  using V = float32x4_t;
  // Tiles: 4 queries x 4 rows (dot_block); packed: 12 queries x 2 row vectors. 32 q registers.
  static constexpr std::size_t W = 4, NQ = 4, NR = 4, PQ = 12, PV = 2;
  static V zero() noexcept { return vdupq_n_f32(0.0f); }
  static V set1(float x) noexcept { return vdupq_n_f32(x); }
  static V fma(V a, V b, V c) noexcept { return vfmaq_f32(c, a, b); }
  static V add(V a, V b) noexcept { return vaddq_f32(a, b); }
  static V sub(V a, V b) noexcept { return vsubq_f32(a, b); }
  static V mul(V a, V b) noexcept { return vmulq_f32(a, b); }
  static void store(float* p, V v) noexcept { vst1q_f32(p, v); }
  static V load_f32(const float* p) noexcept { return vld1q_f32(p); }
  static V load_f16(const std::uint16_t* p) noexcept { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static V load_bf16(const std::uint16_t* p) noexcept { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
  static V load_i8(const std::int8_t* p) noexcept {
    std::int32_t word;
    std::memcpy(&word, p, sizeof word);
    int16x8_t wide = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(word)));
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)));
  }
  static void reduce4(V a, V b, V c, V d, float* out) noexcept {
    vst1q_f32(out, vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d)));
  }
};

const Kernels kNeon = generic::make_kernels<NeonTraits>(Isa::neon);

}  // namespace

namespace detail {
const Kernels* neon_kernels() noexcept { return &kNeon; }
}  // namespace detail

}  // namespace vsr
