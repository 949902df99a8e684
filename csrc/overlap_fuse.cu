// Launch glue of overlap_fuse: picks the element type and the widest aligned vector access.
#include <algorithm>

#include "vin/overlap_fuse.cuh"

namespace vin {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loop covers the rest

bool aligned(const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Widest VEC (elements per access, 16 bytes at most) that every pointer, stride and the row allow.
template <typename T>
int vector_width(const OverlapFuseParams& p) {
  int vec = static_cast<int>(16 / sizeof(T));
  const int64_t strides[] = {p.eps_stride_batch, p.eps_stride_window, p.eps_stride_pos, p.x_stride_batch,
                             p.x_stride_1,       p.x_stride_2,        p.out_stride_batch, p.out_stride_1,
                             p.out_stride_2,     p.features};
  while (vec > 1) {
    const int64_t bytes = vec * static_cast<int64_t>(sizeof(T));
    bool ok = aligned(p.eps, bytes) && aligned(p.out, bytes) && (p.x == nullptr || aligned(p.x, bytes));
    for (int64_t s : strides) ok = ok && (s % vec == 0);
    if (ok) break;
    vec /= 2;
  }
  return vec;
}

template <typename T, int VEC>
cudaError_t launch_typed(const OverlapFuseParams& p, cudaStream_t stream) {
  const int64_t total = p.batch * p.num_frames * (p.features / VEC);
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
  overlap_fuse_kernel<T, VEC><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_vectorized(const OverlapFuseParams& p, cudaStream_t stream) {
  const int vec = vector_width<T>(p);
  if constexpr (sizeof(T) == 2) {
    if (vec == 8) return launch_typed<T, 8>(p, stream);
  }
  if (vec == 4) return launch_typed<T, 4>(p, stream);
  if (vec == 2) return launch_typed<T, 2>(p, stream);
  return launch_typed<T, 1>(p, stream);
}

}  // namespace

cudaError_t launch_overlap_fuse(const OverlapFuseParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.num_frames == 0 || p.features == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat32: return launch_vectorized<float>(p, stream);
    case DType::kFloat16: return launch_vectorized<__half>(p, stream);
    case DType::kBFloat16: return launch_vectorized<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vin
