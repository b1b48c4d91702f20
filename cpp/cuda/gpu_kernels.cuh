// Device code of the GPU flat index: element conversion, query preparation, the fused
// distance + top-k scan and the merge of per-block top-k lists.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace vsr {
namespace gpu {

constexpr int kThreads = 256;          // threads per block in every kernel
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 256;             // rows scored between two top-k merges
constexpr std::uint32_t kNoPos = 0xffffffffu;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Block-wide sum; every thread gets the result. `scratch` holds kWarps floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  return total;
}

// A candidate orders before another when its score is higher, ties to the lower row position.
__device__ __forceinline__ bool before(float sa, std::uint32_t pa, float sb, std::uint32_t pb) {
  return sa > sb || (sa == sb && pa < pb);
}

// Bitonic sort of n (a power of two) candidates in shared memory, best first. All threads of the
// block take part; the caller synchronises before and after.
__device__ void bitonic_sort(float* score, std::uint32_t* pos, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
        int lo = 2 * i - (i & (stride - 1));
        int hi = lo + stride;
        bool descending_run = (lo & size) == 0;
        bool swap = descending_run ? before(score[hi], pos[hi], score[lo], pos[lo])
                                   : before(score[lo], pos[lo], score[hi], pos[hi]);
        if (swap) {
          float ts = score[lo];
          score[lo] = score[hi];
          score[hi] = ts;
          std::uint32_t tp = pos[lo];
          pos[lo] = pos[hi];
          pos[hi] = tp;
        }
      }
      __syncthreads();
    }
  }
}

}  // namespace gpu
}  // namespace vsr
