"""Checks of the RoIAlign CUDA code: custom_ops/roi_align/roi_align_cuda.cuh and
roi_align_op_gpu.cu.cc.

Tensor conventions: features NHWC [B, H, W, C]; boxes [K, 4] float32 (y1, x1, y2, x2) in input
pixels; box_indices [K] int32; output [K, out_h, out_w, C]; feature gradient [B, H, W, C].

What runs where:

* no tool needed: the NumPy backward used as gradient reference is the adjoint of the NumPy
  forward reference (tests/ops/roi_align_reference.py);
* nvcc: the header compiles for the device with every kernel instantiated, and exports the
  extern "C" kernel names CuPy looks up; a host harness built by nvcc runs the kernels'
  per-element functions (the same code the GPU threads run, with atomicAdd replaced by a plain
  add) over every element and is compared with the references, so the kernel arithmetic is
  checked on machines without a GPU;
* NVRTC (libnvrtc, as CuPy uses it): the header compiles as CuPy's RawModule would compile it;
* nvcc + TensorFlow headers of a matching CUDA major version: roi_align_op_gpu.cu.cc compiles
  and every TensorFlow symbol it needs is exported by libtensorflow_framework;
* CuPy + a GPU: the kernels themselves (tests/ops/cuda_check.py holds the shared checks and
  is also a standalone script for GPU machines without TensorFlow).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.ops import cuda_check
from tests.ops.cuda_check import (
    CUDA_DIR,
    DYADIC_SETTINGS,
    SETTINGS,
    expected_forward,
    kernel_checks,
    make_case,
    numpy_roi_align_backward,
)

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")

EXTERN_KERNELS = [
    f"kmask_roi_align_{op}_{suffix}"
    for op in ("forward", "backward")
    for suffix in ("f32", "f64", "f16", "bf16")
] + ["kmask_roi_align_cast_f32_to_f16", "kmask_roi_align_cast_f32_to_bf16"]


@functools.cache
def _nvcc_version() -> tuple[int, int]:
    out = subprocess.run([NVCC, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    assert match, f"cannot read the nvcc version from: {out}"
    return int(match.group(1)), int(match.group(2))


@functools.cache
def _nvcc_arch() -> str:
    """sm_90 when this nvcc supports it, else the newest architecture it lists."""
    out = subprocess.run(
        [NVCC, "--list-gpu-arch"], capture_output=True, text=True, check=False
    ).stdout
    archs = sorted({int(m) for m in re.findall(r"compute_(\d+)", out)})
    if not archs or 90 in archs:
        return "sm_90"
    return f"sm_{archs[-1]}"


def _run(cmd: list[str], cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False
    )
    if result.returncode != 0:
        print("command:", " ".join(map(str, cmd)))
        print(result.stdout[-5000:])
        print(result.stderr[-20000:])
    return result


# ---------------------------------------------------------------------------------------------
# The NumPy gradient reference.


@pytest.mark.parametrize("aligned,sampling_ratio,spatial_scale,output_size", SETTINGS)
def test_numpy_backward_is_the_adjoint_of_the_reference(
    aligned, sampling_ratio, spatial_scale, output_size
):
    """sum(ref(f) * g) == sum(f * backward(g)): the forward is linear in the features."""
    rng = np.random.default_rng(7)
    case = make_case(rng, spatial_scale=spatial_scale, bad_indices=True)
    f, boxes, idx = case["features"], case["boxes"], case["box_indices"]
    f = rng.standard_normal(f.shape)
    out = expected_forward(f, boxes, idx, output_size, spatial_scale, sampling_ratio, aligned)
    g = rng.standard_normal(out.shape)
    grad = numpy_roi_align_backward(
        g, boxes, idx, f.shape, output_size, spatial_scale, sampling_ratio, aligned
    )
    assert np.abs(out).sum() > 0 and np.abs(grad).sum() > 0
    np.testing.assert_allclose(np.sum(out * g), np.sum(f * grad), rtol=1e-12, atol=1e-12)
    # Boxes with no samples (NaN, inf, wholly outside, bad index) pool zeros.
    finite = np.all(np.isfinite(boxes), axis=1)
    assert np.all(out[~finite] == 0)


def test_reference_matches_hand_computed_case():
    """detectron2's hand-computed case: 5x5 arange map, box (1,1,3,3), 4x4 output."""
    f = np.arange(25, dtype=np.float64).reshape(1, 5, 5, 1)
    boxes = np.asarray([[1, 1, 3, 3]], np.float32)
    idx = np.zeros(1, np.int32)
    not_aligned = expected_forward(f, boxes, idx, (4, 4), 1.0, 0, False)[0, :, :, 0]
    aligned = expected_forward(f, boxes, idx, (4, 4), 1.0, 0, True)[0, :, :, 0]
    np.testing.assert_allclose(not_aligned[:, 0], [7.5, 10, 12.5, 15])
    np.testing.assert_allclose(aligned[:, 0], [4.5, 7, 9.5, 12])
    np.testing.assert_allclose(np.diff(not_aligned, axis=1), 0.5)


