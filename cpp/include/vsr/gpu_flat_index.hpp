// Exact search with vectors resident in GPU memory. The header has no CUDA dependency: a build
// without a CUDA toolkit links a stub whose every call returns ErrorCode::unsupported.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "vsr/common.hpp"

namespace vsr {

enum class ElementType : unsigned char { f32 = 0, f16 = 1, bf16 = 2 };

std::string_view element_type_name(ElementType t) noexcept;
std::optional<ElementType> element_type_from_name(std::string_view name) noexcept;

// Where a caller's buffer lives. Device buffers must be on the index's device.
enum class Memory : unsigned char { host = 0, device = 1 };

struct CudaInfo {
  bool compiled = false;      // built with the CUDA toolkit
  int runtime_version = 0;    // cudaRuntimeGetVersion, 0 when not compiled
  int driver_version = 0;     // 0 when no driver is present
  int device_count = 0;
  std::string error;          // why device_count is 0, when it is
};
CudaInfo cuda_info();

// Device memory for results handed to other frameworks (freed by the DLPack deleter).
Result<void*> device_alloc(int device, std::size_t bytes);
void device_free(int device, void* ptr) noexcept;

struct GpuSearchStats {
  std::size_t blocks = 0;         // thread blocks of the scan kernel
  std::size_t partial_lists = 0;  // per-block top-k lists merged per query
};

class GpuFlatIndex {
 public:
  // Fails with unsupported when CUDA is not compiled in or the device does not exist.
  static Result<std::unique_ptr<GpuFlatIndex>> create(std::size_t dim, Metric metric, ElementType storage,
                                                       int device);
  ~GpuFlatIndex();
  GpuFlatIndex(const GpuFlatIndex&) = delete;
  GpuFlatIndex& operator=(const GpuFlatIndex&) = delete;

  std::size_t dim() const noexcept;
  Metric metric() const noexcept;
  ElementType storage() const noexcept;
  int device() const noexcept;
  std::size_t size() const noexcept;
  // Largest k the fused kernel supports.
  static constexpr std::size_t kMaxK = 1024;

  // Adds n rows of `type` elements (host or device memory). ids == nullptr assigns consecutive
  // ids; ids are host memory. NaN/inf rows are rejected (checked on the device for device input).
  Status add(const void* vectors, ElementType type, Memory where, std::size_t n, const idx_t* ids);

  // Searches nq queries of `type` elements. Outputs are nq*k scores (float32) and ids (int64) in
  // `out_where` memory. `stream` is a cudaStream_t; with nullptr (the legacy default stream) the
  // call returns when results are ready, with an explicit stream device outputs are ready in
  // stream order. Host outputs are always ready on return.
  Status search(const void* queries, ElementType type, Memory where, std::size_t nq, std::size_t k,
                float* scores, idx_t* ids, Memory out_where, void* stream, GpuSearchStats* stats) const;

  // Copies the stored ids to host (row order).
  Status ids(idx_t* out) const;

 private:
  struct Impl;
  explicit GpuFlatIndex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vsr
