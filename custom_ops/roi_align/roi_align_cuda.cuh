// CUDA kernels of RoIAlign (forward and backward), with no TensorFlow include.
//
// Compiled three ways:
//   * by nvcc inside the TensorFlow GPU kernels (roi_align_op_gpu.cu.cc), through the templated
//     launch helpers `kmask::cuda::launch_roi_align_forward/backward/cast`;
//   * by NVRTC (CuPy RawModule), through the extern "C" kernels below, where TensorFlow is absent;
//   * by a plain host compiler pass of nvcc: the per-element functions are __host__ __device__,
//     so tests can run them in a loop on a machine with no GPU.
//
// Layout and box format (see roi_align_common.h for the sampling rules):
//   features      [batch, height, width, channels]            NHWC, element type T
//   boxes         [num_boxes, 4] float32                       (y1, x1, y2, x2), input pixels
//   box_indices   [num_boxes] int32                            image of each box
//   output/grads  [num_boxes, pooled_h, pooled_w, channels]    element type T
//   grad_accum    [batch, height, width, channels]             float (double when T = double)
//
// Element types: float, double, and two 16-bit types stored as raw bits so that no CUDA
// header is needed (NVRTC and CuPy compile this file as is):
//   kmask::cuda::half_bits     IEEE binary16 (layout of __half, Eigen::half, numpy.float16)
//   kmask::cuda::bfloat16_bits bfloat16      (layout of __nv_bfloat16, Eigen::bfloat16)
// With KMASK_WITH_CUDA_FP16 defined, __half and __nv_bfloat16 are accepted as well
// (cuda_fp16.h / cuda_bf16.h are included then).
//
// Accumulation is in float, or double for double features. Backward scatters with atomicAdd,
// so the GPU gradient is not bitwise deterministic (summation order varies between runs).
//
// Behaviour on bad input, on the GPU (the CPU kernel validates and raises instead):
//   * a box index outside [0, batch) pools zeros and receives no gradient;
//   * a box with a NaN or infinite coordinate pools zeros and receives no gradient;
//   * an empty RoI with adaptive sampling (aligned=True, zero or negative size, sampling_ratio
//     <= 0) has no samples and pools zeros. With sampling_ratio > 0 a zero-size aligned RoI
//     samples its single point, as torchvision and ONNX do.
#ifndef KMASK_ROI_ALIGN_CUDA_CUH_
#define KMASK_ROI_ALIGN_CUDA_CUH_

#include "roi_align_common.h"

#if defined(KMASK_WITH_CUDA_FP16) && !defined(__CUDACC_RTC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#define KMASK_CUDA_THREADS 256

namespace kmask {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// Element types and conversions.

struct __align__(2) half_bits {
  unsigned short x;
};
struct __align__(2) bfloat16_bits {
  unsigned short x;
};

KMASK_HD float float_from_bits(unsigned int u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

KMASK_HD unsigned int bits_from_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  unsigned int u;
  __builtin_memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

// IEEE binary16 -> float (exact).
KMASK_HD float half_bits_to_float(unsigned short h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  const unsigned int sign = (static_cast<unsigned int>(h) & 0x8000u) << 16;
  const unsigned int exponent = (h >> 10) & 0x1fu;
  const unsigned int mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return float_from_bits(sign | 0x7f800000u | (mantissa << 13));
  return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
#endif
}

// float -> IEEE binary16, round to nearest even; overflow gives inf, NaN stays NaN.
KMASK_HD unsigned short float_to_half_bits(float f) {
#if defined(__CUDA_ARCH__)
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  unsigned int u = bits_from_float(f);
  const unsigned short sign = static_cast<unsigned short>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u >= 0x7f800000u) return sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (u >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (u < 0x38800000u) {                        // below 2^-14: subnormal half or zero
    if (u <= 0x33000000u) return sign;          // <= 2^-25 rounds to zero
    const unsigned int exponent = u >> 23;
    const unsigned int mantissa = (u & 0x7fffffu) | 0x800000u;
    const unsigned int shift = 126u - exponent;  // 14..24
    unsigned int r = mantissa >> shift;
    const unsigned int rest = mantissa & ((1u << shift) - 1u);
    const unsigned int halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (r & 1u))) ++r;
    return sign | static_cast<unsigned short>(r);
  }
  unsigned int r = (u - 0x38000000u) >> 13;  // rebias exponent 127 -> 15
  const unsigned int rest = u & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;
  return sign | static_cast<unsigned short>(r);
#endif
}

