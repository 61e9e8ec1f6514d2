// The GPU forward pass's layout kernels (kernels/cuda/layout_ops.h) against obvious host loops
// at awkward sizes. Without a GPU (or a CUDA build) each case is skipped with the reason.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/conformance/cuda_test_util.h"

#ifdef MOEMESH_HAVE_CUDA
#include "kernels/cuda/layout_ops.h"
#endif

namespace moemesh {
namespace {

using testing_cuda::ExpectClose;
using testing_cuda::Random;
#ifdef MOEMESH_HAVE_CUDA
using testing_cuda::DeviceBuffer;
#endif

class CudaLayoutOps : public ::testing::TestWithParam<int64_t> {};

TEST_P(CudaLayoutOps, SplitQkvWithAndWithoutClip) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const int64_t rows = GetParam(), qc = 96, kc = 17;
  const auto qkv = Random(rows * (qc + 2 * kc), 1, 3.0f);
  for (float clip : {0.0f, 2.5f}) {
    std::vector<float> q(rows * qc), k(rows * kc), v(rows * kc);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < qc + 2 * kc; ++c) {
        float x = qkv[r * (qc + 2 * kc) + c];
        if (clip > 0) x = std::fmin(std::fmax(x, -clip), clip);
        if (c < qc) q[r * qc + c] = x;
        else if (c < qc + kc) k[r * kc + c - qc] = x;
        else v[r * kc + c - qc - kc] = x;
      }
    }
    DeviceBuffer<float> d(qkv), dq(q.size()), dk(k.size()), dv(v.size());
    cuda::SplitQkv(d.ptr, dq.ptr, dk.ptr, dv.ptr, rows, qc, kc, clip, nullptr);
    ExpectClose(dq.ToHost(), q, 0, 0, "q");
    ExpectClose(dk.ToHost(), k, 0, 0, "k");
    ExpectClose(dv.ToHost(), v, 0, 0, "v");
  }
#endif
}

TEST_P(CudaLayoutOps, GatherRowsAndWholeProjectionNorm) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const int64_t rows = GetParam(), cols = 97, full = 300;
  const auto x = Random(rows * cols, 2);
  std::vector<int32_t> index;
  for (int64_t i = rows - 1; i >= 0; i -= 2) index.push_back(static_cast<int32_t>(i));
  std::vector<float> gathered;
  for (int32_t i : index) gathered.insert(gathered.end(), x.begin() + i * cols, x.begin() + (i + 1) * cols);
  DeviceBuffer<float> dx(x), dout(gathered.size());
  DeviceBuffer<int32_t> di(index);
  cuda::GatherRows(dx.ptr, di.ptr, dout.ptr, static_cast<int64_t>(index.size()), cols, nullptr);
  ExpectClose(dout.ToHost(), gathered, 0, 0, "gather");

  // Sums of squares with stride 2, then the norm over `full` values with extra (other ranks')
  // squares added to the sums.
  const auto weight = Random(cols, 3);
  std::vector<float> want_sums(rows * 2, 0.0f), want(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) s += double(x[r * cols + c]) * x[r * cols + c];
    want_sums[r * 2] = static_cast<float>(s);
    const float total = static_cast<float>(s) + 5.0f;
    const float inv = 1.0f / std::sqrt(total / full + 1e-6f);
    for (int64_t c = 0; c < cols; ++c) want[r * cols + c] = x[r * cols + c] * inv * weight[c];
  }
  DeviceBuffer<float> sums(rows * 2), dw(weight);
  cuda::RowSumSquares(dx.ptr, sums.ptr, rows, cols, 2, nullptr);
  ExpectClose(sums.ToHost(), want_sums, 1e-5, 1e-5, "sum of squares");
  std::vector<float> with_others = want_sums;
  for (int64_t r = 0; r < rows; ++r) with_others[r * 2] += 5.0f;
  DeviceBuffer<float> dsums(with_others);
  cuda::ScaleRowsByRms(dx.ptr, dsums.ptr, 2, dw.ptr, rows, cols, full, 1e-6f, nullptr);
  ExpectClose(dx.ToHost(), want, 1e-5, 1e-5, "scaled rows");
#endif
}

TEST_P(CudaLayoutOps, SigmoidGatedAdd) {
  MM_REQUIRE_CUDA();
#ifdef MOEMESH_HAVE_CUDA
  const int64_t rows = GetParam(), cols = 4099;
  auto out = Random(rows * cols, 4);
  const auto gate = Random(rows, 5, 4.0f), y = Random(rows * cols, 6);
  std::vector<float> want = out;
  for (int64_t r = 0; r < rows; ++r) {
    const float g = 1.0f / (1.0f + std::exp(-gate[r]));
    for (int64_t c = 0; c < cols; ++c) want[r * cols + c] += g * y[r * cols + c];
  }
  DeviceBuffer<float> dout(out), dg(gate), dy(y);
  cuda::SigmoidGatedAdd(dout.ptr, dg.ptr, dy.ptr, rows, cols, nullptr);
  ExpectClose(dout.ToHost(), want, 1e-6, 1e-6, "gated add");
#endif
}

INSTANTIATE_TEST_SUITE_P(Rows, CudaLayoutOps, ::testing::Values(1, 3, 17),
                         [](const auto& info) { return "rows" + std::to_string(info.param); });

}  // namespace
}  // namespace moemesh
