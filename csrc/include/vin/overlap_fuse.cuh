// overlap_fuse: blend per-window predictions into the video with precomputed weights, optionally
// fused with the sampler update and written back as windows. One pass over memory.
//
// For every (batch b, frame f, feature c):
//   fused = sum_{e in frame_ptr[f] .. frame_ptr[f+1]} weight[e] * eps[b, window[e], position[e], c]
//   value = x ? coef_a * x[b, f, c] + coef_b * fused : fused
//           (x_windows: x[b, window[e0], position[e0], c] with e0 = frame_ptr[f], the frame's first window)
//   out[b, f, c] = value                                          (out_windows == false)
//   out[b, window[e], position[e], c] = value  for every entry e  (out_windows == true)
// The CSR table (frame_ptr, window, position, weight) comes from ChunkLayout.fusion_table; the
// kernel holds no index math of its own. Accumulation is in fp32.
#pragma once

#include <cstdint>

#include "vin/dtype.cuh"
#include "vin/launchers.h"

namespace vin {

template <typename T, int VEC>
__global__ void overlap_fuse_kernel(const OverlapFuseParams p) {
  const T* __restrict__ eps = static_cast<const T*>(p.eps);
  const T* __restrict__ x = static_cast<const T*>(p.x);
  T* __restrict__ out = static_cast<T*>(p.out);
  const int64_t vecs_per_row = p.features / VEC;
  const int64_t total = p.batch * p.num_frames * vecs_per_row;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int64_t c = (idx % vecs_per_row) * VEC;
    const int64_t row = idx / vecs_per_row;
    const int64_t f = row % p.num_frames;
    const int64_t b = row / p.num_frames;
    const int e_begin = p.frame_ptr[f];
    const int e_end = p.frame_ptr[f + 1];

    float acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = 0.f;
    for (int e = e_begin; e < e_end; ++e) {
      float vals[VEC];
      load_floats<T, VEC>(eps + b * p.eps_stride_batch + p.entry_window[e] * p.eps_stride_window +
                              p.entry_pos[e] * p.eps_stride_pos + c,
                          vals);
      const float w = p.entry_weight[e];
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = fmaf(w, vals[j], acc[j]);
    }
    if (x != nullptr) {
      const int64_t x_row = p.x_windows
                                ? p.entry_window[e_begin] * p.x_stride_1 + p.entry_pos[e_begin] * p.x_stride_2
                                : f * p.x_stride_1;
      float xs[VEC];
      load_floats<T, VEC>(x + b * p.x_stride_batch + x_row + c, xs);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = p.coef_a * xs[j] + p.coef_b * acc[j];
    }
    if (p.out_windows) {
      for (int e = e_begin; e < e_end; ++e) {
        store_floats<T, VEC>(out + b * p.out_stride_batch + p.entry_window[e] * p.out_stride_1 +
                                 p.entry_pos[e] * p.out_stride_2 + c,
                             acc);
      }
    } else {
      store_floats<T, VEC>(out + b * p.out_stride_batch + f * p.out_stride_1 + c, acc);
    }
  }
}

}  // namespace vin
