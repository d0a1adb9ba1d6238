// Kmask>RoiAlign and Kmask>RoiAlignGrad: registration, validation and CPU kernels.
//
// Semantics (torchvision.ops.roi_align / ONNX RoiAlign avg mode) are defined once in
// roi_align_common.h. Layout: features NHWC [B, H, W, C]; boxes [K, 4] float32
// (y1, x1, y2, x2) in input pixels; box_indices [K] int32; output [K, ph, pw, C].
//
// CPU forward: sharded over RoIs on TensorFlow's intra-op thread pool. For each RoI the
// per-axis sample positions, neighbour indices and weights are computed once, then every
// sample reads four NHWC pixel rows with the channel loop innermost (contiguous, vectorized).
// CPU backward: sharded over channel blocks, so each thread owns a disjoint slice of the
// gradient: deterministic and race-free without atomics.
// Half-precision features (float16, bfloat16) accumulate in float32; double in double.
#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "roi_align_common.h"
#include "roi_align_op.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"

namespace kmask {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;
using CPUDevice = Eigen::ThreadPoolDevice;

namespace {

// The bounds of the integer attributes (see roi_align_common.h), checked when the graph is
// built (shape function) and again when a kernel is constructed.
absl::Status CheckIntAttrs(int pooled_h, int pooled_w, int sampling_ratio) {
  if (pooled_h <= 0 || pooled_w <= 0 || pooled_h > KMASK_MAX_POOLED ||
      pooled_w > KMASK_MAX_POOLED) {
    return InvalidArgument("output_size (pooled_height, pooled_width) must lie in [1, ",
                           KMASK_MAX_POOLED, "], got (", pooled_h, ", ", pooled_w, ")");
  }
  if (sampling_ratio < 0 || sampling_ratio > KMASK_MAX_GRID) {
    return InvalidArgument("sampling_ratio must lie in [0, ", KMASK_MAX_GRID,
                           "] (0 = adaptive), got ", sampling_ratio);
  }
  return absl::OkStatus();
}

absl::Status CheckPooledAttrs(InferenceContext* c, int* pooled_h, int* pooled_w) {
  int sampling_ratio;
  TF_RETURN_IF_ERROR(c->GetAttr("pooled_height", pooled_h));
  TF_RETURN_IF_ERROR(c->GetAttr("pooled_width", pooled_w));
  TF_RETURN_IF_ERROR(c->GetAttr("sampling_ratio", &sampling_ratio));
  return CheckIntAttrs(*pooled_h, *pooled_w, sampling_ratio);
}

// boxes [K, 4] and box_indices [K]; returns K.
absl::Status BoxesShape(InferenceContext* c, int boxes_input, DimensionHandle* num_boxes) {
  ShapeHandle boxes, box_indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(boxes_input), 2, &boxes));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(boxes_input + 1), 1, &box_indices));
  DimensionHandle four;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(boxes, 1), 4, &four));
  return c->Merge(c->Dim(boxes, 0), c->Dim(box_indices, 0), num_boxes);
}

}  // namespace

REGISTER_OP("Kmask>RoiAlign")
    .Input("features: T")
    .Input("boxes: float")
    .Input("box_indices: int32")
    .Output("output: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("pooled_height: int")
    .Attr("pooled_width: int")
    .Attr("spatial_scale: float = 1.0")
    .Attr("sampling_ratio: int = 0")
    .Attr("aligned: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      int pooled_h, pooled_w;
      TF_RETURN_IF_ERROR(CheckPooledAttrs(c, &pooled_h, &pooled_w));
      ShapeHandle features;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
      DimensionHandle num_boxes;
      TF_RETURN_IF_ERROR(BoxesShape(c, 1, &num_boxes));
      c->set_output(0, c->MakeShape({num_boxes, pooled_h, pooled_w, c->Dim(features, 3)}));
      return absl::OkStatus();
    })
    .Doc(R"doc(
RoIAlign (avg) of NHWC features over (y1, x1, y2, x2) boxes; see kmask.ops.roi_align.
features: [B, H, W, C].
boxes: [K, 4] (y1, x1, y2, x2) in input pixels; feature coordinates are box * spatial_scale.
box_indices: [K] image of each box, in [0, B).
output: [K, pooled_height, pooled_width, C].
)doc");

