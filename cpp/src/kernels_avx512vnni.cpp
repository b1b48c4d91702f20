// AVX-512 + VNNI kernels: the avx512 set with int8 rows scanned by vpdpwssd
// (kernels_avx512_dot.hpp). Only called when the CPU has AVX512_VNNI.
#include "kernels_avx512_dot.hpp"

namespace vsr {
namespace {

constexpr Kernels make() noexcept {
  using T = avx512::Avx512Traits;
  Kernels k = generic::make_kernels<T>(Isa::avx512vnni);
  k.storage[std::size_t(Storage::int8)].dot_block = &generic::dot_block<T, Storage::int8, &avx512::int8_rows_vnni>;
  return k;
}

const Kernels kAvx512Vnni = make();

}  // namespace

namespace detail {
const Kernels* avx512vnni_kernels() noexcept { return &kAvx512Vnni; }
}  // namespace detail

}  // namespace vsr
