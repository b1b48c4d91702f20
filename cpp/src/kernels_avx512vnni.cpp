// AVX-512 + VNNI kernels: the avx512 set with int8 rows scanned by vpdpwssd
// (kernels_avx512_dot.hpp). Only called when the CPU has AVX512_VNNI.
#include "kernels_avx512_dot.hpp"

namespace vsr {
namespace {

const Kernels kAvx512Vnni = avx512::vnni_kernels(Isa::avx512vnni);

}  // namespace

namespace detail {
const Kernels* avx512vnni_kernels() noexcept { return &kAvx512Vnni; }
}  // namespace detail

}  // namespace vsr