REGISTER_OP("Kmask>RoiAlignGrad")
    .Input("grads: T")
    .Input("boxes: float")
    .Input("box_indices: int32")
    .Input("features_shape: int32")
    .Output("grad_features: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("pooled_height: int")
    .Attr("pooled_width: int")
    .Attr("spatial_scale: float = 1.0")
    .Attr("sampling_ratio: int = 0")
    .Attr("aligned: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      int pooled_h, pooled_w;
      TF_RETURN_IF_ERROR(CheckPooledAttrs(c, &pooled_h, &pooled_w));
      ShapeHandle grads;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &grads));
      DimensionHandle num_boxes;
      TF_RETURN_IF_ERROR(BoxesShape(c, 1, &num_boxes));
      ShapeHandle features;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(3, &features));
      TF_RETURN_IF_ERROR(c->WithRank(features, 4, &features));
      c->set_output(0, features);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of Kmask>RoiAlign with respect to its features.
grads: [K, pooled_height, pooled_width, C].
features_shape: [4] = (B, H, W, C) of the forward features.
grad_features: [B, H, W, C].
)doc");

namespace functor {

template <typename T>
struct Accumulator {
  using type = float;
};
template <>
struct Accumulator<double> {
  using type = double;
};

// Per-axis samples of one RoI: samples[p * grid + i] for bin p, sample i.
inline void AxisSamples(float start, float bin, int pooled, int grid, int size,
                        std::vector<AxisSample>* samples) {
  samples->resize(static_cast<size_t>(pooled) * grid);
  for (int p = 0; p < pooled; ++p) {
    for (int i = 0; i < grid; ++i) {
      (*samples)[p * grid + i] = axis_sample(sample_coord(start, bin, p, i, grid), size);
    }
  }
}

// 1 / max(grid_h * grid_w, 1) in the accumulation type (exact for double).
template <typename Acc>
inline Acc InverseCount(const RoiGeometry& g) {
  const int count = g.grid_h * g.grid_w;
  return Acc(1) / static_cast<Acc>(count > 1 ? count : 1);
}

// One RoI's geometry and samples, shared by forward and backward.
struct RoiSamples {
  RoiGeometry geometry;
  std::vector<AxisSample> ys, xs;

