// Host-side interface of the CUDA kernels: parameter structs and launchers. Plain C++ (no device
// code), so the pybind11 bindings compile with the host compiler.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace vin {

// Dtype codes shared with vin_kernels/cuda.py (DTYPE_CODES).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// ---- overlap_fuse (kernel: overlap_fuse.cuh) ----
struct OverlapFuseParams {
  const void* eps;  // [B, n, L, C]; strides in elements, C packed
  int64_t eps_stride_batch, eps_stride_window, eps_stride_pos;
  const void* x;  // [B, F, C] (frames), [B, n, L, C] (x_windows) or nullptr
  int64_t x_stride_batch, x_stride_1, x_stride_2;  // x_stride_2: position stride of windowed x
  void* out;  // [B, F, C] or [B, n, L, C]
  int64_t out_stride_batch, out_stride_1, out_stride_2;
  const int32_t* frame_ptr;   // [F + 1]
  const int32_t* entry_window;  // [E]
  const int32_t* entry_pos;   // [E]
  const float* entry_weight;  // [E]
  int64_t batch, num_frames, features;
  float coef_a, coef_b;  // value = coef_a * x + coef_b * fused when x is given
  bool x_windows;  // read frame f of x at its first entry's (window, position)
  bool out_windows;
  DType dtype;
};

// Launches overlap_fuse on `stream`; returns the launch error (cudaSuccess if none).
cudaError_t launch_overlap_fuse(const OverlapFuseParams& params, cudaStream_t stream);

}  // namespace vin
