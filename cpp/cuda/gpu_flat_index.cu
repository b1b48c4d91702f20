// GPU flat index: vectors in device memory, fused distance + top-k scan (no nq x n score matrix).
//
// Search runs two kernels. The scan kernel gives each block a tile of QB queries (kept in shared
// memory as float32) and a contiguous chunk of rows; each warp scores whole rows against all QB
// queries, so a row is read from global memory once per query tile. Scores of kTile rows are
// merged into a per-block top-k in shared memory by a bitonic sort, skipped when no new score
// beats the current k-th. The merge kernel then reduces the per-block lists of each query.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_set>
#include <vector>

#include "gpu_kernels.cuh"
#include "vsr/gpu_flat_index.hpp"
#include "vsr/input_checks.hpp"

namespace vsr {

using gpu::kNoPos;
using gpu::kThreads;
using gpu::kTile;
using gpu::kWarps;

namespace {

Error cuda_error(cudaError_t err, const char* what) {
  ErrorCode code = err == cudaErrorMemoryAllocation ? ErrorCode::out_of_memory : ErrorCode::unsupported;
  return make_error(code, std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

#define VSR_CUDA_TRY(expr, what)                     \
  do {                                               \
    cudaError_t err_ = (expr);                       \
    if (err_ != cudaSuccess) return cuda_error(err_, what); \
  } while (0)

std::size_t element_size(ElementType t) { return t == ElementType::f32 ? 4 : 2; }

int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

// Restores the caller's current device on scope exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaGetDevice(&previous_);
    cudaSetDevice(device);
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

// ---- kernels ---------------------------------------------------------------------------------

// One block per row: converts a row to the storage type, normalises it for cosine, records its
// squared norm (of the stored, rounded values) for l2, and flags non-finite input. Queries go
// through the same kernel with float32 as the storage type.
template <typename TIn, typename TStore>
__global__ void ingest_rows(const TIn* in, TStore* out, float* sqnorm, int dim, bool normalise, int* bad) {
  __shared__ float scratch[kWarps];
  const TIn* src = in + std::size_t(blockIdx.x) * dim;
  TStore* dst = out + std::size_t(blockIdx.x) * dim;
  float ss = 0;
  bool finite = true;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) {
    float v = gpu::to_float(src[j]);
    finite &= isfinite(v);
    ss += v * v;
  }
  if (__syncthreads_or(!finite)) {
    if (threadIdx.x == 0) atomicExch(bad, 1);
    return;
  }
  ss = gpu::block_sum(ss, scratch);
  float scale = (normalise && ss > 0) ? rsqrtf(ss) : 1.0f;
  float stored_ss = 0;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) {
    TStore s = gpu::from_float<TStore>(gpu::to_float(src[j]) * scale);
    dst[j] = s;
    float r = gpu::to_float(s);
    stored_ss += r * r;
  }
  stored_ss = gpu::block_sum(stored_ss, scratch);
  if (threadIdx.x == 0) sqnorm[blockIdx.x] = stored_ss;
}

// Loads VW consecutive elements starting at p (16-byte aligned when VW > 1) as floats.
template <typename T, int VW>
__device__ __forceinline__ void load_vec(const T* p, float* out) {
  if constexpr (VW == 1) {
    out[0] = gpu::to_float(p[0]);
  } else {
    static_assert(sizeof(T) * VW == 16, "vector loads are 16 bytes");
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < VW; ++i) out[i] = gpu::to_float(e[i]);
  }
}

struct ScanArgs {
  const void* rows;
  const float* row_sqnorm;
  const float* queries;     // nq x dim float32
  int nq, dim, k, kp, cand; // kp: pow2 >= k kept per list; cand: pow2 >= kp + kTile sorted per merge
  std::uint32_t n, rows_per_chunk;
  bool l2;
  float* part_score;        // nq x chunks x k
  std::uint32_t* part_pos;
};

// Shared memory: QB*dim query floats, then QB candidate arrays of `cand` (score, pos).
template <typename T, int QB, int VW>
__global__ void __launch_bounds__(kThreads) scan_topk(ScanArgs a) {
  extern __shared__ float smem[];
  float* q = smem;
  float* cs = q + QB * a.dim;
  std::uint32_t* cp = reinterpret_cast<std::uint32_t*>(cs + QB * a.cand);
  const int q0 = blockIdx.y * QB;
  const int chunk = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* rows = static_cast<const T*>(a.rows);

  // Query element e sits at (e % VW) * (dim / VW) + e / VW, so that for a fixed v the 32 lanes of
  // a warp read consecutive words (no bank conflicts) while loading rows with 16-byte vectors.
  const int stripe = a.dim / VW;
  for (int i = threadIdx.x; i < QB * a.dim; i += blockDim.x) {
    int b = i / a.dim, e = i % a.dim;
    int qi = q0 + b;
    q[b * a.dim + (e % VW) * stripe + e / VW] = qi < a.nq ? a.queries[std::size_t(qi) * a.dim + e] : 0.0f;
  }
  for (int i = threadIdx.x; i < QB * a.cand; i += blockDim.x) {
    cs[i] = -INFINITY;
    cp[i] = kNoPos;
  }
  __syncthreads();

  const std::uint32_t begin = chunk * a.rows_per_chunk;
  const std::uint32_t end = min(a.n, begin + a.rows_per_chunk);
  for (std::uint32_t tile = begin; tile < end; tile += kTile) {
    const std::uint32_t tile_end = min(end, tile + kTile);
    for (std::uint32_t r = tile + warp; r < tile_end; r += kWarps) {
      const T* row = rows + std::size_t(r) * a.dim;
      float acc[QB];
#pragma unroll
      for (int b = 0; b < QB; ++b) acc[b] = 0;
      for (int j = lane * VW; j < a.dim; j += 32 * VW) {
        float x[VW];
        load_vec<T, VW>(row + j, x);
#pragma unroll
        for (int b = 0; b < QB; ++b) {
#pragma unroll
          for (int v = 0; v < VW; ++v) acc[b] = fmaf(x[v], q[b * a.dim + v * stripe + j / VW], acc[b]);
        }
      }
#pragma unroll
      for (int b = 0; b < QB; ++b) {
        float s = gpu::warp_sum(acc[b]);
        // l2 ranks by 2<q,x> - ||x||^2, i.e. by -||q - x||^2 up to the query's own norm.
        if (a.l2) s = 2.0f * s - a.row_sqnorm[r];
        if (lane == 0) {
          cs[b * a.cand + a.kp + (r - tile)] = s;
          cp[b * a.cand + a.kp + (r - tile)] = r;
        }
      }
    }
    __syncthreads();
    for (int b = 0; b < QB; ++b) {
      float* s = cs + b * a.cand;
      std::uint32_t* p = cp + b * a.cand;
      const float kth = s[a.k - 1];
      const std::uint32_t kth_pos = p[a.k - 1];
      bool improves = false;
      for (int i = threadIdx.x; i < int(tile_end - tile); i += blockDim.x)
        improves |= gpu::before(s[a.kp + i], p[a.kp + i], kth, kth_pos);
      if (__syncthreads_or(improves)) gpu::bitonic_sort(s, p, a.cand);
      // Clear the tile region (sorting may have moved entries there; they are all worse than
      // the first kp, which is all that is kept).
      for (int i = a.kp + threadIdx.x; i < a.cand; i += blockDim.x) {
        s[i] = -INFINITY;
        p[i] = kNoPos;
      }
      __syncthreads();
    }
  }

  for (int b = 0; b < QB; ++b) {
    int qi = q0 + b;
    if (qi >= a.nq) break;
    std::size_t base = (std::size_t(qi) * gridDim.x + chunk) * a.k;
    for (int i = threadIdx.x; i < a.k; i += blockDim.x) {
      a.part_score[base + i] = cs[b * a.cand + i];
      a.part_pos[base + i] = cp[b * a.cand + i];
    }
  }
}

// One block per query: reduces `lists` top-k lists to the final top-k, maps positions to ids and
// converts scores back to the metric's scale.
__global__ void __launch_bounds__(kThreads)
    merge_topk(const float* part_score, const std::uint32_t* part_pos, int lists, int k, int kp, int cand,
               const idx_t* ids, const float* query_sqnorm, bool l2, float* out_score, idx_t* out_id) {
  extern __shared__ float smem[];
  float* s = smem;
  std::uint32_t* p = reinterpret_cast<std::uint32_t*>(s + cand);
  const int qi = blockIdx.x;
  for (int i = threadIdx.x; i < cand; i += blockDim.x) {
    s[i] = -INFINITY;
    p[i] = kNoPos;
  }
  __syncthreads();
  const std::size_t total = std::size_t(lists) * k;
  const float* ps = part_score + std::size_t(qi) * total;
  const std::uint32_t* pp = part_pos + std::size_t(qi) * total;
  const int room = cand - kp;
  for (std::size_t off = 0; off < total; off += room) {
    int count = int(total - off < std::size_t(room) ? total - off : std::size_t(room));
    for (int i = threadIdx.x; i < room; i += blockDim.x) {
      s[kp + i] = i < count ? ps[off + i] : -INFINITY;
      p[kp + i] = i < count ? pp[off + i] : kNoPos;
    }
    __syncthreads();
    gpu::bitonic_sort(s, p, cand);
  }
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    std::uint32_t pos = p[i];
    float score = s[i];
    bool missing = pos == kNoPos;
    out_id[std::size_t(qi) * k + i] = missing ? idx_t(-1) : ids[pos];
    if (l2) score = missing ? INFINITY : fmaxf(query_sqnorm[qi] - score, 0.0f);
    out_score[std::size_t(qi) * k + i] = score;
  }
}