  // Returns false when the RoI has no samples (invalid, empty or inverted box).
  bool Compute(const RoiAlignArgs& a, const float* box) {
    geometry = roi_geometry(box, a.spatial_scale, a.pooled_height, a.pooled_width,
                            a.sampling_ratio, a.aligned);
    if (geometry.grid_h <= 0 || geometry.grid_w <= 0) return false;
    AxisSamples(geometry.start_h, geometry.bin_h, a.pooled_height, geometry.grid_h, a.height,
                &ys);
    AxisSamples(geometry.start_w, geometry.bin_w, a.pooled_width, geometry.grid_w, a.width,
                &xs);
    return true;
  }
};

// Cost of one RoI's bins, in units of one channel's multiply-add (for the sharder); the
// adaptive grid is typically 2x2 samples per bin at FPN scales.
inline int64_t RoiCost(const RoiAlignArgs& a, int64_t channels) {
  const int64_t grid = a.sampling_ratio > 0 ? a.sampling_ratio * a.sampling_ratio : 4;
  return std::max<int64_t>(1, int64_t{a.pooled_height} * a.pooled_width * grid * channels * 8);
}

template <typename T>
struct RoiAlignForward<CPUDevice, T> {
  void operator()(OpKernelContext* context, const RoiAlignArgs& a, const T* features,
                  const float* boxes, const int* box_indices, T* output) {
    using Acc = typename Accumulator<T>::type;
    const int64_t channels = a.channels;
    const int64_t row = int64_t{a.width} * channels;
    const int64_t image = int64_t{a.height} * row;
    const int64_t out_per_roi = int64_t{a.pooled_height} * a.pooled_width * channels;

    auto work = [&](int64_t begin, int64_t end) {
      RoiSamples roi;
      std::vector<Acc> acc(channels);
      for (int64_t k = begin; k < end; ++k) {
        T* out = output + k * out_per_roi;
        if (!roi.Compute(a, boxes + 4 * k)) {
          std::fill(out, out + out_per_roi, T(0));
          continue;
        }
        const RoiGeometry& g = roi.geometry;
        const T* feature = features + box_indices[k] * image;
        const Acc scale = InverseCount<Acc>(g);
        for (int ph = 0; ph < a.pooled_height; ++ph) {
          for (int pw = 0; pw < a.pooled_width; ++pw) {
            std::fill(acc.begin(), acc.end(), Acc(0));
            for (int iy = 0; iy < g.grid_h; ++iy) {
              const AxisSample& sy = roi.ys[ph * g.grid_h + iy];
              if (!sy.valid) continue;
              const T* row_lo = feature + sy.lo * row;
              const T* row_hi = feature + sy.hi * row;
              for (int ix = 0; ix < g.grid_w; ++ix) {
                const AxisSample& sx = roi.xs[pw * g.grid_w + ix];
                if (!sx.valid) continue;
                const Acc w1 = static_cast<Acc>(sy.w_lo) * static_cast<Acc>(sx.w_lo);
                const Acc w2 = static_cast<Acc>(sy.w_lo) * static_cast<Acc>(sx.w_hi);
                const Acc w3 = static_cast<Acc>(sy.w_hi) * static_cast<Acc>(sx.w_lo);
                const Acc w4 = static_cast<Acc>(sy.w_hi) * static_cast<Acc>(sx.w_hi);
                const T* p1 = row_lo + sx.lo * channels;
                const T* p2 = row_lo + sx.hi * channels;
                const T* p3 = row_hi + sx.lo * channels;
                const T* p4 = row_hi + sx.hi * channels;
                for (int64_t c = 0; c < channels; ++c) {
                  acc[c] += w1 * static_cast<Acc>(p1[c]) + w2 * static_cast<Acc>(p2[c]) +
                            w3 * static_cast<Acc>(p3[c]) + w4 * static_cast<Acc>(p4[c]);
                }
              }
            }
            T* bin = out + (int64_t{ph} * a.pooled_width + pw) * channels;
            for (int64_t c = 0; c < channels; ++c) bin[c] = static_cast<T>(acc[c] * scale);
          }
        }
      }
    };
    const auto* pool = context->device()->tensorflow_cpu_worker_threads();
    tensorflow::Shard(pool->num_threads, pool->workers, a.num_boxes, RoiCost(a, channels),
                      work);
  }
};

// Scatters grads into `grad` [B, H, W, C] (type Acc, zeroed by the caller).
template <typename T, typename Acc>
void ScatterGrads(OpKernelContext* context, const RoiAlignArgs& a, const T* grads,
                  const float* boxes, const int* box_indices, Acc* grad) {
  const int64_t channels = a.channels;
  const int64_t row = int64_t{a.width} * channels;
  const int64_t image = int64_t{a.height} * row;
  const int64_t grads_per_roi = int64_t{a.pooled_height} * a.pooled_width * channels;
  // Channels per shard unit: about two units per thread (each unit walks every RoI, so
  // fewer, wider units amortize the per-sample work), a multiple of 16 for vectorization.
  const auto* pool = context->device()->tensorflow_cpu_worker_threads();
  const int64_t units = std::max<int64_t>(1, 2 * int64_t{pool->num_threads});
  const int64_t block = std::max<int64_t>(16, (channels + units * 16 - 1) / (units * 16) * 16);
  const int64_t num_blocks = (channels + block - 1) / block;

  auto work = [&](int64_t block_begin, int64_t block_end) {
    const int64_t c0 = block_begin * block;
    const int64_t c1 = std::min(channels, block_end * block);
    RoiSamples roi;
    for (int64_t k = 0; k < a.num_boxes; ++k) {
      if (!roi.Compute(a, boxes + 4 * k)) continue;
      const RoiGeometry& g = roi.geometry;
      const Acc inv_count = InverseCount<Acc>(g);
      Acc* image_grad = grad + box_indices[k] * image;
      const T* roi_grads = grads + k * grads_per_roi;
      for (int ph = 0; ph < a.pooled_height; ++ph) {
        for (int pw = 0; pw < a.pooled_width; ++pw) {
          const T* g_bin = roi_grads + (int64_t{ph} * a.pooled_width + pw) * channels;
          for (int iy = 0; iy < g.grid_h; ++iy) {
            const AxisSample& sy = roi.ys[ph * g.grid_h + iy];
            if (!sy.valid) continue;
            Acc* row_lo = image_grad + sy.lo * row;
            Acc* row_hi = image_grad + sy.hi * row;
            for (int ix = 0; ix < g.grid_w; ++ix) {
              const AxisSample& sx = roi.xs[pw * g.grid_w + ix];
              if (!sx.valid) continue;
              const Acc w1 = static_cast<Acc>(sy.w_lo) * static_cast<Acc>(sx.w_lo) * inv_count;
              const Acc w2 = static_cast<Acc>(sy.w_lo) * static_cast<Acc>(sx.w_hi) * inv_count;
              const Acc w3 = static_cast<Acc>(sy.w_hi) * static_cast<Acc>(sx.w_lo) * inv_count;
              const Acc w4 = static_cast<Acc>(sy.w_hi) * static_cast<Acc>(sx.w_hi) * inv_count;
              Acc* p1 = row_lo + sx.lo * channels;
              Acc* p2 = row_lo + sx.hi * channels;
              Acc* p3 = row_hi + sx.lo * channels;
              Acc* p4 = row_hi + sx.hi * channels;
              for (int64_t c = c0; c < c1; ++c) {
                const Acc value = static_cast<Acc>(g_bin[c]);
                p1[c] += w1 * value;
                p2[c] += w2 * value;
                p3[c] += w3 * value;
                p4[c] += w4 * value;
              }
            }
          }
        }
      }
    }
  };
  const int64_t cost = std::max<int64_t>(1, a.num_boxes) * RoiCost(a, block);
  tensorflow::Shard(pool->num_threads, pool->workers, num_blocks, cost, work);
}

template <typename T>
struct RoiAlignBackward<CPUDevice, T> {
  void operator()(OpKernelContext* context, const RoiAlignArgs& a, const T* grads,
                  const float* boxes, const int* box_indices, T* grad_features) {
    using Acc = typename Accumulator<T>::type;
    const int64_t size = int64_t{a.batch} * a.height * a.width * a.channels;
    if (std::is_same<T, Acc>::value) {
      Acc* grad = reinterpret_cast<Acc*>(grad_features);
      std::fill(grad, grad + size, Acc(0));
      ScatterGrads(context, a, grads, boxes, box_indices, grad);
      return;
    }
    // Half precision: accumulate in a float32 buffer, then round once.
    Tensor buffer;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DataTypeToEnum<Acc>::value,
                                                   TensorShape({size}), &buffer));
    Acc* grad = buffer.flat<Acc>().data();
    std::fill(grad, grad + size, Acc(0));
    ScatterGrads(context, a, grads, boxes, box_indices, grad);
    for (int64_t i = 0; i < size; ++i) grad_features[i] = static_cast<T>(grad[i]);
  }
};

}  // namespace functor

