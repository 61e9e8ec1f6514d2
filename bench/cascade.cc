// bench/cascade: cascade attention (kernels/cuda/cascade.h: two-launch and fused) against flat
// DecodeAttention over the full block tables, on the FlashInfer #595 shapes and two more, head_dim
// 128, block size 16, every member's own 32 positions after the shared ones:
//   (a) 8 query heads / 1 KV head, batch 8, 4000 shared positions;
//   (b) 64 query heads / 8 KV heads, batch 8, 4000 shared;
//   (c) 8 / 1, batch 64, 32768 shared;
//   (d) 8 / 1, batch 2, 256 shared.
// The shared blocks are physically shared in the pool (as prefix caching stores them), so the
// flat baseline reads them through every member's table. Per variant, N calls are captured in one
// CUDA graph and replayed (median over replays / N); the calls rotate over copies of the pool
// totalling >= 3x L2 (at most 256 copies), so each call starts with the step's KV out of L2. The
// run also measures the cost model's calibration (cascade_calibration.h) per attention shape and
// reports what coordinator/cascade_cost.h's EstimateCascade picks and what that pick costs.
// Ends with one verdict line per goal: the cost model's pick never slower than flat (3% noise
// margin); fused cascade faster than flat on (a); >= 2x on (b); >= 5x on (c).
//
//   build/bin/bench_cascade [--cases abcd] [--launches 20] [--min_ms 200]
//       [--calibration_out PATH] [--prefix_tile_rows 16|64] [--max_prefix_splits N]
//       [--q_parts 1|2|3] [--prefix_unit_tiles 0|1|2] (CascadeParams::prefix_unit_tiles; where
//       the fused plan takes two tiles per prefix CTA, each case also times one tile per CTA)
//       [--cluster 0|1|2|4|8|16] (the fused launch's shape, CascadeParams::cluster; each case
//       also times the flat-grid shape as a baseline)
//       [--overlap 0|1] (CascadeParams::overlap of the cascade calls, default 1: programmatic
//       dependent launches, as the flat DecodeAttention calls always are here)
//       [--sweep]   (also times the fused form over prefix tile rows x split caps, for tuning)
//       [--timeline] (per-CTA clocks of one call of each form: CascadeParams::cta_times)
//       [--timeline_csv PATH] (with --timeline: every CTA's clocks and SM appended to PATH)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "coordinator/cascade_cost.h"
#include "bench/gpu_info.h"
#include "kernels/cuda/graph_timing.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cascade.h"
#include "worker/gpu/cascade_calibration.h"
#include "kernels/cuda/cascade_calibration.h"
#include "kernels/cuda/cuda_check.h"
#include "bench/cascade_options.h"
#include "bench/cascade_timeline.h"

namespace moemesh::bench {
namespace {

constexpr int kHeadDim = 128;
constexpr int kBlockSize = 16;
constexpr int kOwn = 32;          // positions after the shared ones (the query is the last)
constexpr int kMaxReplicas = 256;

struct Case {
  char id;
  int batch, kv_heads, q_heads, shared;
};

const Case kCases[] = {
    {'a', 8, 1, 8, 4000},
    {'b', 8, 8, 64, 4000},
    {'c', 64, 1, 8, 32768},
    {'d', 2, 1, 8, 256},
};

// Median of timed replays of `exec` (after one warm-up), in milliseconds.
double TimeGraphMs(cudaGraphExec_t exec, cudaStream_t stream, double min_ms) {
  return cuda::MedianGraphMs(exec, stream, min_ms, 5, 100);
}

// Microseconds per call: `launch(i)` enqueues call i (rotating over the replicas).
double TimeCalls(cudaStream_t stream, int calls, double min_ms,
                 const std::function<void(int)>& launch) {
  launch(0);  // eager: sets kernels up before capture, surfaces errors
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  MM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) launch(i);
  MM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  MM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  const double us = TimeGraphMs(exec, stream, min_ms) * 1000.0 / calls;
  MM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  MM_CUDA_CHECK(cudaGraphDestroy(graph));
  return us;
}

template <typename T>
T* Upload(const std::vector<T>& host) {
  void* p = nullptr;
  MM_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(host.size(), 1) * sizeof(T)));
  if (!host.empty()) {
    MM_CUDA_CHECK(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  return static_cast<T*>(p);
}

void* Zeros(size_t bytes) {
  void* p = nullptr;
  MM_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 1)));
  MM_CUDA_CHECK(cudaMemset(p, 0, std::max<size_t>(bytes, 1)));
  return p;
}