# ---------------------------------------------------------------------------------------------
# nvcc: device compile of every kernel.

_INSTANTIATIONS = r"""
// Instantiates every templated launch helper of roi_align_cuda.cuh (and so every kernel).
#include "roi_align_cuda.cuh"
namespace kc = kmask::cuda;
#define KMASK_INST(T, ACC)                                                                  \
  template cudaError_t kc::launch_roi_align_forward<T>(cudaStream_t, const kc::KernelArgs&, \
      const T*, const float*, const int*, T*);                                              \
  template cudaError_t kc::launch_roi_align_backward<T, ACC>(cudaStream_t,                  \
      const kc::KernelArgs&, const T*, const float*, const int*, ACC*);
KMASK_INST(float, float)
KMASK_INST(double, double)
KMASK_INST(kc::half_bits, float)
KMASK_INST(kc::bfloat16_bits, float)
template cudaError_t kc::launch_cast<kc::half_bits, float>(cudaStream_t, long long,
                                                           const float*, kc::half_bits*);
template cudaError_t kc::launch_cast<kc::bfloat16_bits, float>(cudaStream_t, long long,
                                                               const float*,
                                                               kc::bfloat16_bits*);
#ifdef KMASK_WITH_CUDA_FP16
KMASK_INST(__half, float)
KMASK_INST(__nv_bfloat16, float)
template cudaError_t kc::launch_cast<__half, float>(cudaStream_t, long long, const float*,
                                                    __half*);
template cudaError_t kc::launch_cast<__nv_bfloat16, float>(cudaStream_t, long long,
                                                           const float*, __nv_bfloat16*);
#endif
"""


@needs_nvcc
@pytest.mark.parametrize("with_cuda_fp16", [False, True], ids=["raw16", "cuda_fp16"])
def test_cuda_header_compiles_with_nvcc(tmp_path, with_cuda_fp16):
    src = tmp_path / "instantiate.cu"
    src.write_text(_INSTANTIATIONS)
    defines = ["-DKMASK_WITH_CUDA_FP16"] if with_cuda_fp16 else []
    cmd = [
        NVCC,
        "-c",
        f"-arch={_nvcc_arch()}",
        "-std=c++17",
        f"-I{CUDA_DIR}",
        *defines,
        "-Werror",
        "all-warnings",
        str(src),
        "-o",
        str(tmp_path / "instantiate.o"),
    ]
    result = _run(cmd)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "instantiate.o").stat().st_size > 0


