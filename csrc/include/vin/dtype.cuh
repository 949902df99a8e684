// Element types the kernels take: conversions to and from float, packed vector access.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace vin {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// VEC elements moved as one aligned access (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Packed {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_floats(const T* src, float (&dst)[VEC]) {
  const Packed<T, VEC> packed = *reinterpret_cast<const Packed<T, VEC>*>(src);
#pragma unroll
  for (int j = 0; j < VEC; ++j) dst[j] = to_float(packed.v[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_floats(T* dst, const float (&src)[VEC]) {
  Packed<T, VEC> packed;
#pragma unroll
  for (int j = 0; j < VEC; ++j) packed.v[j] = from_float<T>(src[j]);
  *reinterpret_cast<Packed<T, VEC>*>(dst) = packed;
}

}  // namespace vin