struct Result {
  bool ran = false;
  std::string note;
  double flat_us = 0, two_us = 0, fused_us = 0, prefix_us = 0, suffix_us = 0;
  double grid_us = 0, max_diff_grid = 0;  // the fused launch as the flat grid (cluster 1)
  double one_tile_us = 0, max_diff_one_tile = 0;  // two-tile plans: one tile per prefix CTA
  double max_diff_two = 0, max_diff_fused = 0;
  int replicas = 0, calls = 0;
  cuda::CascadePlanInfo fused_plan, prefix_plan;
  double working_set_mib = 0;
  std::vector<std::string> sweep;  // --sweep: one line per knob setting
  std::vector<std::string> timeline;  // --timeline: lines per form
};

Result RunCase(const Case& cs, const CascadeBenchOptions& o, size_t l2_bytes, uint32_t seed) {
  Result res;
  const int bs = kBlockSize, d = kHeadDim;
  const int shared_blocks = cs.shared / bs;  // every case's shared range is whole blocks
  const int own_blocks = (kOwn + bs - 1) / bs;
  const int max_blocks = shared_blocks + own_blocks;
  const int64_t unique_blocks = shared_blocks + static_cast<int64_t>(cs.batch) * own_blocks;
  const int64_t block_bytes = static_cast<int64_t>(cs.kv_heads) * bs * d * 2;  // one of K, V
  const int64_t unique_bytes = 2 * unique_blocks * block_bytes;
  res.replicas = static_cast<int>(std::clamp<int64_t>(
      (3 * static_cast<int64_t>(l2_bytes) + unique_bytes - 1) / unique_bytes, 1, kMaxReplicas));
  res.calls = res.replicas * ((o.launches + res.replicas - 1) / res.replicas);
  res.working_set_mib = static_cast<double>(unique_bytes) * res.replicas / 1048576.0;
  const int64_t num_blocks = unique_blocks * res.replicas;
  size_t free_bytes = 0, total_bytes = 0;
  MM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const size_t pool_bytes = static_cast<size_t>(num_blocks * block_bytes);
  if (2 * pool_bytes + (size_t{1} << 30) > free_bytes) {
    res.note = "skipped: not enough GPU memory";
    return res;
  }
  __nv_bfloat16 *k_pool, *v_pool;
  MM_CUDA_CHECK(cudaMalloc(&k_pool, pool_bytes));
  MM_CUDA_CHECK(cudaMalloc(&v_pool, pool_bytes));
  {  // Random bf16 K/V (a realistic softmax): a few MiB of random values tiled over the pools.
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const size_t tile = std::min<size_t>(pool_bytes / 2, size_t{1} << 21);  // elements
    std::vector<__nv_bfloat16> k_tile(tile), v_tile(tile);
    for (size_t i = 0; i < tile; ++i) {
      k_tile[i] = __float2bfloat16_rn(normal(rng));
      v_tile[i] = __float2bfloat16_rn(normal(rng));
    }
    for (size_t off = 0; off < pool_bytes; off += tile * 2) {
      const size_t n = std::min(tile * 2, pool_bytes - off);
      MM_CUDA_CHECK(cudaMemcpy(reinterpret_cast<char*>(k_pool) + off, k_tile.data(), n,
                               cudaMemcpyHostToDevice));
      MM_CUDA_CHECK(cudaMemcpy(reinterpret_cast<char*>(v_pool) + off, v_tile.data(), n,
                               cudaMemcpyHostToDevice));
    }
  }
  // Blocks in shuffled order; replica r's members share its shared blocks.
  std::vector<int32_t> order(num_blocks);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(seed + 1);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int32_t> tables(static_cast<size_t>(res.replicas) * cs.batch * max_blocks);
  int64_t next = 0;
  for (int r = 0; r < res.replicas; ++r) {
    std::vector<int32_t> shared(order.begin() + next, order.begin() + next + shared_blocks);
    next += shared_blocks;
    for (int b = 0; b < cs.batch; ++b) {
      int32_t* t = tables.data() + (static_cast<size_t>(r) * cs.batch + b) * max_blocks;
      for (int i = 0; i < shared_blocks; ++i) t[i] = shared[i];
      for (int i = shared_blocks; i < max_blocks; ++i) t[i] = order[next++];
    }
  }
  const int kv_len = cs.shared + kOwn;
  std::vector<float> q_host(static_cast<size_t>(cs.batch) * cs.q_heads * d);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : q_host) x = normal(rng);

  cuda::PagedKv cache;
  cache.k = k_pool;
  cache.v = v_pool;
  cache.num_blocks = static_cast<int32_t>(num_blocks);
  cache.block_size = bs;
  cache.kv_heads = cs.kv_heads;
  cache.head_dim = d;

  int32_t* tables_dev = Upload(tables);
  int32_t* lens_dev = Upload(std::vector<int32_t>(cs.batch, kv_len));
  float* q = Upload(q_host);
  const size_t out_elems = q_host.size();
  float* out_flat = static_cast<float*>(Zeros(out_elems * 4));
  float* out_casc = static_cast<float*>(Zeros(out_elems * 4));

  cuda::DecodeParams dp;
  dp.q = q;
  dp.out = out_flat;
  dp.block_tables = tables_dev;
  dp.kv_lens = lens_dev;
  dp.batch = cs.batch;
  dp.n_heads = cs.q_heads;
  dp.max_blocks_per_seq = max_blocks;
  dp.max_kv_len = kv_len;
  dp.scale = 1.0f / std::sqrt(static_cast<float>(d));
  const size_t decode_ws_bytes = cuda::DecodeWorkspaceBytes(cs.batch, cs.q_heads, d, kv_len);
  void* decode_ws = decode_ws_bytes > 0 ? Zeros(decode_ws_bytes) : nullptr;

  cuda::CascadeParams cp;
  cp.q = q;
  cp.out = out_casc;
  cp.block_tables = tables_dev;
  cp.kv_lens = lens_dev;
  cp.max_blocks_per_seq = max_blocks;
  cp.scale = dp.scale;
  cp.bounds.batch = cs.batch;
  cp.bounds.n_heads = cs.q_heads;
  cp.bounds.max_levels = 1;
  cp.bounds.max_members = cs.batch;
  cp.bounds.max_depth = 1;
  cp.bounds.max_shared_len = shared_blocks * bs;
  cp.bounds.max_suffix_len = kv_len - shared_blocks * bs;
  cp.prefix_tile_rows = o.prefix_tile_rows;
  cp.max_prefix_splits = o.max_prefix_splits;
  cp.q_parts = o.q_parts;
  cp.prefix_unit_tiles = o.prefix_unit_tiles;
  cp.cluster = o.cluster;
  cp.overlap = o.overlap;
  cuda::CascadeLevelSpec level;
  level.members.resize(cs.batch);
  std::iota(level.members.begin(), level.members.end(), 0);
  level.begin = 0;
  level.end = shared_blocks * bs;
  std::vector<int32_t> words;
  const std::vector<int32_t> lens_host(cs.batch, kv_len);
  const std::string error = cuda::BuildCascadeLayout(cp.bounds, {level}, lens_host.data(), &words);
  if (!error.empty()) {
    std::fprintf(stderr, "layout: %s\n", error.c_str());
    std::exit(1);
  }
  int32_t* layout = Upload(words);
  cp.layout = layout;
  cp.prefix_v = static_cast<float*>(Zeros(out_elems * 4));
  cp.prefix_lse = static_cast<float*>(Zeros(static_cast<size_t>(cs.batch) * cs.q_heads * 4));
  const size_t casc_ws_bytes = cuda::CascadeWorkspaceBytes(cache, cp);
  void* casc_ws = Zeros(casc_ws_bytes);
  res.fused_plan = cuda::DescribeCascadePlan(cache, cp, cuda::cascade::Form::kFused);
  res.prefix_plan = cuda::DescribeCascadePlan(cache, cp, cuda::cascade::Form::kPrefixPass);

  cudaStream_t stream;
  MM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const int64_t replica_stride = static_cast<int64_t>(cs.batch) * max_blocks;
  auto set_replica = [&](int i) {
    dp.block_tables = tables_dev + (i % res.replicas) * replica_stride;
    cp.block_tables = dp.block_tables;
  };

  // Eager runs: the cascade forms must agree with flat (a cheap guard against a broken build).
  auto max_diff = [&]() {
    std::vector<float> a(out_elems), b(out_elems);
    MM_CUDA_CHECK(cudaMemcpy(a.data(), out_flat, out_elems * 4, cudaMemcpyDeviceToHost));
    MM_CUDA_CHECK(cudaMemcpy(b.data(), out_casc, out_elems * 4, cudaMemcpyDeviceToHost));
    double worst = 0;
    for (size_t i = 0; i < out_elems; ++i) {
      const double diff = std::abs(static_cast<double>(a[i]) - b[i]);
      worst = std::max(worst, std::isfinite(diff) ? diff : INFINITY);
    }
    return worst;
  };
  set_replica(0);
  cuda::DecodeAttention(cache, dp, decode_ws, decode_ws_bytes, stream);
  cuda::CascadeAttention(cache, cp, cuda::CascadeForm::kTwoLaunch, casc_ws, casc_ws_bytes, stream);
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  res.max_diff_two = max_diff();
  MM_CUDA_CHECK(cudaMemset(out_casc, 0xff, out_elems * 4));
  cuda::CascadeFused(cache, cp, casc_ws, casc_ws_bytes, stream);
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  res.max_diff_fused = max_diff();
  cuda::CascadeParams grid = cp;  // the fused launch as the flat grid, for comparison
  grid.cluster = 1;
  MM_CUDA_CHECK(cudaMemset(out_casc, 0xff, out_elems * 4));
  cuda::CascadeFused(cache, grid, casc_ws, casc_ws_bytes, stream);
  MM_CUDA_CHECK(cudaStreamSynchronize(stream));
  res.max_diff_grid = max_diff();
  // Where the fused plan takes two 64-row tiles per prefix CTA: the same launch with one.
  cuda::CascadeParams one_tile = cp;
  one_tile.prefix_unit_tiles = 1;
  const bool two_tiles = res.fused_plan.cluster == 0 && res.fused_plan.prefix_unit_tiles == 2;
  const size_t one_ws_bytes = two_tiles ? cuda::CascadeWorkspaceBytes(cache, one_tile) : 0;
  void* one_ws = two_tiles ? Zeros(one_ws_bytes) : nullptr;
  if (two_tiles) {
    MM_CUDA_CHECK(cudaMemset(out_casc, 0xff, out_elems * 4));
    cuda::CascadeFused(cache, one_tile, one_ws, one_ws_bytes, stream);
    MM_CUDA_CHECK(cudaStreamSynchronize(stream));
    res.max_diff_one_tile = max_diff();
  }

  res.flat_us = TimeCalls(stream, res.calls, o.min_ms, [&](int i) {
    set_replica(i);
    cuda::DecodeAttention(cache, dp, decode_ws, decode_ws_bytes, stream);
  });
  res.two_us = TimeCalls(stream, res.calls, o.min_ms, [&](int i) {
    set_replica(i);
    cuda::CascadeAttention(cache, cp, cuda::CascadeForm::kTwoLaunch, casc_ws, casc_ws_bytes,
                           stream);
  });
  res.fused_us = TimeCalls(stream, res.calls, o.min_ms, [&](int i) {
    set_replica(i);
    cuda::CascadeFused(cache, cp, casc_ws, casc_ws_bytes, stream);
  });
  res.grid_us = TimeCalls(stream, res.calls, o.min_ms, [&](int i) {
    set_replica(i);
    grid.block_tables = cp.block_tables;
    cuda::CascadeFused(cache, grid, casc_ws, casc_ws_bytes, stream);
  });
  if (two_tiles) {
    res.one_tile_us = TimeCalls(stream, res.calls, o.min_ms, [&](int i) {
      set_replica(i);
      one_tile.block_tables = cp.block_tables;
      cuda::CascadeFused(cache, one_tile, one_ws, one_ws_bytes, stream);
    });
    MM_CUDA_CHECK(cudaFree(one_ws));
  }
  res.prefix_us = TimeCalls(stream, res.calls, o.min_ms, [&](int i) {
    set_replica(i);
    cuda::CascadePrefixPass(cache, cp, casc_ws, casc_ws_bytes, stream);
  });
  res.suffix_us = TimeCalls(stream, res.calls, o.min_ms, [&](int i) {
    set_replica(i);
    cuda::CascadeSuffixPass(cache, cp, casc_ws, casc_ws_bytes, stream);
  });
  res.ran = true;

  if (o.timeline) {
    set_replica(0);
    using cuda::cascade::Form;
    const std::pair<const char*, Form> forms[] = {
        {"fused", Form::kFused}, {"prefix-pass", Form::kPrefixPass}, {"suffix-pass", Form::kSuffixPass}};
    for (const auto& [name, form] : forms) {
      const std::vector<std::string> lines = Timeline(
          name, cache, cp, form,
          [&, form = form](const cuda::CascadeParams& tp) {
            if (form == Form::kFused) {
              cuda::CascadeFused(cache, tp, casc_ws, casc_ws_bytes, stream);
            } else if (form == Form::kPrefixPass) {
              cuda::CascadePrefixPass(cache, tp, casc_ws, casc_ws_bytes, stream);
            } else {
              cuda::CascadeSuffixPass(cache, tp, casc_ws, casc_ws_bytes, stream);
            }
          },
          stream, o.timeline_csv,
          std::string(1, cs.id) + (res.fused_plan.prefix_unit_tiles == 2 ? "2" : ""));
      res.timeline.insert(res.timeline.end(), lines.begin(), lines.end());
    }
  }

  if (o.sweep) {  // the fused form over the plan's knobs
    const int group = cs.q_heads / cs.kv_heads;
    for (int tile : {16, 64}) {
      if (tile == 16 && group > 16) continue;
      for (int cap : {0, 4, 8, 12, 16, 24, 32, 64, 128}) {
        cuda::CascadeParams sp = cp;
        sp.prefix_tile_rows = tile;
        sp.max_prefix_splits = cap;
        const size_t bytes = cuda::CascadeWorkspaceBytes(cache, sp);
        void* sws = Zeros(bytes);
        const cuda::CascadePlanInfo info =
            cuda::DescribeCascadePlan(cache, sp, cuda::cascade::Form::kFused);
        const double us = TimeCalls(stream, res.calls, o.min_ms / 4, [&](int i) {
          set_replica(i);
          sp.block_tables = cp.block_tables;
          cuda::CascadeFused(cache, sp, sws, bytes, stream);
        });
        MM_CUDA_CHECK(cudaFree(sws));
        char line[160];
        std::snprintf(line, sizeof(line),
                      "       sweep: tile %2d rows, split cap %3d -> %3d splits, %4d CTAs: fused "
                      "%8.2f us (%.2fx flat)",
                      tile, cap, info.prefix_splits, info.ctas, us, res.flat_us / us);
        res.sweep.push_back(line);
      }
    }
  }

  MM_CUDA_CHECK(cudaStreamDestroy(stream));
  for (void* p : {static_cast<void*>(k_pool), static_cast<void*>(v_pool),
                  static_cast<void*>(tables_dev), static_cast<void*>(lens_dev),
                  static_cast<void*>(q), static_cast<void*>(out_flat), static_cast<void*>(out_casc),
                  static_cast<void*>(layout), static_cast<void*>(cp.prefix_v),
                  static_cast<void*>(cp.prefix_lse), casc_ws, decode_ws}) {
    if (p != nullptr) MM_CUDA_CHECK(cudaFree(p));
  }
  return res;
}

