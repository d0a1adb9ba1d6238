// RoIAlign geometry and bilinear sampling shared by the CPU and CUDA kernels.
//
// No TensorFlow include: this header (and roi_align_cuda.cuh, which includes it) can be
// compiled on its own, e.g. by CuPy, to check the CUDA kernels where TensorFlow is absent.
//
// Semantics are those of torchvision.ops.roi_align / ONNX RoiAlign (avg mode):
//   boxes are (y1, x1, y2, x2) in input pixels; feature coordinates are box * spatial_scale,
//   shifted by -0.5 when `aligned` (ONNX "half_pixel"); when not aligned the RoI size is
//   clamped to >= 1 (ONNX "output_half_pixel"). sampling_ratio <= 0 takes
//   ceil(roi_size / output_size) samples per bin along each axis. A sample outside
//   [-1, H] x [-1, W] contributes zero; inside, it is clamped to >= 0 and snapped at H-1/W-1.
//   The output is the sum of the samples divided by max(grid_h * grid_w, 1).
// Deliberate extensions: a box with a NaN or infinite coordinate is invalid and pools zeros,
// and the adaptive grid is capped at KMASK_MAX_GRID samples per bin and axis so that an absurd
// box (a RoI wider than KMASK_MAX_GRID * output_size feature pixels) cannot stall the kernel.
// The ops refuse (InvalidArgument) a sampling_ratio outside [0, KMASK_MAX_GRID] and an
// output size outside [1, KMASK_MAX_POOLED], so that grid * grid and pooled * grid never
// overflow an int and the per-RoI sample tables stay small.
#ifndef KMASK_ROI_ALIGN_COMMON_H_
#define KMASK_ROI_ALIGN_COMMON_H_

#if !defined(__CUDACC_RTC__)
#include <math.h>
#endif

#if defined(__CUDACC__)
#define KMASK_HD __host__ __device__ __forceinline__
#else
#define KMASK_HD inline
#endif

#define KMASK_MAX_GRID 256
// Largest pooled_height / pooled_width the ops accept (kmask.ops.roi_align_tf.MAX_OUTPUT_SIZE).
#define KMASK_MAX_POOLED 1024

namespace kmask {

// Finite test that needs no <cmath> on the device and survives strict IEEE builds:
// v - v is 0 for finite v and NaN for NaN or +-inf.
KMASK_HD bool is_finite(float v) { return (v - v) == 0.0f; }

// Number of samples along one axis of a bin.
KMASK_HD int grid_size(float roi_size, int pooled, int sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  const float g = ceilf(roi_size / static_cast<float>(pooled));
  if (!(g > 0.0f)) return 0;  // empty or inverted RoI (aligned=True): no samples
  return g > static_cast<float>(KMASK_MAX_GRID) ? KMASK_MAX_GRID : static_cast<int>(g);
}

// Where one RoI's bins lie on the feature map, in feature pixels.
struct RoiGeometry {
  float start_h, start_w;  // top-left corner of the RoI
  float bin_h, bin_w;      // size of one output bin
  int grid_h, grid_w;      // samples per bin along each axis
  float inv_count;         // 1 / max(grid_h * grid_w, 1); 0 for an invalid box
};

// box: 4 floats (y1, x1, y2, x2) in input pixels.
KMASK_HD RoiGeometry roi_geometry(const float* box, float spatial_scale, int pooled_h,
                                  int pooled_w, int sampling_ratio, bool aligned) {
  RoiGeometry g;
  const float offset = aligned ? 0.5f : 0.0f;
  const bool finite = is_finite(box[0]) && is_finite(box[1]) && is_finite(box[2]) &&
                      is_finite(box[3]);
  if (!finite) {
    g.start_h = g.start_w = g.bin_h = g.bin_w = 0.0f;
    g.grid_h = g.grid_w = 0;
    g.inv_count = 0.0f;
    return g;
  }
  g.start_h = box[0] * spatial_scale - offset;
  g.start_w = box[1] * spatial_scale - offset;
  float roi_h = box[2] * spatial_scale - offset - g.start_h;
  float roi_w = box[3] * spatial_scale - offset - g.start_w;
  if (!aligned) {
    roi_h = roi_h > 1.0f ? roi_h : 1.0f;
    roi_w = roi_w > 1.0f ? roi_w : 1.0f;
  }
  g.bin_h = roi_h / static_cast<float>(pooled_h);
  g.bin_w = roi_w / static_cast<float>(pooled_w);
  g.grid_h = grid_size(roi_h, pooled_h, sampling_ratio);
  g.grid_w = grid_size(roi_w, pooled_w, sampling_ratio);
  const int count = g.grid_h * g.grid_w;
  g.inv_count = 1.0f / static_cast<float>(count > 1 ? count : 1);
  return g;
}

// Coordinate of sample `i` of bin `p` along one axis.
KMASK_HD float sample_coord(float start, float bin, int p, int i, int grid) {
  return start + static_cast<float>(p) * bin +
         (static_cast<float>(i) + 0.5f) * bin / static_cast<float>(grid);
}

// Linear interpolation along one axis: the sample at `v` reads index `lo` with weight `w_lo`
// and `hi` with weight `w_hi`. Out of [-1, size] both weights are 0 (valid == false).
struct AxisSample {
  int lo, hi;
  float w_lo, w_hi;
  bool valid;
};

KMASK_HD AxisSample axis_sample(float v, int size) {
  AxisSample s;
  if (!(v >= -1.0f && v <= static_cast<float>(size)) || size <= 0) {
    s.lo = s.hi = 0;
    s.w_lo = s.w_hi = 0.0f;
    s.valid = false;
    return s;
  }
  if (v <= 0.0f) v = 0.0f;
  int lo = static_cast<int>(v);
  int hi;
  if (lo >= size - 1) {
    lo = hi = size - 1;
    v = static_cast<float>(lo);
  } else {
    hi = lo + 1;
  }
  const float l = v - static_cast<float>(lo);
  s.lo = lo;
  s.hi = hi;
  s.w_lo = 1.0f - l;
  s.w_hi = l;
  s.valid = true;
  return s;
}

}  // namespace kmask

#endif  // KMASK_ROI_ALIGN_COMMON_H_