// Attributes shared by the forward and gradient kernels, validated at construction.
class RoiAlignAttrs {
 public:
  explicit RoiAlignAttrs(OpKernelConstruction* context) {
    OP_REQUIRES_OK(context, context->GetAttr("pooled_height", &pooled_height_));
    OP_REQUIRES_OK(context, context->GetAttr("pooled_width", &pooled_width_));
    OP_REQUIRES_OK(context, context->GetAttr("spatial_scale", &spatial_scale_));
    OP_REQUIRES_OK(context, context->GetAttr("sampling_ratio", &sampling_ratio_));
    OP_REQUIRES_OK(context, context->GetAttr("aligned", &aligned_));
    OP_REQUIRES_OK(context, CheckIntAttrs(pooled_height_, pooled_width_, sampling_ratio_));
  }

  // Validates boxes [K, 4] and box_indices [K] and fills the shared part of `args`.
  absl::Status CheckBoxes(const Tensor& boxes, const Tensor& box_indices,
                          RoiAlignArgs* args) const {
    if (boxes.dims() != 2 || boxes.dim_size(1) != 4) {
      return InvalidArgument("boxes must have shape [num_boxes, 4], got ",
                             boxes.shape().DebugString());
    }
    if (box_indices.dims() != 1) {
      return InvalidArgument("box_indices must have shape [num_boxes], got ",
                             box_indices.shape().DebugString());
    }
    if (box_indices.dim_size(0) != boxes.dim_size(0)) {
      return InvalidArgument("box_indices has ", box_indices.dim_size(0),
                             " entries but boxes has ", boxes.dim_size(0), " rows");
    }
    if (boxes.dim_size(0) > std::numeric_limits<int>::max()) {
      return InvalidArgument("too many boxes: ", boxes.dim_size(0));
    }
    args->num_boxes = static_cast<int>(boxes.dim_size(0));
    args->pooled_height = pooled_height_;
    args->pooled_width = pooled_width_;
    args->spatial_scale = spatial_scale_;
    args->sampling_ratio = sampling_ratio_;
    args->aligned = aligned_;
    return absl::OkStatus();
  }