int Main(int argc, char** argv) {
  const CascadeBenchOptions o = ParseCascadeBenchArgs(argc, argv);
  const std::optional<bench::GpuInfo> gpu = bench::DescribeGpu("bench_cascade");
  if (!gpu) return 1;
  const size_t l2 = gpu->l2;
  std::printf(
      "head_dim %d, block %d, %d own positions per sequence after the shared ones; fp32 q, bf16 "
      "paged KV; q_parts %d; cascade launches %s; times: CUDA graph of N calls / N (median of "
      "replays); calls rotate over pool copies >= 3x L2\n\n",
      kHeadDim, kBlockSize, kOwn, o.q_parts, o.overlap ? "overlapped" : "plain");

  // The cost model's calibration, measured now for each attention shape the cases use.
  std::map<std::pair<int, int>, CascadeCalibration> calibrations;
  std::string first_key;
  for (char id : o.cases) {
    const Case& cs = kCases[id - 'a'];
    const auto key = std::make_pair(cs.kv_heads, cs.q_heads);
    if (calibrations.count(key) != 0) continue;
    cudaStream_t stream;
    MM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const cuda::CascadeTimings t =
        cuda::MeasureCascadeCosts(cs.kv_heads, cs.q_heads, kHeadDim, kBlockSize, stream);
    MM_CUDA_CHECK(cudaStreamDestroy(stream));
    const CascadeCalibration c = ToCascadeCalibration(t);
    calibrations[key] = c;
    std::printf("calibration for %d KV head(s) / %d query heads:\n%s", cs.kv_heads, cs.q_heads,
                t.detail.c_str());
    std::printf("  -> decode %.0f GB/s, prefix %.0f GB/s, prefix %.1f / %.1f TFLOP/s (%d / %d rows "
                "per KV head), level %.2f us + %.2f ns/row (fused); two-launch level %.2f us + "
                "%.2f ns/row\n",
                c.decode_bytes_per_second / 1e9, c.prefix_bytes_per_second / 1e9,
                c.prefix_flops_per_second / 1e12, c.wide_prefix_flops_per_second / 1e12,
                kFewRowsPerKvHead, kManyRowsPerKvHead, c.level_seconds * 1e6,
                c.merge_seconds_per_row * 1e9, t.level_seconds_two_launch * 1e6,
                t.merge_seconds_per_row_two_launch * 1e9);
    if (!o.calibration_out.empty() && calibrations.size() == 1) {
      const absl::Status s = SaveCascadeCalibration(c, o.calibration_out);
      std::printf("  %s calibration to %s%s\n", s.ok() ? "wrote" : "FAILED to write",
                  o.calibration_out.c_str(), s.ok() ? "" : (": " + s.ToString()).c_str());
    }
  }
  std::printf("\n");

  std::printf("%4s %5s %7s %6s | %9s %6s | %7s %5s %5s | %8s %8s %8s %8s %8s | %7s %7s | %6s %8s "
              "%8s | %s\n",
              "case", "batch", "kvh/qh", "shared", "set MiB", "N", "tile", "tiles", "split",
              "flat us", "2-lnch", "fused", "prefix", "suffix", "2L/flat", "fus/flat", "pick",
              "pick us", "pick/fl", "max |cascade - flat|");
  double worst_pick = 0;
  std::string worst_pick_case;
  std::map<char, double> speedup;  // flat / fused
  std::map<char, std::pair<double, double>> times;
  uint32_t seed = 1;
  for (char id : o.cases) {
    const Case& cs = kCases[id - 'a'];
    const Result r = RunCase(cs, o, l2, seed++);
    if (!r.ran) {
      std::printf("%4c %5d %3d/%-3d %6d | %s\n", id, cs.batch, cs.kv_heads, cs.q_heads, cs.shared,
                  r.note.c_str());
      continue;
    }
    CascadeShape shape;
    shape.members = cs.batch;
    shape.shared_tokens = cs.shared / kBlockSize * kBlockSize;
    shape.q_heads_per_rank = cs.q_heads;
    shape.kv_heads_per_rank = cs.kv_heads;
    shape.head_dim = kHeadDim;
    const CascadeEstimate e =
        EstimateCascade(shape, calibrations.at(std::make_pair(cs.kv_heads, cs.q_heads)));
    const double pick_us = e.cascade ? r.fused_us : r.flat_us;
    char kvqh[16];
    std::snprintf(kvqh, sizeof(kvqh), "%d/%d", cs.kv_heads, cs.q_heads);
    std::printf("%4c %5d %7s %6d | %9.1f %6d | %7d %5d %5d | %8.2f %8.2f %8.2f %8.2f %8.2f | "
                "%6.2fx %7.2fx | %6s %8.2f %7.3f | two-launch %.1e, fused %.1e%s\n",
                id, cs.batch, kvqh, cs.shared, r.working_set_mib, r.calls,
                r.fused_plan.prefix_tile_rows, r.fused_plan.prefix_tiles,
                r.fused_plan.prefix_splits, r.flat_us, r.two_us, r.fused_us, r.prefix_us,
                r.suffix_us, r.flat_us / r.two_us, r.flat_us / r.fused_us,
                e.cascade ? "fused" : "flat", pick_us, pick_us / r.flat_us, r.max_diff_two,
                r.max_diff_fused,
                r.max_diff_two > 1e-3 || r.max_diff_fused > 1e-3 ? "  MISMATCH" : "");
    std::printf("     cost model: flat %.2f us, cascade %.2f us (saves %.1f MiB of KV reads); "
                "prefix pass alone: %d CTAs\n",
                e.flat_seconds * 1e6, e.cascade_seconds * 1e6, e.saved_bytes / 1048576.0,
                r.prefix_plan.ctas);
    std::printf("     fused shape: %s, %d CTAs, %.2f us; as the flat grid %.2f us (%.2fx), max "
                "|grid - flat| %.1e%s\n",
                r.fused_plan.cluster > 0 ? ("clusters of " + std::to_string(r.fused_plan.cluster)
                                            + " CTAs").c_str() : "flat grid",
                r.fused_plan.ctas, r.fused_us, r.grid_us, r.grid_us / r.fused_us,
                r.max_diff_grid, r.max_diff_grid > 1e-3 ? "  MISMATCH" : "");
    if (r.one_tile_us > 0) {
      std::printf("     two 64-row tiles per prefix CTA (%d prefix CTAs); one tile per CTA: %.2f "
                  "us (%.2fx), max |one tile - flat| %.1e%s\n",
                  r.fused_plan.ctas - r.fused_plan.suffix_ctas - r.fused_plan.merge_ctas,
                  r.one_tile_us, r.one_tile_us / r.fused_us, r.max_diff_one_tile,
                  r.max_diff_one_tile > 1e-3 ? "  MISMATCH" : "");
    }
    for (const std::string& line : r.timeline) std::printf("%s\n", line.c_str());
    for (const std::string& line : r.sweep) std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    if (pick_us / r.flat_us > worst_pick) {
      worst_pick = pick_us / r.flat_us;
      worst_pick_case = std::string(1, id);
    }
    speedup[id] = r.flat_us / r.fused_us;
    times[id] = {r.flat_us, r.fused_us};
  }

  std::printf("\nverdicts:\n");
  if (worst_pick_case.empty()) {
    std::printf("  [not run] the cost model's pick never slower than flat: no case ran\n");
  } else {
    std::printf("  [%s] the cost model's pick never slower than flat (3%% noise margin): worst "
                "pick/flat = %.3f (case %s)\n",
                worst_pick <= 1.03 ? "PASS" : "FAIL", worst_pick, worst_pick_case.c_str());
  }
  if (times.count('a') == 0) {
    std::printf("  [not run] fused cascade beats flat on (a)\n");
  } else {
    std::printf("  [%s] fused cascade beats flat on (a): flat %.2f us, fused %.2f us (%.2fx)\n",
                times['a'].second < times['a'].first ? "PASS" : "FAIL", times['a'].first,
                times['a'].second, speedup['a']);
  }
  for (const auto& [id, goal] : {std::make_pair('b', 2.0), std::make_pair('c', 5.0)}) {
    if (speedup.count(id) == 0) {
      std::printf("  [not run] fused cascade >= %.0fx flat on (%c)\n", goal, id);
    } else {
      std::printf("  [%s] fused cascade >= %.0fx flat on (%c): %.2fx\n",
                  speedup[id] >= goal ? "PASS" : "FAIL", goal, id, speedup[id]);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moemesh::bench

int main(int argc, char** argv) { return moemesh::bench::Main(argc, argv); }
