// Device functors behind the Kmask>RoiAlign and Kmask>RoiAlignGrad kernels.
// CPU specializations live in roi_align_op.cc, GPU ones in roi_align_op_gpu.cu.cc.
#ifndef KMASK_ROI_ALIGN_OP_H_
#define KMASK_ROI_ALIGN_OP_H_

// Includers define EIGEN_USE_THREADS (and EIGEN_USE_GPU when GOOGLE_CUDA) before any include.
#include "tensorflow/core/framework/op_kernel.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace kmask {

// Shapes and attributes of one RoIAlign call. Features are NHWC [batch, height, width,
// channels]; boxes [num_boxes, 4] float32 (y1, x1, y2, x2) in input pixels; box_indices
// [num_boxes] int32, already checked to lie in [0, batch) on the CPU; output
// [num_boxes, pooled_height, pooled_width, channels].
struct RoiAlignArgs {
  int batch, height, width, channels;
  int num_boxes, pooled_height, pooled_width;
  float spatial_scale;
  int sampling_ratio;
  bool aligned;
};

namespace functor {

// Defined for Eigen::ThreadPoolDevice in roi_align_op.cc and, in CUDA builds, for
// Eigen::GpuDevice in roi_align_op_gpu.cu.cc (declared below, instantiated there for
// Eigen::half, Eigen::bfloat16, float and double).
template <typename Device, typename T>
struct RoiAlignForward;

template <typename Device, typename T>
struct RoiAlignBackward;

#if GOOGLE_CUDA
// Writes every element of `output` [num_boxes, pooled_height, pooled_width, channels].
template <typename T>
struct RoiAlignForward<Eigen::GpuDevice, T> {
  void operator()(tensorflow::OpKernelContext* context, const RoiAlignArgs& args,
                  const T* features, const float* boxes, const int* box_indices, T* output);
};

// Overwrites `grad_features` [batch, height, width, channels] with the gradient of
// `grads` [num_boxes, pooled_height, pooled_width, channels] (zeroed, then scattered in).
template <typename T>
struct RoiAlignBackward<Eigen::GpuDevice, T> {
  void operator()(tensorflow::OpKernelContext* context, const RoiAlignArgs& args,
                  const T* grads, const float* boxes, const int* box_indices,
                  T* grad_features);
};
#endif  // GOOGLE_CUDA

}  // namespace functor
}  // namespace kmask

#endif  // KMASK_ROI_ALIGN_OP_H_