// bfloat16 is the top half of a float.
KMASK_HD float bfloat16_bits_to_float(unsigned short b) {
  return float_from_bits(static_cast<unsigned int>(b) << 16);
}

// float -> bfloat16, round to nearest even; NaN stays a quiet NaN.
KMASK_HD unsigned short float_to_bfloat16_bits(float f) {
  const unsigned int u = bits_from_float(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((u >> 16) | 0x40u);
  const unsigned int rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return static_cast<unsigned short>(rounded >> 16);
}

// Accumulation type and load/store per element type.
template <typename T>
struct Elem;

template <>
struct Elem<float> {
  typedef float Acc;
  static KMASK_HD float load(const float* p) { return *p; }
  static KMASK_HD void store(float* p, float v) { *p = v; }
};

template <>
struct Elem<double> {
  typedef double Acc;
  static KMASK_HD double load(const double* p) { return *p; }
  static KMASK_HD void store(double* p, double v) { *p = v; }
};

template <>
struct Elem<half_bits> {
  typedef float Acc;
  static KMASK_HD float load(const half_bits* p) { return half_bits_to_float(p->x); }
  static KMASK_HD void store(half_bits* p, float v) { p->x = float_to_half_bits(v); }
};

template <>
struct Elem<bfloat16_bits> {
  typedef float Acc;
  static KMASK_HD float load(const bfloat16_bits* p) { return bfloat16_bits_to_float(p->x); }
  static KMASK_HD void store(bfloat16_bits* p, float v) { p->x = float_to_bfloat16_bits(v); }
};

#if defined(KMASK_WITH_CUDA_FP16)
template <>
struct Elem<__half> {
  typedef float Acc;
  static __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
  static __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
};

template <>
struct Elem<__nv_bfloat16> {
  typedef float Acc;
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) {
    return __bfloat162float(*p);
  }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float v) {
    *p = __float2bfloat16_rn(v);
  }
};
#endif  // KMASK_WITH_CUDA_FP16

// atomicAdd on the device; a plain add in a host pass (tests run elements sequentially).
KMASK_HD void accumulate(float* address, float value) {
#if defined(__CUDA_ARCH__)
  atomicAdd(address, value);
#else
  *address += value;
#endif
}

KMASK_HD void accumulate(double* address, double value) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 600
  atomicAdd(address, value);
#elif defined(__CUDA_ARCH__)
  unsigned long long* bits = reinterpret_cast<unsigned long long*>(address);
  unsigned long long old = *bits, assumed;
  do {
    assumed = old;
    old = atomicCAS(bits, assumed,
                    __double_as_longlong(value + __longlong_as_double(assumed)));
  } while (assumed != old);
#else
  *address += value;
#endif
}

// ---------------------------------------------------------------------------------------------
// Shapes of one call (plain data, passed by value to kernels).

struct KernelArgs {
  int batch, height, width, channels;
  int num_boxes, pooled_h, pooled_w;
  float spatial_scale;
  int sampling_ratio;
  int aligned;  // 0 or 1
};

KMASK_HD KernelArgs make_kernel_args(int batch, int height, int width, int channels,
                                     int num_boxes, int pooled_h, int pooled_w,
                                     float spatial_scale, int sampling_ratio, int aligned) {
  KernelArgs a;
  a.batch = batch;
  a.height = height;
  a.width = width;
  a.channels = channels;
  a.num_boxes = num_boxes;
  a.pooled_h = pooled_h;
  a.pooled_w = pooled_w;
  a.spatial_scale = spatial_scale;
  a.sampling_ratio = sampling_ratio;
  a.aligned = aligned;
  return a;
}

// Number of elements of the output (== of the incoming gradient).
KMASK_HD long long output_elements(const KernelArgs& a) {
  return static_cast<long long>(a.num_boxes) * a.pooled_h * a.pooled_w * a.channels;
}

// Position of one output element [k, ph, pw, c] and the geometry of its box.
struct ElementSite {
  int k, ph, pw, c;
  int image;  // -1 when box_indices[k] is out of [0, batch)
  RoiGeometry geometry;
};