@needs_nvcc
def test_cuda_header_exports_the_extern_c_kernel_names(tmp_path):
    """CuPy's RawModule.get_function looks kernels up by these unmangled names."""
    src = tmp_path / "names.cu"
    src.write_text('#include "roi_align_cuda.cuh"\n')
    arch = _nvcc_arch().replace("sm_", "compute_")
    result = _run(
        [
            NVCC,
            "-ptx",
            f"-arch={arch}",
            f"-I{CUDA_DIR}",
            str(src),
            "-o",
            str(tmp_path / "names.ptx"),
        ]
    )
    assert result.returncode == 0, result.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)\(", (tmp_path / "names.ptx").read_text()))
    missing = [name for name in EXTERN_KERNELS if name not in entries]
    assert not missing, f"missing extern C kernels {missing}; found {sorted(entries)}"


# ---------------------------------------------------------------------------------------------
# nvcc: host harness running the kernels' per-element code over every element.

_HARNESS = r"""
// Runs the per-element functions of roi_align_cuda.cuh on the host, one element after another
// (what the GPU threads do in parallel; accumulate() is a plain add in a host pass).
//   harness forward|backward f32|f64|f16|bf16 DIR
//     DIR/args.bin: int32 [batch, height, width, channels, num_boxes, pooled_h, pooled_w,
//                   sampling_ratio, aligned] then float32 spatial_scale
//     forward:  DIR/features.bin [B,H,W,C] T, boxes.bin [K,4] f32, idx.bin [K] i32 -> out.bin
//     backward: DIR/grads.bin [K,ph,pw,C] T, boxes.bin, idx.bin -> accum.bin [B,H,W,C] Acc
//   harness convert DIR
//     DIR/f32.bin -> to_f16.bin, to_bf16.bin (uint16 bits);
//     DIR/u16.bin -> f16_to_f32.bin, bf16_to_f32.bin
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
#include "roi_align_cuda.cuh"
using namespace kmask::cuda;

template <typename X>
std::vector<X> read_all(const std::string& path, long long expected = -1) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) { std::fprintf(stderr, "cannot open %s\n", path.c_str()); std::exit(3); }
  std::fseek(f, 0, SEEK_END);
  const long bytes = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  std::vector<X> v(bytes / sizeof(X));
  if (std::fread(v.data(), sizeof(X), v.size(), f) != v.size()) std::exit(4);
  std::fclose(f);
  if (expected >= 0 && static_cast<long long>(v.size()) != expected) {
    std::fprintf(stderr, "%s: %zu elements, expected %lld\n", path.c_str(), v.size(), expected);
    std::exit(5);
  }
  return v;
}

template <typename X>
void write_all(const std::string& path, const std::vector<X>& v) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(v.data(), sizeof(X), v.size(), f) != v.size()) std::exit(6);
  std::fclose(f);
}

template <typename T, typename Acc>
int run(const std::string& op, const std::string& dir) {
  const std::vector<int> ints = read_all<int>(dir + "/args.bin", 10);
  float scale;
  __builtin_memcpy(&scale, &ints[9], sizeof(float));
  const KernelArgs a = make_kernel_args(ints[0], ints[1], ints[2], ints[3], ints[4], ints[5],
                                        ints[6], scale, ints[7], ints[8]);
  const long long n = output_elements(a);
  const long long feature_n = 1LL * a.batch * a.height * a.width * a.channels;
  const std::vector<float> boxes = read_all<float>(dir + "/boxes.bin", 4LL * a.num_boxes);
  const std::vector<int> idx = read_all<int>(dir + "/idx.bin", a.num_boxes);
  if (op == "forward") {
    const std::vector<T> features = read_all<T>(dir + "/features.bin", feature_n);
    std::vector<T> out(n);
    for (long long i = 0; i < n; ++i)
      roi_align_forward_element<T>(i, a, features.data(), boxes.data(), idx.data(), out.data());
    write_all(dir + "/out.bin", out);
    return 0;
  }
  if (op == "backward") {
    const std::vector<T> grads = read_all<T>(dir + "/grads.bin", n);
    std::vector<Acc> accum(feature_n, Acc(0));
    for (long long i = 0; i < n; ++i)
      roi_align_backward_element<T, Acc>(i, a, grads.data(), boxes.data(), idx.data(),
                                         accum.data());
    write_all(dir + "/accum.bin", accum);
    return 0;
  }
  return 2;
}

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "convert") {
    const std::string dir = argv[2];
    const std::vector<float> values = read_all<float>(dir + "/f32.bin");
    std::vector<unsigned short> to_f16(values.size()), to_bf16(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      to_f16[i] = float_to_half_bits(values[i]);
      to_bf16[i] = float_to_bfloat16_bits(values[i]);
    }
    write_all(dir + "/to_f16.bin", to_f16);
    write_all(dir + "/to_bf16.bin", to_bf16);
    const std::vector<unsigned short> bits = read_all<unsigned short>(dir + "/u16.bin");
    std::vector<float> from_f16(bits.size()), from_bf16(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) {
      from_f16[i] = half_bits_to_float(bits[i]);
      from_bf16[i] = bfloat16_bits_to_float(bits[i]);
    }
    write_all(dir + "/f16_to_f32.bin", from_f16);
    write_all(dir + "/bf16_to_f32.bin", from_bf16);
    return 0;
  }
  if (argc != 4) return 2;
  const std::string op = argv[1], type = argv[2], dir = argv[3];
  if (type == "f32") return run<float, float>(op, dir);
  if (type == "f64") return run<double, double>(op, dir);
  if (type == "f16") return run<half_bits, float>(op, dir);
  if (type == "bf16") return run<bfloat16_bits, float>(op, dir);
  return 2;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """Path of the host harness executable (built once per module)."""
    if NVCC is None:
        pytest.skip("nvcc is not on PATH: cannot build the host harness")
    build = tmp_path_factory.mktemp("roi_align_harness")
    src = build / "harness.cu"
    src.write_text(_HARNESS)
    exe = build / "harness"
    result = _run(
        [
            NVCC,
            f"-arch={_nvcc_arch()}",
            "-std=c++17",
            "-O1",
            f"-I{CUDA_DIR}",
            str(src),
            "-o",
            str(exe),
        ]
    )
    assert result.returncode == 0, result.stderr
    return exe


class _Harness:
    """forward/backward callables of cuda_check.kernel_checks, backed by the host harness."""

    def __init__(self, exe: pathlib.Path, workdir: pathlib.Path):
        self.exe, self.workdir, self.calls = exe, workdir, 0

    def _prepare(self, shape, boxes, idx, output_size, scale, ratio, aligned):
        self.calls += 1
        d = self.workdir / f"call{self.calls}"
        d.mkdir()
        ints = np.asarray([*shape, len(boxes), *output_size, ratio, int(aligned)], np.int32)
        (d / "args.bin").write_bytes(ints.tobytes() + np.float32(scale).tobytes())
        (d / "boxes.bin").write_bytes(np.ascontiguousarray(boxes, np.float32).tobytes())
        (d / "idx.bin").write_bytes(np.ascontiguousarray(idx, np.int32).tobytes())
        return d

    def _call(self, op, suffix, d):
        result = _run([str(self.exe), op, suffix, str(d)], timeout=120)
        assert result.returncode == 0, f"harness {op} {suffix}: {result.stderr}"

    def forward(self, suffix, f, boxes, idx, output_size, scale, ratio, aligned):
        d = self._prepare(f.shape, boxes, idx, output_size, scale, ratio, aligned)
        (d / "features.bin").write_bytes(cuda_check.to_kernel_storage(f, suffix).tobytes())
        self._call("forward", suffix, d)
        storage = np.uint16 if suffix == "bf16" else cuda_check.KERNEL_DTYPES[suffix][0]
        out = np.frombuffer((d / "out.bin").read_bytes(), storage)
        out = cuda_check.from_kernel_storage(out, suffix)
        return out.reshape(len(boxes), *output_size, f.shape[-1])

    def backward(self, suffix, grads, boxes, idx, shape, output_size, scale, ratio, aligned):
        d = self._prepare(shape, boxes, idx, output_size, scale, ratio, aligned)
        (d / "grads.bin").write_bytes(cuda_check.to_kernel_storage(grads, suffix).tobytes())
        self._call("backward", suffix, d)
        accum_dtype = cuda_check.KERNEL_DTYPES[suffix][1]
        return np.frombuffer((d / "accum.bin").read_bytes(), accum_dtype).reshape(shape)


@needs_nvcc
@pytest.mark.parametrize("suffix", ["f32", "f64", "f16", "bf16"])
def test_kernel_elements_match_references_on_host(harness, tmp_path, suffix):
    """Every output / gradient element of the kernels' code against the NumPy references.

    f32: random boxes, 1e-5. f64: boxes on a dyadic grid (exact geometry), 1e-10, which
    float32 accumulation would miss. f16/bf16: half an ulp of the output type. Inputs include
    boxes partly and wholly outside the map, a zero-area box, NaN and inf boxes, and box
    indices -1 and B (zeros, no gradient).
    """
    h = _Harness(harness, tmp_path)
    results = list(kernel_checks(h.forward, h.backward, seed=3, suffixes=(suffix,)))
    expected = len(DYADIC_SETTINGS if suffix == "f64" else SETTINGS) * 2
    assert len(results) == expected
    failed = [f"{name}: max abs err {err:.3e}" for name, err, ok in results if not ok]
    assert not failed, "\n".join(failed)


@needs_nvcc
def test_kernel_elements_nan_and_bad_index_give_zeros_on_host(harness, tmp_path):
    """NaN / inf boxes and box indices outside [0, B) pool zeros and get no gradient."""
    rng = np.random.default_rng(11)
    f = rng.integers(-64, 65, size=(2, 6, 7, 2)) / 64.0 + 2.0  # no zero pixel
    boxes = np.asarray(
        [[1, 1, 4, 5], [np.nan, 1, 4, 5], [1, 1, 4, np.inf], [1, 1, 4, 5], [1, 1, 4, 5]], np.float32
    )
    idx = np.asarray([0, 0, 1, -1, 2], np.int32)
    h = _Harness(harness, tmp_path)
    for suffix in ("f32", "f64"):
        out = h.forward(suffix, f, boxes, idx, (3, 3), 1.0, 2, True)
        assert np.all(out[0] > 0)
        assert np.all(out[1:] == 0)
        grads = np.ones_like(out)
        grads[0] = 0.0  # only the invalid boxes carry gradient
        grad = h.backward(suffix, grads, boxes, idx, f.shape, (3, 3), 1.0, 2, True)
        assert np.all(grad == 0)


@needs_nvcc
def test_16bit_conversions_match_numpy_and_ml_dtypes(harness, tmp_path):
    """Host path of the raw-bit float16 / bfloat16 conversions (every 16-bit pattern, and
    float32 values around ties, subnormals, overflow, inf and NaN)."""
    rng = np.random.default_rng(5)
    specials = np.asarray(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            65504.0,
            65519.99,
            65520.0,
            65536.0,
            1e30,
            -1e30,
            np.inf,
            -np.inf,
            np.nan,
            2.0**-24,
            2.0**-25,
            1.5 * 2.0**-25,
            2.0**-26,
            2.0**-14,
            2.0**-14 - 2.0**-25,
            1.0 + 2.0**-11,
            1.0 + 3 * 2.0**-11,
            1.0 + 2.0**-8,
            1.0 + 3 * 2.0**-8,
            3.0e-39,
            -3.0e-39,
        ],
        np.float32,
    )
    random_bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate(
        [
            specials,
            random_bits.view(np.float32),
            rng.standard_normal(50_000).astype(np.float32) * 1e-5,
            rng.standard_normal(50_000).astype(np.float32) * 1e4,
        ]
    )
    bits = np.arange(2**16, dtype=np.uint16)
    (tmp_path / "f32.bin").write_bytes(values.tobytes())
    (tmp_path / "u16.bin").write_bytes(bits.tobytes())
    result = _run([str(harness), "convert", str(tmp_path)])
    assert result.returncode == 0, result.stderr

    def load(name, dtype):
        return np.frombuffer((tmp_path / name).read_bytes(), dtype)

    # binary16 -> float32: exact for every pattern (NaNs stay NaN).
    got = load("f16_to_f32.bin", np.float32)
    want = bits.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    # bfloat16 -> float32: the top 16 bits.
    np.testing.assert_array_equal(load("bf16_to_f32.bin", np.uint32), bits.astype(np.uint32) << 16)
    # float32 -> binary16, round to nearest even (numpy's cast).
    with np.errstate(over="ignore"):
        want16 = values.astype(np.float16)
    got16 = load("to_f16.bin", np.uint16).view(np.float16)
    nan = np.isnan(values)
    assert np.all(np.isnan(got16[nan]))
    np.testing.assert_array_equal(got16[~nan].view(np.uint16), want16[~nan].view(np.uint16))
    # float32 -> bfloat16, round to nearest even (ml_dtypes, TensorFlow's bfloat16).
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes gives the bfloat16 check")
    with np.errstate(invalid="ignore"):  # NaN inputs
        want_bf = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    got_bf = load("to_bf16.bin", np.uint16)
    assert np.all((got_bf[nan] & 0x7FFF) > 0x7F80)
    np.testing.assert_array_equal(got_bf[~nan], want_bf[~nan])


_HOST_ENTRIES = r"""
// Host twins of the extern "C" kernels: same names with kmask_host_ for kmask_, same
// arguments, running every element in a loop. Used to drive tests/ops/cuda_check.py's CuPy
// plumbing (argument order and types, storage conversions) on a machine with no GPU.
#include "roi_align_cuda.cuh"
using namespace kmask::cuda;
#define KMASK_HOST_ENTRIES(SUFFIX, T, ACC)                                                 \
  extern "C" void kmask_host_roi_align_forward_##SUFFIX(                                  \
      const T* f, const float* b, const int* i, T* o, int batch, int height, int width,   \
      int channels, int num_boxes, int ph, int pw, float scale, int ratio, int aligned) {  \
    const KernelArgs a = make_kernel_args(batch, height, width, channels, num_boxes, ph,  \
                                          pw, scale, ratio, aligned);                     \
    for (long long k = 0; k < output_elements(a); ++k)                                    \
      roi_align_forward_element<T>(k, a, f, b, i, o);                                     \
  }                                                                                        \
  extern "C" void kmask_host_roi_align_backward_##SUFFIX(                                 \
      const T* g, const float* b, const int* i, ACC* acc, int batch, int height, int width, \
      int channels, int num_boxes, int ph, int pw, float scale, int ratio, int aligned) {  \
    const KernelArgs a = make_kernel_args(batch, height, width, channels, num_boxes, ph,  \
                                          pw, scale, ratio, aligned);                     \
    for (long long k = 0; k < output_elements(a); ++k)                                    \
      roi_align_backward_element<T, ACC>(k, a, g, b, i, acc);                             \
  }
