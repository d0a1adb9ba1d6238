// GPU (Eigen::GpuDevice) specializations of the RoIAlign functors declared in roi_align_op.h.
// The kernels themselves are in roi_align_cuda.cuh (no TensorFlow include).
//
// Shapes: features / grad_features [batch, height, width, channels] (NHWC);
// boxes [num_boxes, 4] float32 (y1, x1, y2, x2) in input pixels; box_indices [num_boxes] int32;
// output / grads [num_boxes, pooled_height, pooled_width, channels]. All on the device.
//
// On the GPU a box index outside [0, batch) is not checked on the host (that would need a
// device-to-host copy): such a box pools zeros and receives no gradient. The CPU kernel raises.
//
// The backward scatters with atomicAdd, so it is not deterministic; when op determinism is
// required (tf.config.experimental.enable_op_determinism()) it fails with Unimplemented instead.
//
// Build (see kmask/ops/_custom_ops.py), with nvcc of the same CUDA major version as
// TensorFlow (tf.sysconfig.get_build_info()["cuda_version"]), TF_CFLAGS =
// tf.sysconfig.get_compile_flags() (they carry --std=c++17: add no -std of your own) and a
// directory SHIM holding the link third_party/gpus/cuda/include -> $CUDA_HOME/include:
//   nvcc -c -DGOOGLE_CUDA=1 -x cu --expt-relaxed-constexpr -O3 -Xcompiler -fPIC
//        -Xcompiler -Wno-deprecated-declarations
//        -gencode=arch=compute_70,code=sm_70 -gencode=arch=compute_80,code=sm_80
//        -gencode=arch=compute_89,code=sm_89 -gencode=arch=compute_90,code=[sm_90,compute_90]
//        $TF_CFLAGS -ISHIM -Icustom_ops/roi_align
//        custom_ops/roi_align/roi_align_op_gpu.cu.cc -o roi_align_op_gpu.cu.o
// then link it into the op library with -L$CUDA_HOME/lib64 -lcudart.
#if GOOGLE_CUDA

#define EIGEN_USE_GPU

#include "roi_align_op.h"

#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/determinism.h"
#include "unsupported/Eigen/CXX11/Tensor"

#define KMASK_NO_EXTERN_C_KERNELS
#include "roi_align_cuda.cuh"

