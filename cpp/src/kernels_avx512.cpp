// AVX-512 (F/BW/VL/DQ) kernels. Only called when the CPU has them.
#include "kernels_avx512.hpp"

namespace vsr {
namespace {

const Kernels kAvx512 = generic::make_kernels<avx512::Avx512Traits>(Isa::avx512);

}  // namespace

namespace detail {
const Kernels* avx512_kernels() noexcept { return &kAvx512; }
}  // namespace detail

}  // namespace vsr