template <typename T, int QB, int VW>
cudaError_t launch_scan(const ScanArgs& a, int chunks, std::size_t smem, cudaStream_t stream) {
  auto kernel = scan_topk<T, QB, VW>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  dim3 grid(chunks, (a.nq + QB - 1) / QB);
  kernel<<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, int QB>
cudaError_t launch_scan_vw(const ScanArgs& a, int chunks, std::size_t smem, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  if (a.dim % kVec == 0) return launch_scan<T, QB, kVec>(a, chunks, smem, stream);
  return launch_scan<T, QB, 1>(a, chunks, smem, stream);
}

template <typename T>
cudaError_t dispatch_scan(const ScanArgs& a, int qb, int chunks, std::size_t smem, cudaStream_t stream) {
  switch (qb) {
    case 8: return launch_scan_vw<T, 8>(a, chunks, smem, stream);
    case 4: return launch_scan_vw<T, 4>(a, chunks, smem, stream);
    case 2: return launch_scan_vw<T, 2>(a, chunks, smem, stream);
    default: return launch_scan_vw<T, 1>(a, chunks, smem, stream);
  }
}

template <typename TIn, typename TStore>
cudaError_t launch_ingest(const void* in, void* out, float* sqnorm, int n, int dim, bool normalise, int* bad,
                          cudaStream_t stream) {
  ingest_rows<TIn, TStore><<<n, kThreads, 0, stream>>>(static_cast<const TIn*>(in), static_cast<TStore*>(out),
                                                         sqnorm, dim, normalise, bad);
  return cudaGetLastError();
}

template <typename TIn>
cudaError_t launch_prepare(const void* in, float* out, float* sqnorm, int n, int dim, bool normalise, int* bad,
                           cudaStream_t stream) {
  return launch_ingest<TIn, float>(in, out, sqnorm, n, dim, normalise, bad, stream);
}

template <typename TIn>
cudaError_t dispatch_ingest(ElementType store, const void* in, void* out, float* sqnorm, int n, int dim,
                            bool normalise, int* bad, cudaStream_t stream) {
  switch (store) {
    case ElementType::f32: return launch_ingest<TIn, float>(in, out, sqnorm, n, dim, normalise, bad, stream);
    case ElementType::f16: return launch_ingest<TIn, __half>(in, out, sqnorm, n, dim, normalise, bad, stream);
    case ElementType::bf16:
      return launch_ingest<TIn, __nv_bfloat16>(in, out, sqnorm, n, dim, normalise, bad, stream);
  }
  return cudaErrorInvalidValue;
}

// A device allocation released on scope exit, stream-ordered.
class DeviceBuffer {
 public:
  DeviceBuffer(cudaStream_t stream) : stream_(stream) {}
  ~DeviceBuffer() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  cudaError_t allocate(std::size_t bytes) { return cudaMallocAsync(&ptr_, bytes == 0 ? 1 : bytes, stream_); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace

// ---- host side -------------------------------------------------------------------------------

CudaInfo cuda_info() {
  CudaInfo info;
  info.compiled = true;
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);
  cudaError_t err = cudaGetDeviceCount(&info.device_count);
  if (err != cudaSuccess) {
    info.device_count = 0;
    info.error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls are not confused
  }
  return info;
}

Result<void*> device_alloc(int device, std::size_t bytes) {
  DeviceGuard guard(device);
  void* ptr = nullptr;
  VSR_CUDA_TRY(cudaMalloc(&ptr, bytes == 0 ? 1 : bytes), "allocating result memory");
  return ptr;
}

void device_free(int device, void* ptr) noexcept {
  DeviceGuard guard(device);
  cudaFree(ptr);
}

struct GpuFlatIndex::Impl {
  std::size_t dim = 0;
  Metric metric = Metric::inner_product;
  ElementType storage = ElementType::f32;
  int device = 0;
  std::size_t size = 0, capacity = 0;
  void* rows = nullptr;        // capacity x dim storage elements
  float* sqnorm = nullptr;     // capacity
  idx_t* device_ids = nullptr; // capacity
  std::vector<idx_t> ids;      // host copy, row order
  std::unordered_set<idx_t> id_set;
  idx_t next_id = 0;
  std::size_t max_shared = 48 * 1024;
  int sm_count = 1;

  ~Impl() {
    DeviceGuard guard(device);
    cudaFree(rows);
    cudaFree(sqnorm);
    cudaFree(device_ids);
  }

  Status reserve(std::size_t want) {
    if (want <= capacity) return {};
    std::size_t cap = std::max<std::size_t>(want, capacity * 2);
    cap = std::max<std::size_t>(cap, 1024);
    void* new_rows = nullptr;
    float* new_sq = nullptr;
    idx_t* new_ids = nullptr;
    cudaError_t err = cudaMalloc(&new_rows, cap * dim * element_size(storage));
    if (err == cudaSuccess) err = cudaMalloc(&new_sq, cap * sizeof(float));
    if (err == cudaSuccess) err = cudaMalloc(&new_ids, cap * sizeof(idx_t));
    if (err != cudaSuccess) {
      cudaFree(new_rows);
      cudaFree(new_sq);
      cudaFree(new_ids);
      cudaGetLastError();
      return cuda_error(err, "allocating GPU index storage");
    }
    if (size > 0) {
      VSR_CUDA_TRY(cudaMemcpy(new_rows, rows, size * dim * element_size(storage), cudaMemcpyDeviceToDevice), "growing rows");
      VSR_CUDA_TRY(cudaMemcpy(new_sq, sqnorm, size * sizeof(float), cudaMemcpyDeviceToDevice), "growing norms");
      VSR_CUDA_TRY(cudaMemcpy(new_ids, device_ids, size * sizeof(idx_t), cudaMemcpyDeviceToDevice), "growing ids");
    }
    cudaFree(rows);
    cudaFree(sqnorm);
    cudaFree(device_ids);
    rows = new_rows;
    sqnorm = new_sq;
    device_ids = new_ids;
    capacity = cap;
    return {};
  }
};

GpuFlatIndex::GpuFlatIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GpuFlatIndex::~GpuFlatIndex() = default;

Result<std::unique_ptr<GpuFlatIndex>> GpuFlatIndex::create(std::size_t dim, Metric metric, ElementType storage,
                                                            int device) {
  if (dim == 0) return make_error(ErrorCode::invalid_argument, "dim must be positive, got 0");
  CudaInfo info = cuda_info();
  if (info.device_count == 0)
    return make_error(ErrorCode::unsupported, "no CUDA device is available (" + info.error + ")");
  if (device < 0 || device >= info.device_count)
    return make_error(ErrorCode::invalid_argument, "CUDA device " + std::to_string(device) + " does not exist; " +
                                                       std::to_string(info.device_count) + " device(s) present");
  auto impl = std::make_unique<Impl>();
  impl->dim = dim;
  impl->metric = metric;
  impl->storage = storage;
  impl->device = device;
  cudaDeviceProp prop{};
  VSR_CUDA_TRY(cudaGetDeviceProperties(&prop, device), "querying device properties");
  impl->max_shared = prop.sharedMemPerBlockOptin;
  impl->sm_count = prop.multiProcessorCount;
  return std::unique_ptr<GpuFlatIndex>(new GpuFlatIndex(std::move(impl)));
}

std::size_t GpuFlatIndex::dim() const noexcept { return impl_->dim; }
Metric GpuFlatIndex::metric() const noexcept { return impl_->metric; }
ElementType GpuFlatIndex::storage() const noexcept { return impl_->storage; }
int GpuFlatIndex::device() const noexcept { return impl_->device; }
std::size_t GpuFlatIndex::size() const noexcept { return impl_->size; }

static Status check_device_pointer(const void* ptr, int device, const char* what) {
  cudaPointerAttributes attr{};
  cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return make_error(ErrorCode::invalid_argument, std::string(what) + " is not a CUDA device pointer");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    return make_error(ErrorCode::invalid_argument, std::string(what) + " is not in device memory");
  if (attr.device != device)
    return make_error(ErrorCode::invalid_argument, std::string(what) + " is on cuda:" + std::to_string(attr.device) +
                                                       " but the index is on cuda:" + std::to_string(device));
  return {};
}

Status GpuFlatIndex::add(const void* vectors, ElementType type, Memory where, std::size_t n, const idx_t* ids) {
  Impl& m = *impl_;
  if (n == 0) return {};
  if (vectors == nullptr) return make_error(ErrorCode::invalid_argument, "vectors is null");
  if (m.size + n > std::size_t(std::numeric_limits<std::uint32_t>::max() - 1))
    return make_error(ErrorCode::out_of_range, "a GPU index holds at most 2^32 - 2 vectors");
  if (ids) {
    Status id_check = check_new_ids(ids, n, m.id_set);
    if (!id_check.ok()) return id_check;
  }
  DeviceGuard guard(m.device);
  if (where == Memory::device) {
    Status st = check_device_pointer(vectors, m.device, "vectors");
    if (!st.ok()) return st;
  }
  Status st = m.reserve(m.size + n);
  if (!st.ok()) return st;
  cudaStream_t stream = nullptr;
  const std::size_t in_bytes = n * m.dim * element_size(type);
  DeviceBuffer staging(stream), bad(stream);
  const void* src = vectors;
  if (where == Memory::host) {
    VSR_CUDA_TRY(staging.allocate(in_bytes), "allocating staging memory");
    VSR_CUDA_TRY(cudaMemcpyAsync(staging.as<void>(), vectors, in_bytes, cudaMemcpyHostToDevice, stream), "copying vectors");
    src = staging.as<void>();
  }
  VSR_CUDA_TRY(bad.allocate(sizeof(int)), "allocating flag");
  VSR_CUDA_TRY(cudaMemsetAsync(bad.as<int>(), 0, sizeof(int), stream), "clearing flag");
  char* dst = static_cast<char*>(m.rows) + m.size * m.dim * element_size(m.storage);
  const bool normalise = m.metric == Metric::cosine;
  cudaError_t err = cudaSuccess;
  // Batches of rows bound the grid size.
  const std::size_t kBatch = 1 << 20;
  for (std::size_t off = 0; off < n && err == cudaSuccess; off += kBatch) {
    int rows = int(std::min(kBatch, n - off));
    const char* s = static_cast<const char*>(src) + off * m.dim * element_size(type);
    char* d = dst + off * m.dim * element_size(m.storage);
    float* sq = m.sqnorm + m.size + off;
    switch (type) {
      case ElementType::f32: err = dispatch_ingest<float>(m.storage, s, d, sq, rows, int(m.dim), normalise, bad.as<int>(), stream); break;
      case ElementType::f16: err = dispatch_ingest<__half>(m.storage, s, d, sq, rows, int(m.dim), normalise, bad.as<int>(), stream); break;
      case ElementType::bf16: err = dispatch_ingest<__nv_bfloat16>(m.storage, s, d, sq, rows, int(m.dim), normalise, bad.as<int>(), stream); break;
    }
  }
  VSR_CUDA_TRY(err, "launching the ingest kernel");
  int host_bad = 0;
  VSR_CUDA_TRY(cudaMemcpyAsync(&host_bad, bad.as<int>(), sizeof(int), cudaMemcpyDeviceToHost, stream), "reading flag");
  VSR_CUDA_TRY(cudaStreamSynchronize(stream), "ingesting vectors");
  // Rows past `size` are invisible to search, so rejecting here leaves the index unchanged.
  if (host_bad) return make_error(ErrorCode::invalid_argument, "vectors contain NaN or infinity");
  std::vector<idx_t> new_ids(n);
  for (std::size_t i = 0; i < n; ++i) new_ids[i] = ids ? ids[i] : m.next_id + idx_t(i);
  VSR_CUDA_TRY(cudaMemcpy(m.device_ids + m.size, new_ids.data(), n * sizeof(idx_t), cudaMemcpyHostToDevice), "copying ids");
  for (idx_t id : new_ids) {
    m.ids.push_back(id);
    m.id_set.insert(id);
    m.next_id = std::max(m.next_id, id + 1);
  }
  m.size += n;
  return {};
}

Status GpuFlatIndex::search(const void* queries, ElementType type, Memory where, std::size_t nq, std::size_t k,
                            float* scores, idx_t* ids, Memory out_where, void* stream_ptr,
                            GpuSearchStats* stats) const {
  const Impl& m = *impl_;
  if (nq == 0) return {};
  if (k == 0) return make_error(ErrorCode::invalid_argument, "k must be positive");
  if (k > kMaxK)
    return make_error(ErrorCode::invalid_argument, "k = " + std::to_string(k) + " exceeds the GPU maximum of " + std::to_string(kMaxK));
  if (nq > std::size_t(std::numeric_limits<int>::max() / 2)) return make_error(ErrorCode::invalid_argument, "too many queries");
  DeviceGuard guard(m.device);
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (where == Memory::device) {
    Status st = check_device_pointer(queries, m.device, "queries");
    if (!st.ok()) return st;
  }
  if (out_where == Memory::device) {
    Status st = check_device_pointer(scores, m.device, "scores output");
    if (!st.ok()) return st;
    st = check_device_pointer(ids, m.device, "ids output");
    if (!st.ok()) return st;
  }
  const int dim = int(m.dim), ki = int(k);
  const int kp = next_pow2(ki);
  const int cand = next_pow2(kp + kTile);

  // Query tile size: the largest of 8/4/2/1 whose shared memory fits the device.
  auto smem_for = [&](int qb) { return std::size_t(qb) * (std::size_t(dim) * 4 + std::size_t(cand) * 8); };
  int qb = 8;
  while (qb > 1 && (smem_for(qb) > m.max_shared || (nq < std::size_t(qb) && qb > 1))) qb >>= 1;
  if (smem_for(qb) > m.max_shared)
    return make_error(ErrorCode::unsupported, "dim " + std::to_string(dim) + " with k " + std::to_string(k) +
                                                  " needs more shared memory than this GPU has per block");
  const int query_tiles = int((nq + qb - 1) / qb);
  const std::uint32_t n = std::uint32_t(m.size);
  // Enough blocks to fill the GPU about four times over, but chunks no smaller than one tile.
  int chunks = std::max(1, (4 * m.sm_count + query_tiles - 1) / query_tiles);
  chunks = std::min<int>(chunks, std::max<std::uint32_t>(1, (n + kTile - 1) / kTile));
  std::uint32_t rows_per_chunk = std::max<std::uint32_t>(1, (n + chunks - 1) / chunks);
  rows_per_chunk = (rows_per_chunk + kTile - 1) / kTile * kTile;

  DeviceBuffer q_in(stream), q_f32(stream), q_sq(stream), bad(stream), part_s(stream), part_p(stream), out_s(stream),
      out_i(stream);
  const void* qsrc = queries;
  const std::size_t q_bytes = nq * m.dim * element_size(type);
  if (where == Memory::host) {
    VSR_CUDA_TRY(q_in.allocate(q_bytes), "allocating query memory");
    VSR_CUDA_TRY(cudaMemcpyAsync(q_in.as<void>(), queries, q_bytes, cudaMemcpyHostToDevice, stream), "copying queries");
    qsrc = q_in.as<void>();
  }
  VSR_CUDA_TRY(q_f32.allocate(nq * m.dim * sizeof(float)), "allocating query memory");
  VSR_CUDA_TRY(q_sq.allocate(nq * sizeof(float)), "allocating query norms");
  VSR_CUDA_TRY(bad.allocate(sizeof(int)), "allocating flag");
  VSR_CUDA_TRY(cudaMemsetAsync(bad.as<int>(), 0, sizeof(int), stream), "clearing flag");
  const bool normalise = m.metric == Metric::cosine;
  cudaError_t err = cudaSuccess;
  switch (type) {
    case ElementType::f32: err = launch_prepare<float>(qsrc, q_f32.as<float>(), q_sq.as<float>(), int(nq), dim, normalise, bad.as<int>(), stream); break;
    case ElementType::f16: err = launch_prepare<__half>(qsrc, q_f32.as<float>(), q_sq.as<float>(), int(nq), dim, normalise, bad.as<int>(), stream); break;
    case ElementType::bf16: err = launch_prepare<__nv_bfloat16>(qsrc, q_f32.as<float>(), q_sq.as<float>(), int(nq), dim, normalise, bad.as<int>(), stream); break;
  }
  VSR_CUDA_TRY(err, "launching query preparation");
  int host_bad = 0;
  VSR_CUDA_TRY(cudaMemcpyAsync(&host_bad, bad.as<int>(), sizeof(int), cudaMemcpyDeviceToHost, stream), "reading flag");
  VSR_CUDA_TRY(cudaStreamSynchronize(stream), "preparing queries");
  if (host_bad) return make_error(ErrorCode::invalid_argument, "queries contain NaN or infinity");

  const std::size_t part = nq * std::size_t(chunks) * k;
  VSR_CUDA_TRY(part_s.allocate(part * sizeof(float)), "allocating partial top-k");
  VSR_CUDA_TRY(part_p.allocate(part * sizeof(std::uint32_t)), "allocating partial top-k");
  ScanArgs a{m.rows, m.sqnorm, q_f32.as<float>(), int(nq), dim, ki, kp, cand, n, rows_per_chunk,
             m.metric == Metric::l2, part_s.as<float>(), part_p.as<std::uint32_t>()};
  const std::size_t smem = smem_for(qb);
  switch (m.storage) {
    case ElementType::f32: err = dispatch_scan<float>(a, qb, chunks, smem, stream); break;
    case ElementType::f16: err = dispatch_scan<__half>(a, qb, chunks, smem, stream); break;
    case ElementType::bf16: err = dispatch_scan<__nv_bfloat16>(a, qb, chunks, smem, stream); break;
  }
  VSR_CUDA_TRY(err, "launching the scan kernel");

  float* dst_s = scores;
  idx_t* dst_i = ids;
  if (out_where == Memory::host) {
    VSR_CUDA_TRY(out_s.allocate(nq * k * sizeof(float)), "allocating results");
    VSR_CUDA_TRY(out_i.allocate(nq * k * sizeof(idx_t)), "allocating results");
    dst_s = out_s.as<float>();
    dst_i = out_i.as<idx_t>();
  }
  const int merge_cand = next_pow2(kp + std::max(kTile, kp));
  const std::size_t merge_smem = std::size_t(merge_cand) * 8;
  VSR_CUDA_TRY(cudaFuncSetAttribute(merge_topk, cudaFuncAttributeMaxDynamicSharedMemorySize, int(merge_smem)),
               "configuring the merge kernel");
  merge_topk<<<int(nq), kThreads, merge_smem, stream>>>(part_s.as<float>(), part_p.as<std::uint32_t>(), chunks, ki, kp,
                                                        merge_cand, m.device_ids, q_sq.as<float>(),
                                                        m.metric == Metric::l2, dst_s, dst_i);
  VSR_CUDA_TRY(cudaGetLastError(), "launching the merge kernel");
  if (out_where == Memory::host) {
    VSR_CUDA_TRY(cudaMemcpyAsync(scores, dst_s, nq * k * sizeof(float), cudaMemcpyDeviceToHost, stream), "copying scores");
    VSR_CUDA_TRY(cudaMemcpyAsync(ids, dst_i, nq * k * sizeof(idx_t), cudaMemcpyDeviceToHost, stream), "copying ids");
    VSR_CUDA_TRY(cudaStreamSynchronize(stream), "searching");
  }
  // Without an explicit stream the call is synchronous, so results can be handed out at once.
  if (stream == nullptr && out_where == Memory::device) VSR_CUDA_TRY(cudaStreamSynchronize(stream), "searching");
  if (stats) {
    stats->blocks = std::size_t(chunks) * query_tiles;
    stats->partial_lists = std::size_t(chunks);
  }
  return {};
}

Status GpuFlatIndex::ids(idx_t* out) const {
  std::copy(impl_->ids.begin(), impl_->ids.end(), out);
  return {};
}

}  // namespace vsr
