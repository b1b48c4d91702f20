// Portable reference kernels (one float per "vector"): every SIMD path is tested against these,
// and they run on any CPU. No transpose(): packing takes the scatter path here, as on NEON, so
// that path is tested on every machine.
#include "kernels_generic.hpp"

namespace vsr {
namespace {

struct ScalarTraits {
  using V = float;
  static constexpr std::size_t W = 1, NQ = 2, NR = 4, PQ = 4, PV = 2;
  static V zero() noexcept { return 0.0f; }
  static V set1(float x) noexcept { return x; }
  static V fma(V a, V b, V c) noexcept { return a * b + c; }
  static V add(V a, V b) noexcept { return a + b; }
  static V sub(V a, V b) noexcept { return a - b; }
  static V mul(V a, V b) noexcept { return a * b; }
  static void store(float* p, V v) noexcept { *p = v; }
  static V load_f32(const float* p) noexcept { return *p; }
  static V load_f16(const std::uint16_t* p) noexcept { return half_to_float(*p); }
  static V load_bf16(const std::uint16_t* p) noexcept { return bf16_to_float(*p); }
  static V load_i8(const std::int8_t* p) noexcept { return float(*p); }
  static void reduce4(V a, V b, V c, V d, float* out) noexcept {
    out[0] = a;
    out[1] = b;
    out[2] = c;
    out[3] = d;
  }
};

const Kernels kScalar = generic::make_kernels<ScalarTraits>(Isa::scalar);

}  // namespace

namespace detail {
const Kernels* scalar_kernels() noexcept { return &kScalar; }
}  // namespace detail

}  // namespace vsr