 private:
  int pooled_height_, pooled_width_, sampling_ratio_;
  float spatial_scale_;
  bool aligned_;
};

// Fills the feature dimensions of `args` from a [B, H, W, C] shape.
absl::Status CheckFeatureShape(const TensorShape& shape, const char* name,
                               RoiAlignArgs* args) {
  if (shape.dims() != 4) {
    return InvalidArgument(name, " must have rank 4 [batch, height, width, channels], got ",
                           shape.DebugString());
  }
  for (int i = 0; i < 4; ++i) {
    if (shape.dim_size(i) > std::numeric_limits<int>::max()) {
      return InvalidArgument(name, " dimension ", i, " is too large");
    }
  }
  args->batch = static_cast<int>(shape.dim_size(0));
  args->height = static_cast<int>(shape.dim_size(1));
  args->width = static_cast<int>(shape.dim_size(2));
  args->channels = static_cast<int>(shape.dim_size(3));
  return absl::OkStatus();
}

// On the CPU every box index is checked; on the GPU (device memory) an out-of-range
// index pools zeros and receives no gradient, as tf.gather does there.
template <typename Device>
absl::Status CheckBoxIndices(const Tensor& box_indices, int batch) {
  if (!std::is_same<Device, CPUDevice>::value) return absl::OkStatus();
  const auto indices = box_indices.flat<int32_t>();
  for (int64_t k = 0; k < indices.size(); ++k) {
    if (indices(k) < 0 || indices(k) >= batch) {
      return InvalidArgument("box_indices[", k, "] = ", indices(k), " is out of range [0, ",
                             batch, ")");
    }
  }
  return absl::OkStatus();
}

template <typename Device, typename T>
class RoiAlignOp : public OpKernel {
 public:
  explicit RoiAlignOp(OpKernelConstruction* context) : OpKernel(context), attrs_(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    const Tensor& boxes = context->input(1);
    const Tensor& box_indices = context->input(2);
    RoiAlignArgs args;
    OP_REQUIRES_OK(context, CheckFeatureShape(features.shape(), "features", &args));
    OP_REQUIRES_OK(context, attrs_.CheckBoxes(boxes, box_indices, &args));
    OP_REQUIRES_OK(context, CheckBoxIndices<Device>(box_indices, args.batch));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0,
                                TensorShape({args.num_boxes, args.pooled_height,
                                             args.pooled_width, args.channels}),
                                &output));
    if (output->NumElements() == 0) return;
    functor::RoiAlignForward<Device, T>()(context, args, features.flat<T>().data(),
                                          boxes.flat<float>().data(),
                                          box_indices.flat<int32_t>().data(),
                                          output->flat<T>().data());
  }

 private:
  RoiAlignAttrs attrs_;
};

