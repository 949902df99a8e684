// The one pybind11 module, vin_kernels._C. It does not link libtorch: every launcher takes raw
// device pointers, sizes and strides (in elements), a dtype code and the CUDA stream as integers.
// A CUDA error becomes a Python RuntimeError.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "vin/launchers.h"

namespace py = pybind11;

#ifndef VIN_CUDA_ARCHS
#define VIN_CUDA_ARCHS "unknown"
#endif

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("vin_kernels._C.") + what + ": CUDA error " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}

template <typename T>
T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

vin::DType as_dtype(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
  return static_cast<vin::DType>(code);
}

// Number of CUDA devices the runtime sees; 0 (not an error) when there is no driver or device.
int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

int runtime_version() {
  int version = 0;
  check(cudaRuntimeGetVersion(&version), "runtime_version");
  return version;
}

void overlap_fuse(std::uintptr_t eps, int64_t eps_stride_batch, int64_t eps_stride_window, int64_t eps_stride_pos,
                  std::uintptr_t x, int64_t x_stride_batch, int64_t x_stride_1, int64_t x_stride_2,
                  bool x_windows, std::uintptr_t out,
                  int64_t out_stride_batch, int64_t out_stride_1, int64_t out_stride_2, std::uintptr_t frame_ptr,
                  std::uintptr_t entry_window, std::uintptr_t entry_pos, std::uintptr_t entry_weight, int64_t batch,
                  int64_t num_frames, int64_t features, double coef_a, double coef_b, bool out_windows,
                  int dtype, std::uintptr_t stream) {
  const vin::DType element_type = as_dtype(dtype);
  if (eps == 0 || out == 0 || frame_ptr == 0 || entry_window == 0 || entry_pos == 0 || entry_weight == 0) {
    throw std::invalid_argument("overlap_fuse: a required device pointer is null");
  }
  if (batch < 0 || num_frames < 0 || features < 0) throw std::invalid_argument("overlap_fuse: negative size");
  vin::OverlapFuseParams p{};
  p.eps = as_ptr<const void>(eps);
  p.eps_stride_batch = eps_stride_batch;
  p.eps_stride_window = eps_stride_window;
  p.eps_stride_pos = eps_stride_pos;
  p.x = x ? as_ptr<const void>(x) : nullptr;
  p.x_stride_batch = x_stride_batch;
  p.x_stride_1 = x_stride_1;
  p.x_stride_2 = x_stride_2;
  p.x_windows = x_windows;
  p.out = as_ptr<void>(out);
  p.out_stride_batch = out_stride_batch;
  p.out_stride_1 = out_stride_1;
  p.out_stride_2 = out_stride_2;
  p.frame_ptr = as_ptr<const int32_t>(frame_ptr);
  p.entry_window = as_ptr<const int32_t>(entry_window);
  p.entry_pos = as_ptr<const int32_t>(entry_pos);
  p.entry_weight = as_ptr<const float>(entry_weight);
  p.batch = batch;
  p.num_frames = num_frames;
  p.features = features;
  p.coef_a = static_cast<float>(coef_a);
  p.coef_b = static_cast<float>(coef_b);
  p.out_windows = out_windows;
  p.dtype = element_type;
  check(vin::launch_overlap_fuse(p, reinterpret_cast<cudaStream_t>(stream)), "overlap_fuse");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "vin-kernels CUDA kernels (raw-pointer launchers; see vin_kernels/cuda.py)";
  m.attr("compiled_archs") = VIN_CUDA_ARCHS;
  m.def("device_count", &device_count, "CUDA devices visible to the runtime (0 without driver or GPU).");
  m.def("runtime_version", &runtime_version, "CUDA runtime version the module was built against.");
  m.def("overlap_fuse", &overlap_fuse, "Blend windows (see csrc/include/vin/overlap_fuse.cuh).", py::arg("eps"),
        py::arg("eps_stride_batch"), py::arg("eps_stride_window"), py::arg("eps_stride_pos"), py::arg("x"),
        py::arg("x_stride_batch"), py::arg("x_stride_1"), py::arg("x_stride_2"), py::arg("x_windows"), py::arg("out"), py::arg("out_stride_batch"),
        py::arg("out_stride_1"), py::arg("out_stride_2"), py::arg("frame_ptr"), py::arg("entry_window"),
        py::arg("entry_pos"), py::arg("entry_weight"), py::arg("batch"), py::arg("num_frames"),
        py::arg("features"), py::arg("coef_a"), py::arg("coef_b"), py::arg("out_windows"), py::arg("dtype"),
        py::arg("stream"));
}