KMASK_HOST_ENTRIES(f32, float, float)
KMASK_HOST_ENTRIES(f64, double, double)
KMASK_HOST_ENTRIES(f16, half_bits, float)
KMASK_HOST_ENTRIES(bf16, bfloat16_bits, float)
extern "C" void kmask_host_roi_align_cast_f32_to_f16(long long n, const float* s,
                                                     half_bits* d) {
  for (long long k = 0; k < n; ++k) Elem<half_bits>::store(d + k, s[k]);
}
extern "C" void kmask_host_roi_align_cast_f32_to_bf16(long long n, const float* s,
                                                      bfloat16_bits* d) {
  for (long long k = 0; k < n; ++k) Elem<bfloat16_bits>::store(d + k, s[k]);
}
"""


class _HostCupy:
    """The few CuPy calls cuda_check.py makes, on NumPy arrays; kernels run on the host."""

    def __init__(self):
        runtime = type("runtime", (), {})()
        runtime.deviceSynchronize = lambda: None
        runtime.getDeviceCount = lambda: 1
        runtime.getDeviceProperties = lambda index: {"name": b"host"}
        self.cuda = type("cuda", (), {})()
        self.cuda.runtime = runtime
        self.asarray = lambda a: np.array(a, copy=True)
        self.asnumpy = lambda a: np.array(a, copy=True)
        self.full, self.zeros = np.full, np.zeros


class _HostModule:
    """RawModule stand-in: get_function(name) calls the kmask_host_ twin of kernel `name`."""

    def __init__(self, library: ctypes.CDLL):
        self.library = library

    def get_function(self, name: str):
        function = getattr(self.library, name.replace("kmask_", "kmask_host_", 1))

        def launch(grid, block, args):
            assert len(grid) == 1 and len(block) == 1 and grid[0] * block[0] >= 1
            converted = []
            for arg in args:  # CuPy takes arrays and NumPy scalars; so does this stand-in
                if isinstance(arg, np.ndarray):
                    assert arg.flags.c_contiguous
                    converted.append(arg.ctypes.data_as(ctypes.c_void_p))
                elif isinstance(arg, np.int32):
                    converted.append(ctypes.c_int32(int(arg)))
                elif isinstance(arg, np.int64):
                    converted.append(ctypes.c_int64(int(arg)))
                elif isinstance(arg, np.float32):
                    converted.append(ctypes.c_float(float(arg)))
                else:
                    raise TypeError(f"kernel argument {arg!r} is not an array or NumPy scalar")
            function(*converted)

        return launch


@needs_nvcc
def test_cuda_check_plumbing_runs_on_host_kernels(tmp_path):
    """tests/ops/cuda_check.py's CuPy path (argument order and types, 16-bit storage, the
    cast kernels) end to end, with each extern "C" kernel replaced by a host loop over the
    same per-element code; on a GPU the same checks run through CuPy."""
    src = tmp_path / "host_entries.cu"
    src.write_text(_HOST_ENTRIES)
    library = tmp_path / "libkmask_host_entries.so"
    result = _run(
        [
            NVCC,
            "-shared",
            "-Xcompiler",
            "-fPIC",
            f"-arch={_nvcc_arch()}",
            "-std=c++17",
            f"-I{CUDA_DIR}",
            str(src),
            "-o",
            str(library),
        ]
    )
    assert result.returncode == 0, result.stderr
    module = _HostModule(ctypes.CDLL(str(library)))
    results = list(cuda_check.cupy_checks(_HostCupy(), module, seed=4))
    assert len(results) == 2 * (len(SETTINGS) * 3 + len(DYADIC_SETTINGS)) + 2
    failed = [f"{name}: max abs err {err:.3e}" for name, err, ok in results if not ok]
    assert not failed, "\n".join(failed)


# ---------------------------------------------------------------------------------------------
# NVRTC: what cupy.RawModule does with the header.


def _find_nvrtc() -> str | None:
    candidates = [os.environ.get("KMASK_NVRTC_LIB", "")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidates += sorted(glob.glob(os.path.join(cuda_home, "lib64", "libnvrtc.so*")))
    try:
        import nvidia.cuda_nvrtc  # pip wheel nvidia-cuda-nvrtc-cu12

        for root in nvidia.cuda_nvrtc.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    found = ctypes.util.find_library("nvrtc")
    candidates.append(found or "")
    for path in candidates:
        if path and ("alt" not in os.path.basename(path)):
            try:
                ctypes.CDLL(path)
                return path
            except OSError:
                continue
    return None


@pytest.mark.parametrize("std", [None, "--std=c++11", "--std=c++17"])
def test_cuda_header_compiles_with_nvrtc(std):
    """Compiles the header as CuPy's RawModule would (NVRTC, no host code, no CUDA headers)."""
    path = _find_nvrtc()
    if path is None:
        pytest.skip(
            "libnvrtc not found (set KMASK_NVRTC_LIB, CUDA_HOME, or install the "
            "nvidia-cuda-nvrtc wheel): no libnvrtc.so under $CUDA_HOME/lib64 or on the loader path"
        )
    nvrtc = ctypes.CDLL(path)
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    prog = ctypes.c_void_p()
    code = f'#include "{cuda_check.CUDA_HEADER.name}"\n'.encode()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), code, b"kmask_check.cu", 0, None, None) == 0
    try:
        # -ftz=true: CuPy adds it to every compile.
        opts = [f"-I{CUDA_DIR}", "--gpu-architecture=compute_80", "-ftz=true"]
        opts = [o.encode() for o in opts + ([std] if std else [])]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        assert status == 0, (
            f"NVRTC ({path}): {nvrtc.nvrtcGetErrorString(status).decode()}\n"
            f"{log.value.decode(errors='replace')}"
        )
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetPTX(prog, ptx)
        entries = set(re.findall(r"\.entry\s+(\w+)\(", ptx.value.decode()))
        missing = [name for name in EXTERN_KERNELS if name not in entries]
        assert not missing, f"NVRTC PTX lacks {missing}"
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))


