// AVX-512 + VNNI + BF16 kernels: the avx512vnni set with bf16 rows scanned by vdpbf16ps
// (kernels_avx512_dot.hpp). Only called when the CPU has AVX512_BF16 (and so VNNI).
#include "kernels_avx512_dot.hpp"

namespace vsr {
namespace {

constexpr Kernels make() noexcept {
  using T = avx512::Avx512Traits;
  Kernels k = avx512::vnni_kernels(Isa::avx512bf16);
  StorageKernels& bf16 = k.storage[std::size_t(Storage::bf16)];
  bf16.dot_block = &generic::dot_block<
      T, Storage::bf16, &generic::scan_contiguous<Storage::bf16, &avx512::bf16_scan_dpbf16<generic::ContiguousRows>>>;
  bf16.dot_gather = &generic::scan_gathered<Storage::bf16, &avx512::bf16_scan_dpbf16<generic::GatheredRows>>;
  bf16.prepared_bytes = &avx512::bf16_prepared_bytes;
  bf16.prepare = &avx512::bf16_prepare_dpbf16;
  bf16.dot_gather_prepared = &avx512::bf16_gather_prepared_dpbf16;
  return k;
}

const Kernels kAvx512Bf16 = make();

}  // namespace

namespace detail {
const Kernels* avx512bf16_kernels() noexcept { return &kAvx512Bf16; }
}  // namespace detail

}  // namespace vsr