namespace kmask {
namespace functor {

using GPUDevice = Eigen::GpuDevice;

namespace {

// Kernel element type for each TensorFlow type: Eigen's 16-bit types are read as raw bits.
template <typename T>
struct KernelType {
  typedef T type;
};
template <>
struct KernelType<Eigen::half> {
  typedef cuda::half_bits type;
};
template <>
struct KernelType<Eigen::bfloat16> {
  typedef cuda::bfloat16_bits type;
};

static_assert(sizeof(Eigen::half) == sizeof(cuda::half_bits), "Eigen::half is not 16 bits");
static_assert(sizeof(Eigen::bfloat16) == sizeof(cuda::bfloat16_bits),
              "Eigen::bfloat16 is not 16 bits");

cuda::KernelArgs ToKernelArgs(const RoiAlignArgs& args) {
  return cuda::make_kernel_args(args.batch, args.height, args.width, args.channels,
                                args.num_boxes, args.pooled_height, args.pooled_width,
                                args.spatial_scale, args.sampling_ratio, args.aligned ? 1 : 0);
}

absl::Status LaunchStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("Kmask>RoiAlign: launching the ", what,
                                         " kernel failed: ", cudaGetErrorString(err)));
}

template <typename T>
void Forward(tensorflow::OpKernelContext* context, const RoiAlignArgs& args, const T* features,
             const float* boxes, const int* box_indices, T* output) {
  typedef typename KernelType<T>::type K;
  const cudaStream_t stream = context->eigen_gpu_device().stream();
  OP_REQUIRES_OK(context, LaunchStatus(cuda::launch_roi_align_forward<K>(
                                           stream, ToKernelArgs(args),
                                           reinterpret_cast<const K*>(features), boxes,
                                           box_indices, reinterpret_cast<K*>(output)),
                                       "RoiAlign forward"));
}

absl::Status DeterminismStatus() {
  if (!tensorflow::OpDeterminismRequired()) return absl::OkStatus();
  return absl::UnimplementedError(
      "The GPU gradient of Kmask>RoiAlign (Kmask>RoiAlignGrad) is nondeterministic: it "
      "scatters with atomicAdd. Op determinism is enabled "
      "(tf.config.experimental.enable_op_determinism()), so it does not run. Run the "
      "RoIAlign gradient on the CPU (with tf.device('/CPU:0')), which is deterministic, or use "
      "kmask.ops.roi_align(..., implementation='tf').");
}

// float and double accumulate straight into grad_features; the 16-bit types accumulate into
// a float32 temp [batch, height, width, channels], then cast.
template <typename T>
void Backward(tensorflow::OpKernelContext* context, const RoiAlignArgs& args, const T* grads,
              const float* boxes, const int* box_indices, T* grad_features) {
  typedef typename KernelType<T>::type K;
  OP_REQUIRES_OK(context, DeterminismStatus());
  const cudaStream_t stream = context->eigen_gpu_device().stream();
  if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value) {
    OP_REQUIRES_OK(context, LaunchStatus(cuda::launch_roi_align_backward<T, T>(
                                             stream, ToKernelArgs(args), grads, boxes,
                                             box_indices, grad_features),
                                         "RoiAlignGrad"));
  } else {
    tensorflow::Tensor accum;
    OP_REQUIRES_OK(context, context->allocate_temp(
                                tensorflow::DT_FLOAT,
                                tensorflow::TensorShape({args.batch, args.height, args.width,
                                                         args.channels}),
                                &accum));
    float* accum_data = accum.flat<float>().data();
    OP_REQUIRES_OK(context, LaunchStatus(cuda::launch_roi_align_backward<K, float>(
                                             stream, ToKernelArgs(args),
                                             reinterpret_cast<const K*>(grads), boxes,
                                             box_indices, accum_data),
                                         "RoiAlignGrad"));
    const long long n =
        static_cast<long long>(args.batch) * args.height * args.width * args.channels;
    OP_REQUIRES_OK(context, LaunchStatus(cuda::launch_cast<K, float>(
                                             stream, n, accum_data,
                                             reinterpret_cast<K*>(grad_features)),
                                         "RoiAlignGrad cast"));
  }
}

}  // namespace

// Members of the GPU partial specializations declared in roi_align_op.h.
template <typename T>
void RoiAlignForward<GPUDevice, T>::operator()(tensorflow::OpKernelContext* context,
                                               const RoiAlignArgs& args, const T* features,
                                               const float* boxes, const int* box_indices,
                                               T* output) {
  Forward<T>(context, args, features, boxes, box_indices, output);
}

template <typename T>
void RoiAlignBackward<GPUDevice, T>::operator()(tensorflow::OpKernelContext* context,
                                                const RoiAlignArgs& args, const T* grads,
                                                const float* boxes, const int* box_indices,
                                                T* grad_features) {
  Backward<T>(context, args, grads, boxes, box_indices, grad_features);
}

// Matches `extern template struct ...<Eigen::GpuDevice, T>` in roi_align_op.cc.
#define KMASK_INSTANTIATE_GPU_FUNCTORS(T)        \
  template struct RoiAlignForward<GPUDevice, T>; \
  template struct RoiAlignBackward<GPUDevice, T>;

KMASK_INSTANTIATE_GPU_FUNCTORS(Eigen::half)
KMASK_INSTANTIATE_GPU_FUNCTORS(Eigen::bfloat16)
KMASK_INSTANTIATE_GPU_FUNCTORS(float)
KMASK_INSTANTIATE_GPU_FUNCTORS(double)

#undef KMASK_INSTANTIATE_GPU_FUNCTORS

}  // namespace functor
}  // namespace kmask

#endif  // GOOGLE_CUDA