KMASK_HD ElementSite element_site(long long index, const KernelArgs& a, const float* boxes,
                                  const int* box_indices) {
  ElementSite s;
  s.c = static_cast<int>(index % a.channels);
  long long rest = index / a.channels;
  s.pw = static_cast<int>(rest % a.pooled_w);
  rest /= a.pooled_w;
  s.ph = static_cast<int>(rest % a.pooled_h);
  s.k = static_cast<int>(rest / a.pooled_h);
  const int image = box_indices[s.k];
  s.image = (image >= 0 && image < a.batch) ? image : -1;
  s.geometry = roi_geometry(boxes + 4 * static_cast<long long>(s.k), a.spatial_scale,
                            a.pooled_h, a.pooled_w, a.sampling_ratio, a.aligned != 0);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Per-element work, shared by the kernels and the host test harness.

// output[index] = mean over the bin's samples of the bilinear feature value.
template <typename T>
KMASK_HD void roi_align_forward_element(long long index, const KernelArgs& a, const T* features,
                                        const float* boxes, const int* box_indices, T* output) {
  typedef typename Elem<T>::Acc Acc;
  const ElementSite s = element_site(index, a, boxes, box_indices);
  const RoiGeometry& g = s.geometry;
  const int count = g.grid_h * g.grid_w;
  Acc total = Acc(0);
  if (s.image >= 0 && count > 0) {
    const long long row_stride = static_cast<long long>(a.width) * a.channels;
    const T* plane = features + static_cast<long long>(s.image) * a.height * row_stride + s.c;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      const AxisSample sy =
          axis_sample(sample_coord(g.start_h, g.bin_h, s.ph, iy, g.grid_h), a.height);
      if (!sy.valid) continue;
      const T* row_lo = plane + sy.lo * row_stride;
      const T* row_hi = plane + sy.hi * row_stride;
      for (int ix = 0; ix < g.grid_w; ++ix) {
        const AxisSample sx =
            axis_sample(sample_coord(g.start_w, g.bin_w, s.pw, ix, g.grid_w), a.width);
        if (!sx.valid) continue;
        const long long x_lo = static_cast<long long>(sx.lo) * a.channels;
        const long long x_hi = static_cast<long long>(sx.hi) * a.channels;
        const Acc top = Acc(sx.w_lo) * Acc(Elem<T>::load(row_lo + x_lo)) +
                        Acc(sx.w_hi) * Acc(Elem<T>::load(row_lo + x_hi));
        const Acc bottom = Acc(sx.w_lo) * Acc(Elem<T>::load(row_hi + x_lo)) +
                           Acc(sx.w_hi) * Acc(Elem<T>::load(row_hi + x_hi));
        total += Acc(sy.w_lo) * top + Acc(sy.w_hi) * bottom;
      }
    }
    total /= Acc(count);
  }
  Elem<T>::store(output + index, total);
}

// Scatters grads[index] into grad_accum [batch, height, width, channels] with the bilinear
// weights of the bin's samples, divided by the sample count (adjoint of the forward).
template <typename T, typename Acc>
KMASK_HD void roi_align_backward_element(long long index, const KernelArgs& a, const T* grads,
                                         const float* boxes, const int* box_indices,
                                         Acc* grad_accum) {
  const ElementSite s = element_site(index, a, boxes, box_indices);
  const RoiGeometry& g = s.geometry;
  const int count = g.grid_h * g.grid_w;
  if (s.image < 0 || count <= 0) return;
  const Acc scaled = Acc(Elem<T>::load(grads + index)) / Acc(count);
  if (scaled == Acc(0)) return;
  const long long row_stride = static_cast<long long>(a.width) * a.channels;
  Acc* plane = grad_accum + static_cast<long long>(s.image) * a.height * row_stride + s.c;
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const AxisSample sy =
        axis_sample(sample_coord(g.start_h, g.bin_h, s.ph, iy, g.grid_h), a.height);
    if (!sy.valid) continue;
    Acc* row_lo = plane + sy.lo * row_stride;
    Acc* row_hi = plane + sy.hi * row_stride;
    const Acc g_lo = scaled * Acc(sy.w_lo);
    const Acc g_hi = scaled * Acc(sy.w_hi);
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const AxisSample sx =
          axis_sample(sample_coord(g.start_w, g.bin_w, s.pw, ix, g.grid_w), a.width);
      if (!sx.valid) continue;
      const long long x_lo = static_cast<long long>(sx.lo) * a.channels;
      const long long x_hi = static_cast<long long>(sx.hi) * a.channels;
      // Weights that are exactly 0 (a sample on a pixel row/column) add nothing: skip the
      // atomic, which also keeps the clamped edge (lo == hi) from adding twice needlessly.
      if (g_lo != Acc(0)) {
        if (sx.w_lo != 0.0f) accumulate(row_lo + x_lo, g_lo * Acc(sx.w_lo));
        if (sx.w_hi != 0.0f) accumulate(row_lo + x_hi, g_lo * Acc(sx.w_hi));
      }
      if (g_hi != Acc(0)) {
        if (sx.w_lo != 0.0f) accumulate(row_hi + x_lo, g_hi * Acc(sx.w_lo));
        if (sx.w_hi != 0.0f) accumulate(row_hi + x_hi, g_hi * Acc(sx.w_hi));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Templated kernels (grid-stride loops, one thread per output element).

template <typename T>
__global__ void __launch_bounds__(KMASK_CUDA_THREADS)
    roi_align_forward_kernel(KernelArgs a, const T* __restrict__ features,
                             const float* __restrict__ boxes,
                             const int* __restrict__ box_indices, T* __restrict__ output) {
  const long long total = output_elements(a);
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(blockDim.x) * gridDim.x) {
    roi_align_forward_element<T>(i, a, features, boxes, box_indices, output);
  }
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(KMASK_CUDA_THREADS)
    roi_align_backward_kernel(KernelArgs a, const T* __restrict__ grads,
                              const float* __restrict__ boxes,
                              const int* __restrict__ box_indices, Acc* grad_accum) {
  const long long total = output_elements(a);
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long long>(blockDim.x) * gridDim.x) {
    roi_align_backward_element<T, Acc>(i, a, grads, boxes, box_indices, grad_accum);
  }
}

// dst[i] = (T) src[i], for turning the float accumulation buffer into a 16-bit gradient.
template <typename T, typename Acc>
__global__ void __launch_bounds__(KMASK_CUDA_THREADS)
    cast_kernel(long long n, const Acc* __restrict__ src, T* __restrict__ dst) {
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(blockDim.x) * gridDim.x) {
    Elem<T>::store(dst + i, src[i]);
  }
}