# ---------------------------------------------------------------------------------------------
# The TensorFlow GPU functors (compile only).


def _tf_gpu_compile_or_skip():
    """(compile flags, framework library) or pytest.skip with the reason."""
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    tf = pytest.importorskip("tensorflow")
    info = tf.sysconfig.get_build_info()
    include = pathlib.Path(tf.sysconfig.get_include())
    if not (include / "tensorflow/core/framework/op_kernel.h").exists():
        pytest.skip(f"TensorFlow headers missing under {include}")
    if not info.get("is_cuda_build"):
        pytest.skip("this TensorFlow is not a CUDA build")
    # Compile only: this checks the source against TensorFlow's headers. When nvcc's CUDA
    # major version differs from TensorFlow's (here CUDA 13 vs 12.5) the object could not be
    # loaded by this TensorFlow, which is why `kmask build-ops` then builds CPU-only; the
    # source check is still meaningful.
    lib_dir = pathlib.Path(tf.sysconfig.get_lib())
    framework = sorted(lib_dir.glob("libtensorflow_framework.so*"))
    return tf.sysconfig.get_compile_flags(), framework[0] if framework else None


@pytest.mark.slow  # about a minute of nvcc on 2 cores
def test_tf_gpu_functors_compile_against_installed_tensorflow(tmp_path):
    compile_flags, framework = _tf_gpu_compile_or_skip()
    cuda_home = os.environ.get("CUDA_HOME") or str(pathlib.Path(NVCC).resolve().parent.parent)
    # TF's gpu headers include "third_party/gpus/cuda/include/cuda_fp16.h", which the wheel
    # does not ship: map that path to the toolkit's include directory.
    shim = tmp_path / "cuda_shim"
    (shim / "third_party/gpus/cuda").mkdir(parents=True)
    (shim / "third_party/gpus/cuda/include").symlink_to(pathlib.Path(cuda_home, "include"))
    obj = tmp_path / "roi_align_op_gpu.cu.o"
    cmd = [
        NVCC,
        "-c",
        "-DGOOGLE_CUDA=1",
        "-x",
        "cu",
        "--expt-relaxed-constexpr",
        f"-arch={_nvcc_arch()}",
        "-Xcompiler",
        "-fPIC",
        "-Xcompiler",
        "-Wno-deprecated-declarations",
        *compile_flags,
        f"-I{shim}",
        f"-I{CUDA_DIR}",
        str(CUDA_DIR / "roi_align_op_gpu.cu.cc"),
        "-o",
        str(obj),
    ]
    result = _run(cmd, timeout=600)
    assert result.returncode == 0, result.stderr
    nm = shutil.which("nm")
    if nm is None:
        return
    defined = _run([nm, "-C", "--defined-only", str(obj)]).stdout
    for functor in ("RoiAlignForward", "RoiAlignBackward"):
        for dtype in ("Eigen::half", "Eigen::bfloat16", "float", "double"):
            sig = f"kmask::functor::{functor}<Eigen::GpuDevice, {dtype}>::operator()"
            assert sig in defined, f"{sig} is not defined in the object"
    # Every TensorFlow / tsl symbol the object needs must be exported by the framework library.
    if framework is not None:
        undefined = _run([nm, "-u", str(obj)]).stdout.split()
        needed = {s for s in undefined if "tensorflow" in s or "tsl" in s}
        exported = set(_run([nm, "-D", "--defined-only", str(framework)]).stdout.split())
        assert needed <= exported, f"not exported by {framework.name}: {needed - exported}"


# ---------------------------------------------------------------------------------------------
# CuPy on a GPU.


@pytest.fixture(scope="module")
def cupy_module():
    cupy, reason = cuda_check.cupy_or_reason()
    if cupy is None:
        pytest.skip(reason)
    return cupy, cuda_check.load_cupy_module(cupy)


@pytest.mark.parametrize("suffix", ["f32", "f64", "f16", "bf16"])
def test_cupy_kernels_match_references(cupy_module, suffix):
    cupy, module = cupy_module
    results = list(cuda_check.cupy_checks(cupy, module, seed=0, suffixes=(suffix,)))
    assert results
    failed = [f"{name}: max abs err {err:.3e}" for name, err, ok in results if not ok]
    assert not failed, "\n".join(failed)


def test_cupy_kernels_match_torchvision(cupy_module):
    cupy, module = cupy_module
    torch, reason = cuda_check.torchvision_or_reason()
    if torch is None:
        pytest.skip(reason)
    results = list(cuda_check.torchvision_checks(torch, cupy, module))
    failed = [f"{name}: max abs err {err:.3e}" for name, err, ok in results if not ok]
    assert not failed, "\n".join(failed)
