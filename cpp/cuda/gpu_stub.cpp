// Linked when no CUDA toolkit was found: every GPU entry point reports that clearly.
#include "vsr/gpu_flat_index.hpp"

namespace vsr {

namespace {
Error not_built() {
  return make_error(ErrorCode::unsupported,
                    "vsr_index was built without CUDA; rebuild on a machine with the CUDA toolkit "
                    "(nvcc on PATH or CUDACXX set) to use GPU indexes");
}
}  // namespace

CudaInfo cuda_info() {
  CudaInfo info;
  info.error = "built without CUDA";
  return info;
}

Result<void*> device_alloc(int, std::size_t) { return not_built(); }
void device_free(int, void*) noexcept {}

struct GpuFlatIndex::Impl {};

GpuFlatIndex::GpuFlatIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuFlatIndex::~GpuFlatIndex() = default;

Result<std::unique_ptr<GpuFlatIndex>> GpuFlatIndex::create(std::size_t, Metric, ElementType, int) {
  return not_built();
}
std::size_t GpuFlatIndex::dim() const noexcept { return 0; }
Metric GpuFlatIndex::metric() const noexcept { return Metric::inner_product; }
ElementType GpuFlatIndex::storage() const noexcept { return ElementType::f32; }
int GpuFlatIndex::device() const noexcept { return -1; }
std::size_t GpuFlatIndex::size() const noexcept { return 0; }
Status GpuFlatIndex::add(const void*, ElementType, Memory, std::size_t, const idx_t*) { return not_built(); }
Status GpuFlatIndex::search(const void*, ElementType, Memory, std::size_t, std::size_t, float*, idx_t*, Memory,
                            void*, GpuSearchStats*) const {
  return not_built();
}
Status GpuFlatIndex::ids(idx_t*) const { return not_built(); }

}  // namespace vsr