template <typename Acc>
__global__ void __launch_bounds__(KMASK_CUDA_THREADS) zero_kernel(long long n, Acc* dst) {
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(blockDim.x) * gridDim.x) {
    dst[i] = Acc(0);
  }
}

// Blocks for `n` elements with KMASK_CUDA_THREADS threads each; the grid-stride loops cover
// the rest when the count is capped.
KMASK_HD unsigned int grid_blocks(long long n) {
  const long long max_blocks = 1LL << 20;
  long long blocks = (n + KMASK_CUDA_THREADS - 1) / KMASK_CUDA_THREADS;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks < max_blocks ? blocks : max_blocks);
}

// ---------------------------------------------------------------------------------------------
// Host launch helpers (nvcc only; NVRTC has no host code). They enqueue on `stream` and return
// the launch error, if any.
#if !defined(__CUDACC_RTC__)

// output [num_boxes, pooled_h, pooled_w, channels] is fully written.
template <typename T>
cudaError_t launch_roi_align_forward(cudaStream_t stream, const KernelArgs& a, const T* features,
                                     const float* boxes, const int* box_indices, T* output) {
  const long long n = output_elements(a);
  if (n == 0) return cudaSuccess;
  roi_align_forward_kernel<T>
      <<<grid_blocks(n), KMASK_CUDA_THREADS, 0, stream>>>(a, features, boxes, box_indices, output);
  return cudaGetLastError();
}

// Zeroes grad_accum [batch, height, width, channels] and scatters grads into it.
template <typename T, typename Acc>
cudaError_t launch_roi_align_backward(cudaStream_t stream, const KernelArgs& a, const T* grads,
                                      const float* boxes, const int* box_indices,
                                      Acc* grad_accum) {
  const long long accum_n =
      static_cast<long long>(a.batch) * a.height * a.width * a.channels;
  if (accum_n > 0) {
    zero_kernel<Acc><<<grid_blocks(accum_n), KMASK_CUDA_THREADS, 0, stream>>>(accum_n,
                                                                              grad_accum);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  const long long n = output_elements(a);
  if (n == 0 || accum_n == 0) return cudaSuccess;
  roi_align_backward_kernel<T, Acc><<<grid_blocks(n), KMASK_CUDA_THREADS, 0, stream>>>(
      a, grads, boxes, box_indices, grad_accum);
  return cudaGetLastError();
}

// dst[i] = (T) src[i] for i < n.
template <typename T, typename Acc>
cudaError_t launch_cast(cudaStream_t stream, long long n, const Acc* src, T* dst) {
  if (n == 0) return cudaSuccess;
  cast_kernel<T, Acc><<<grid_blocks(n), KMASK_CUDA_THREADS, 0, stream>>>(n, src, dst);
  return cudaGetLastError();
}

#endif  // !__CUDACC_RTC__

}  // namespace cuda
}  // namespace kmask

