// MeasureCascadeCosts of cascade_calibration.h. Every measurement captures N launches into one
// CUDA graph, replays it several times and takes the median time / N (so launch costs are what a
// captured decode step pays).
#include "kernels/cuda/graph_timing.h"
#include "kernels/cuda/cascade_calibration.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cascade.h"
#include "kernels/cuda/cuda_check.h"

namespace moemesh::cuda {
namespace {

constexpr int kLaunches = 20;
constexpr int kReps = 7;
constexpr int kSuffix = 32;  // own positions per sequence in the level measurements

[[noreturn]] void Fail(const char* why) {
  std::fprintf(stderr, "moemesh::cuda::MeasureCascadeCosts: %s\n", why);
  std::abort();
}

template <typename T>
T* DeviceAlloc(size_t n) {
  void* p = nullptr;
  MM_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  MM_CUDA_CHECK(cudaMemset(p, 0, std::max<size_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

template <typename T>
T* Upload(const std::vector<T>& host) {
  T* p = DeviceAlloc<T>(host.size());
  if (!host.empty()) {
    MM_CUDA_CHECK(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  return p;
}

// Block tables of `members` sequences that all hold blocks 0 .. blocks - 1.
std::vector<int32_t> SameBlocks(int members, int64_t blocks) {
  std::vector<int32_t> tables(static_cast<size_t>(members) * blocks);
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i % blocks);
  return tables;
}

// Seconds per call of `launch` (which enqueues one call on the stream): median over replays of a
// graph of kLaunches calls. One eager call first (sets kernels up before capture).
double TimeCalls(cudaStream_t stream, const std::function<void()>& launch) {
  launch();
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  MM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kLaunches; ++i) launch();
  MM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  MM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  const double ms = MedianGraphMs(exec, stream, /*min_ms=*/0.0, kReps, kReps);
  MM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  MM_CUDA_CHECK(cudaGraphDestroy(graph));
  return ms * 1e-3 / kLaunches;
}

// Device buffers of one synthetic batch: `batch` sequences with the given tables and lengths,
// one level over [0, shared) of the first `members` sequences (none when members == 0).
struct Batch {
  CascadeParams cascade;
  DecodeParams decode;
  std::vector<void*> owned;
  void* cascade_ws = nullptr;
  size_t cascade_ws_bytes = 0;
  void* decode_ws = nullptr;
  size_t decode_ws_bytes = 0;

  Batch() = default;
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;
  ~Batch() {
    for (void* p : owned) cudaFree(p);
  }
};

void Setup(const PagedKv& cache, int n_heads, const std::vector<int32_t>& tables,
           int max_blocks, const std::vector<int32_t>& lens, int members, int shared,
           Batch* b) {
  const int batch = static_cast<int>(lens.size());
  const int d = cache.head_dim;
  int32_t* tables_dev = Upload(tables);
  int32_t* lens_dev = Upload(lens);
  float* q = DeviceAlloc<float>(static_cast<size_t>(batch) * n_heads * d);
  float* out = DeviceAlloc<float>(static_cast<size_t>(batch) * n_heads * d);
  std::vector<float> q_host(static_cast<size_t>(batch) * n_heads * d);
  for (size_t i = 0; i < q_host.size(); ++i) q_host[i] = 0.01f * static_cast<float>(i % 97) - 0.4f;
  MM_CUDA_CHECK(
      cudaMemcpy(q, q_host.data(), q_host.size() * sizeof(float), cudaMemcpyHostToDevice));
  b->owned = {tables_dev, lens_dev, q, out};
  const int max_len = *std::max_element(lens.begin(), lens.end());

  DecodeParams& dp = b->decode;
  dp.q = q;
  dp.out = out;
  dp.block_tables = tables_dev;
  dp.kv_lens = lens_dev;
  dp.batch = batch;
  dp.n_heads = n_heads;
  dp.max_blocks_per_seq = max_blocks;
  dp.max_kv_len = max_len;
  dp.scale = 1.0f / 16.0f;
  b->decode_ws_bytes = DecodeWorkspaceBytes(batch, n_heads, d, max_len);
  if (b->decode_ws_bytes > 0) {
    b->decode_ws = DeviceAlloc<unsigned char>(b->decode_ws_bytes);
    b->owned.push_back(b->decode_ws);
  }

  CascadeParams& cp = b->cascade;
  cp.q = q;
  cp.out = out;
  cp.block_tables = tables_dev;
  cp.kv_lens = lens_dev;
  cp.max_blocks_per_seq = max_blocks;
  cp.scale = dp.scale;
  cp.bounds.batch = batch;
  cp.bounds.n_heads = n_heads;
  cp.bounds.max_levels = members > 0 ? 1 : 0;
  cp.bounds.max_members = std::max(members, 1);
  cp.bounds.max_depth = 1;
  cp.bounds.max_shared_len = shared;
  cp.bounds.max_suffix_len = std::max(0, max_len - shared);
  std::vector<CascadeLevelSpec> levels;
  if (members > 0) {
    CascadeLevelSpec level;
    for (int i = 0; i < members; ++i) level.members.push_back(i);
    level.begin = 0;
    level.end = shared;
    levels.push_back(level);
  }
  std::vector<int32_t> words;
  const std::string error = BuildCascadeLayout(cp.bounds, levels, nullptr, &words);
  if (!error.empty()) Fail(error.c_str());
  int32_t* layout = Upload(words);
  b->owned.push_back(layout);
  cp.layout = layout;
  if (members > 0) {
    const size_t rows = static_cast<size_t>(members) * n_heads;
    cp.prefix_v = DeviceAlloc<float>(rows * d);
    cp.prefix_lse = DeviceAlloc<float>(rows);
    b->owned.push_back(cp.prefix_v);
    b->owned.push_back(cp.prefix_lse);
  }
  b->cascade_ws_bytes = CascadeWorkspaceBytes(cache, cp);
  b->cascade_ws = DeviceAlloc<unsigned char>(b->cascade_ws_bytes);
  b->owned.push_back(b->cascade_ws);
}

// `batch` sequences sharing block 0 .. shared_blocks - 1 of the pool (the first `members` of them
// in a level over it), then each with its own blocks for `suffix` more positions.
void SharedBatch(const PagedKv& cache, int n_heads, int batch, int members, int shared_blocks,
                 int suffix, Batch* b) {
  const int bs = cache.block_size;
  const int own_blocks = (suffix + bs - 1) / bs;
  const int max_blocks = shared_blocks + own_blocks;
  std::vector<int32_t> tables(static_cast<size_t>(batch) * max_blocks);
  int32_t next = shared_blocks;
  for (int s = 0; s < batch; ++s) {
    for (int i = 0; i < max_blocks; ++i) {
      tables[static_cast<size_t>(s) * max_blocks + i] = i < shared_blocks ? i : next++;
    }
  }
  if (next > cache.num_blocks) Fail("pool too small for the level shapes");
  const std::vector<int32_t> lens(batch, shared_blocks * bs + suffix);
  Setup(cache, n_heads, tables, max_blocks, lens, members, shared_blocks * bs, b);
}

}  // namespace

CascadeTimings MeasureCascadeCosts(int kv_heads, int n_heads, int head_dim, int block_size,
                                   cudaStream_t stream) {
  if (kv_heads <= 0 || n_heads <= 0 || n_heads % kv_heads != 0 ||
      n_heads / kv_heads > kCascadeMaxGroup || (head_dim != 64 && head_dim != 128) ||
      block_size <= 0) {
    Fail("bad shape");
  }
  CascadeTimings t;
  int device = 0;
  MM_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop;
  MM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  t.device = prop.name;
  const int group = n_heads / kv_heads;
  const int64_t token_bytes = static_cast<int64_t>(kv_heads) * head_dim * 2 * 2;  // K and V
  size_t free_bytes = 0, total_bytes = 0;
  MM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  int64_t pool_bytes = std::max<int64_t>(4 * static_cast<int64_t>(prop.l2CacheSize), 128 << 20);
  pool_bytes = std::min<int64_t>(pool_bytes, static_cast<int64_t>(free_bytes) / 3);
  // Whole 16-sequence batches of whole blocks.
  const int64_t blocks_per_seq = std::max<int64_t>(1, pool_bytes / token_bytes / 16 / block_size);
  const int64_t num_blocks = 16 * blocks_per_seq + 4096;  // + room for the level shapes' suffixes
  if (num_blocks * block_size >= (int64_t{1} << 31)) Fail("pool too large");
  const size_t pool_elems = static_cast<size_t>(num_blocks) * kv_heads * block_size * head_dim;
  PagedKv cache;
  cache.k = DeviceAlloc<__nv_bfloat16>(pool_elems);
  cache.v = DeviceAlloc<__nv_bfloat16>(pool_elems);
  MM_CUDA_CHECK(cudaMemset(cache.k, 0x3c, pool_elems * 2));  // bf16 0x3c3c ~ 0.0115
  MM_CUDA_CHECK(cudaMemset(cache.v, 0x3d, pool_elems * 2));
  cache.num_blocks = static_cast<int32_t>(num_blocks);
  cache.block_size = block_size;
  cache.kv_heads = kv_heads;
  cache.head_dim = head_dim;
  char line[256];

  {  // Flat decode bandwidth: 16 sequences, each its own blocks, KV > L2.
    std::vector<int32_t> tables(16 * blocks_per_seq);
    for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i);
    const std::vector<int32_t> lens(16, static_cast<int32_t>(blocks_per_seq * block_size));
    Batch b;
    Setup(cache, n_heads, tables, static_cast<int>(blocks_per_seq), lens, 0, 0, &b);
    const double s = TimeCalls(stream, [&] {
      DecodeAttention(cache, b.decode, b.decode_ws, b.decode_ws_bytes, stream);
    });
    const double bytes = 16.0 * blocks_per_seq * block_size * token_bytes;
    t.decode_bytes_per_second = bytes / s;
    std::snprintf(line, sizeof(line), "decode: 16 x %lld tokens, %.1f MiB: %.2f us, %.0f GB/s\n",
                  static_cast<long long>(blocks_per_seq * block_size), bytes / 1048576.0, s * 1e6,
                  bytes / s / 1e9);
    t.detail += line;
  }
  {  // Prefix pass at few rows over the whole pool (> L2): bytes per second.
    const int members = std::max(1, 64 / group);
    const int64_t shared_blocks = 16 * blocks_per_seq;
    const std::vector<int32_t> tables = SameBlocks(members, shared_blocks + 1);
    const int shared = static_cast<int>(shared_blocks * block_size);
    const std::vector<int32_t> lens(members, shared + 1);
    Batch b;
    Setup(cache, n_heads, tables, static_cast<int>(shared_blocks + 1), lens, members, shared, &b);
    const double s = TimeCalls(stream, [&] {
      CascadePrefixPass(cache, b.cascade, b.cascade_ws, b.cascade_ws_bytes, stream);
    });
    const double bytes = static_cast<double>(shared) * token_bytes;
    t.prefix_bytes_per_second = bytes / s;
    std::snprintf(line, sizeof(line),
                  "prefix (bytes): %d members x %d heads, %d tokens, %.1f MiB: %.2f us, "
                  "%.0f GB/s\n",
                  members, n_heads, shared, bytes / 1048576.0, s * 1e6, bytes / s / 1e9);
    t.detail += line;
  }
  {  // The fused launch at 64 and 512 rows per KV head: flops per second. Its plan differs by
     // rows (16-row tiles or clusters at few rows, 64-row tiles on the warpgroup MMA at many), so
     // the cost model interpolates between the two rates. The times include the launch's fixed
     // costs, which the model also counts in level_seconds: the rates err on the slow side.
    for (const int rows : {64, 512}) {
      const int members = std::max(2, (rows + group - 1) / group);
      const int64_t shared_blocks = std::min<int64_t>(16 * blocks_per_seq, 8192 / block_size + 1);
      const std::vector<int32_t> tables = SameBlocks(members, shared_blocks + 1);
      const int shared = static_cast<int>(shared_blocks * block_size);
      const std::vector<int32_t> lens(members, shared + 1);
      Batch b;
      Setup(cache, n_heads, tables, static_cast<int>(shared_blocks + 1), lens, members, shared,
            &b);
      const double s = TimeCalls(stream, [&] {
        CascadeFused(cache, b.cascade, b.cascade_ws, b.cascade_ws_bytes, stream);
      });
      const double flops = 4.0 * members * n_heads * static_cast<double>(shared) * head_dim;
      const double rate = flops / s;
      (rows == 64 ? t.prefix_flops_per_second : t.wide_prefix_flops_per_second) = rate;
      std::snprintf(line, sizeof(line),
                    "fused (flops): %d members x %d heads, %d tokens: %.2f us, %.1f TFLOP/s\n",
                    members, n_heads, shared, s * 1e6, rate / 1e12);
      t.detail += line;
    }
  }
  {  // The fixed cost of a level and its growth per row: one shared block, 8 and 64 members.
    double fused_diff[2], two_diff[2];
    const int member_counts[2] = {8, 64};
    for (int i = 0; i < 2; ++i) {
      const int members = member_counts[i];
      Batch b;
      SharedBatch(cache, n_heads, members, members, 1, kSuffix, &b);
      const double flat = TimeCalls(stream, [&] {
        DecodeAttention(cache, b.decode, b.decode_ws, b.decode_ws_bytes, stream);
      });
      const double fused = TimeCalls(stream, [&] {
        CascadeFused(cache, b.cascade, b.cascade_ws, b.cascade_ws_bytes, stream);
      });
      const double two = TimeCalls(stream, [&] {
        CascadeAttention(cache, b.cascade, CascadeForm::kTwoLaunch, b.cascade_ws,
                         b.cascade_ws_bytes, stream);
      });
      fused_diff[i] = fused - flat;
      two_diff[i] = two - flat;
      std::snprintf(line, sizeof(line),
                    "level: %d members, 1 shared block + %d own tokens: flat %.2f us, fused %.2f "
                    "us, two-launch %.2f us\n",
                    members, kSuffix, flat * 1e6, fused * 1e6, two * 1e6);
      t.detail += line;
    }
    const double rows[2] = {8.0 * n_heads, 64.0 * n_heads};
    auto fit = [&](const double diff[2], double* level, double* per_row) {
      *per_row = std::max(0.0, (diff[1] - diff[0]) / (rows[1] - rows[0]));
      *level = std::max(0.0, diff[0] - rows[0] * *per_row);
    };
    fit(fused_diff, &t.level_seconds, &t.merge_seconds_per_row);
    fit(two_diff, &t.level_seconds_two_launch, &t.merge_seconds_per_row_two_launch);
  }
  MM_CUDA_CHECK(cudaFree(cache.k));
  MM_CUDA_CHECK(cudaFree(cache.v));
  return t;
}

}  // namespace moemesh::cuda