template <typename Device, typename T>
class RoiAlignGradOp : public OpKernel {
 public:
  explicit RoiAlignGradOp(OpKernelConstruction* context)
      : OpKernel(context), attrs_(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& grads = context->input(0);
    const Tensor& boxes = context->input(1);
    const Tensor& box_indices = context->input(2);
    const Tensor& features_shape = context->input(3);
    OP_REQUIRES(context, features_shape.dims() == 1 && features_shape.NumElements() == 4,
                InvalidArgument("features_shape must have 4 elements, got ",
                                features_shape.shape().DebugString()));
    TensorShape shape;
    OP_REQUIRES_OK(context, tensorflow::TensorShapeUtils::MakeShape(
                                features_shape.vec<int32_t>(), &shape));
    RoiAlignArgs args;
    OP_REQUIRES_OK(context, CheckFeatureShape(shape, "features_shape", &args));
    OP_REQUIRES_OK(context, attrs_.CheckBoxes(boxes, box_indices, &args));
    const TensorShape expected({args.num_boxes, args.pooled_height, args.pooled_width,
                                args.channels});
    OP_REQUIRES(context, grads.shape() == expected,
                InvalidArgument("grads must have shape ", expected.DebugString(), ", got ",
                                grads.shape().DebugString()));
    OP_REQUIRES_OK(context, CheckBoxIndices<Device>(box_indices, args.batch));
    Tensor* grad_features = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, shape, &grad_features));
    if (grad_features->NumElements() == 0) return;
    functor::RoiAlignBackward<Device, T>()(context, args, grads.flat<T>().data(),
                                           boxes.flat<float>().data(),
                                           box_indices.flat<int32_t>().data(),
                                           grad_features->flat<T>().data());
  }

 private:
  RoiAlignAttrs attrs_;
};

#define KMASK_REGISTER_CPU(T)                                                          \
  REGISTER_KERNEL_BUILDER(                                                             \
      Name("Kmask>RoiAlign").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),    \
      RoiAlignOp<CPUDevice, T>);                                                       \
  REGISTER_KERNEL_BUILDER(                                                             \
      Name("Kmask>RoiAlignGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      RoiAlignGradOp<CPUDevice, T>);

KMASK_REGISTER_CPU(Eigen::half)
KMASK_REGISTER_CPU(Eigen::bfloat16)
KMASK_REGISTER_CPU(float)
KMASK_REGISTER_CPU(double)
#undef KMASK_REGISTER_CPU

#if GOOGLE_CUDA
using GPUDevice = Eigen::GpuDevice;

namespace functor {
#define KMASK_DECLARE_GPU(T)                             \
  extern template struct RoiAlignForward<GPUDevice, T>; \
  extern template struct RoiAlignBackward<GPUDevice, T>;
KMASK_DECLARE_GPU(Eigen::half)
KMASK_DECLARE_GPU(Eigen::bfloat16)
KMASK_DECLARE_GPU(float)
KMASK_DECLARE_GPU(double)
#undef KMASK_DECLARE_GPU
}  // namespace functor

#define KMASK_REGISTER_GPU(T)                                                   \
  REGISTER_KERNEL_BUILDER(                                                      \
      Name("Kmask>RoiAlign").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), \
      RoiAlignOp<GPUDevice, T>);                                                \
  REGISTER_KERNEL_BUILDER(Name("Kmask>RoiAlignGrad")                            \
                              .Device(tensorflow::DEVICE_GPU)                   \
                              .TypeConstraint<T>("T")                           \
                              .HostMemory("features_shape"),                    \
                          RoiAlignGradOp<GPUDevice, T>);

KMASK_REGISTER_GPU(Eigen::half)
KMASK_REGISTER_GPU(Eigen::bfloat16)
KMASK_REGISTER_GPU(float)
KMASK_REGISTER_GPU(double)
#undef KMASK_REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace kmask