// ---------------------------------------------------------------------------------------------
// extern "C" kernels for CuPy RawModule / NVRTC (looked up by name). Define
// KMASK_NO_EXTERN_C_KERNELS to leave them out (the TensorFlow build does: it uses the templates,
// and extern "C" kernels in a header would clash if two translation units included it). Scalar arguments, in order:
//   (features|grads, boxes, box_indices, out|grad_accum,
//    batch, height, width, channels, num_boxes, pooled_h, pooled_w,
//    spatial_scale (float32), sampling_ratio (int32), aligned (int32 0/1))
// Suffixes: _f32 float, _f64 double, _f16 binary16 bits, _bf16 bfloat16 bits. Backward kernels
// add into grad_accum (float32; float64 for _f64), which the caller zeroes first; the 16-bit
// gradient is then kmask_roi_align_cast_f32_to_f16/_bf16(n, src, dst).
#if !defined(KMASK_NO_EXTERN_C_KERNELS)
#define KMASK_ROI_ALIGN_EXTERN_KERNELS(SUFFIX, T, ACC)                                         \
  extern "C" __global__ void __launch_bounds__(KMASK_CUDA_THREADS)                            \
      kmask_roi_align_forward_##SUFFIX(const T* features, const float* boxes,                 \
                                       const int* box_indices, T* output, int batch,          \
                                       int height, int width, int channels, int num_boxes,    \
                                       int pooled_h, int pooled_w, float spatial_scale,       \
                                       int sampling_ratio, int aligned) {                     \
    const kmask::cuda::KernelArgs a = kmask::cuda::make_kernel_args(                          \
        batch, height, width, channels, num_boxes, pooled_h, pooled_w, spatial_scale,         \
        sampling_ratio, aligned);                                                             \
    const long long total = kmask::cuda::output_elements(a);                                  \
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;         \
         i < total; i += static_cast<long long>(blockDim.x) * gridDim.x) {                    \
      kmask::cuda::roi_align_forward_element<T>(i, a, features, boxes, box_indices, output);  \
    }                                                                                         \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(KMASK_CUDA_THREADS)                            \
      kmask_roi_align_backward_##SUFFIX(const T* grads, const float* boxes,                   \
                                        const int* box_indices, ACC* grad_accum, int batch,   \
                                        int height, int width, int channels, int num_boxes,   \
                                        int pooled_h, int pooled_w, float spatial_scale,      \
                                        int sampling_ratio, int aligned) {                    \
    const kmask::cuda::KernelArgs a = kmask::cuda::make_kernel_args(                          \
        batch, height, width, channels, num_boxes, pooled_h, pooled_w, spatial_scale,         \
        sampling_ratio, aligned);                                                             \
    const long long total = kmask::cuda::output_elements(a);                                  \
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;         \
         i < total; i += static_cast<long long>(blockDim.x) * gridDim.x) {                    \
      kmask::cuda::roi_align_backward_element<T, ACC>(i, a, grads, boxes, box_indices,        \
                                                      grad_accum);                            \
    }                                                                                         \
  }

KMASK_ROI_ALIGN_EXTERN_KERNELS(f32, float, float)
KMASK_ROI_ALIGN_EXTERN_KERNELS(f64, double, double)
KMASK_ROI_ALIGN_EXTERN_KERNELS(f16, kmask::cuda::half_bits, float)
KMASK_ROI_ALIGN_EXTERN_KERNELS(bf16, kmask::cuda::bfloat16_bits, float)

#undef KMASK_ROI_ALIGN_EXTERN_KERNELS

extern "C" __global__ void __launch_bounds__(KMASK_CUDA_THREADS)
    kmask_roi_align_cast_f32_to_f16(long long n, const float* src, kmask::cuda::half_bits* dst) {
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(blockDim.x) * gridDim.x) {
    kmask::cuda::Elem<kmask::cuda::half_bits>::store(dst + i, src[i]);
  }
}

extern "C" __global__ void __launch_bounds__(KMASK_CUDA_THREADS)
    kmask_roi_align_cast_f32_to_bf16(long long n, const float* src,
                                     kmask::cuda::bfloat16_bits* dst) {
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(blockDim.x) * gridDim.x) {
    kmask::cuda::Elem<kmask::cuda::bfloat16_bits>::store(dst + i, src[i]);
  }
}

#endif  // !KMASK_NO_EXTERN_C_KERNELS

#endif  // KMASK_ROI_ALIGN_CUDA_CUH_
