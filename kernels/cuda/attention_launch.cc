// The host side of DecodeAttention (attention.h): argument checks, the split plan (how many CTAs
// share a sequence's range and how they merge), the workspace layout and the launch; the kernel
// is attention.cu.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_generic.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_kernel_args.h"
#include "kernels/cuda/launch_util.h"

namespace moemesh::cuda {
namespace {

using decode::CeilDiv;
using decode::ChunkTokens;
using decode::DecodeArgs;
using decode::DecodeConfig;
using decode::KernelFor;
using decode::kCounterSlots;
using decode::kMaxMergeInputs;
using decode::kMaxSplits;
using decode::kMinChunk;
using decode::kRowsPerTile;
using decode::kShortSplitTokens;
using decode::kSingleLevelMaxSplits;
using decode::kThreads;
using decode::Launch;
using decode::ResidentSlots;

// ---------------------------------------------------------------------------------------------
// Host side: per-device kernel setup, the split plan and the workspace layout.


// The largest thread-block cluster of DecodeKernel<head_dim> the current GPU can place: 16 where
// non-portable cluster sizes fit, else 8; 1 without cluster support. Cached per device.
int MaxCluster(int head_dim) {
  static std::atomic<int> cache[2][ResidentCtas::kMaxDevices] = {};
  int device = 0;
  MM_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= ResidentCtas::kMaxDevices) return 1;
  const int which = head_dim == 128 ? 1 : 0;
  int v = cache[which][device].load(std::memory_order_acquire);
  if (v != 0) return v;
  (void)ResidentSlots(head_dim);  // sets the kernel's shared-memory limit first
  const void* kernel = KernelFor(head_dim);
  const size_t smem = which ? DecodeConfig<128>::kSmemBytes : DecodeConfig<64>::kSmemBytes;
  int major = 0;
  MM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  v = 1;
  if (major >= 9) {
    MM_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    for (int c : {16, 8}) {
      cudaLaunchAttribute attr{};
      attr.id = cudaLaunchAttributeClusterDimension;
      attr.val.clusterDim.x = static_cast<unsigned>(c);
      attr.val.clusterDim.y = 1;
      attr.val.clusterDim.z = 1;
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(static_cast<unsigned>(c), 1, 1);
      cfg.blockDim = dim3(kThreads, 1, 1);
      cfg.dynamicSmemBytes = smem;
      cfg.attrs = &attr;
      cfg.numAttrs = 1;
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters > 0) {
        v = c;
        break;
      }
      (void)cudaGetLastError();  // an unsupported size is not an error of later calls
    }
  }
  cache[which][device].store(v, std::memory_order_release);
  return v;
}

// The largest cluster the merge mode allows on this GPU (1: merges through global memory).
int ClusterLimit(int head_dim, DecodeParams::SplitMerge mode) {
  return mode == DecodeParams::SplitMerge::kGlobal ? 1 : MaxCluster(head_dim);
}

// Whether a launch of `splits` x `pairs` CTAs merges its splits in clusters. Automatic mode
// takes clusters only on grids of at most half the resident CTAs: measured on an H200, clusters
// cut the small grids' merge latency (up to 1.2x faster calls) but slow full-GPU grids (the
// cluster barriers hold each CTA's slot until its whole cluster is done; up to 1.3x slower).
bool UseCluster(int head_dim, int splits, int64_t pairs, int slots,
                DecodeParams::SplitMerge mode) {
  if (splits <= 1 || splits > ClusterLimit(head_dim, mode)) return false;
  return mode == DecodeParams::SplitMerge::kCluster ||
         static_cast<int64_t>(splits) * pairs * 2 <= slots;
}

struct SplitPlan {
  int splits = 1;
  int merge_group = 1;  // splits per first-level merge
  int groups = 1;
};

int MergeGroupSize(int splits) {
  if (splits <= kSingleLevelMaxSplits) return splits;
  int g = 1;
  while (g * g < splits) ++g;  // ceil(sqrt(splits)) <= 16
  return g;
}

// Splits per (sequence, KV head, row tile): enough CTAs to fill the GPU once, no more than the
// attended range can feed (kMinChunk tokens each). A second merge level puts a fence, an atomic
// and an L2 round trip (~1 us) on the critical path, so it is skipped where one level of
// kMaxMergeInputs splits still gives about one CTA per SM (>= 45% of the resident slots, which
// are two per SM) and every split streams at most kShortSplitTokens tokens: such calls are
// latency-bound. Longer streams keep the full wave, whose second CTA per SM hides HBM latency.
// Never more splits than the one-wave count, which DecodeWorkspaceBytes relies on.
// `max_cluster`: the largest cluster a merge may use (1: merges go through global memory).
SplitPlan PlanSplits(int64_t pairs, int64_t range_bound, int slots, int max_splits,
                     int max_cluster) {
  SplitPlan plan;
  int64_t s = pairs >= slots ? 1 : slots / pairs;
  s = std::min<int64_t>(s, std::max<int64_t>(1, CeilDiv(range_bound, kMinChunk)));
  s = std::min<int64_t>(s, kMaxSplits);
  // A short range takes kMaxMergeInputs splits (one merge level) when they still fill most of
  // the GPU, or when a cluster can merge them on a grid of at most half the GPU (UseCluster).
  const bool fills = pairs * kMaxMergeInputs * 20 >= static_cast<int64_t>(slots) * 9;
  const bool clusters =
      max_cluster >= kMaxMergeInputs && pairs * kMaxMergeInputs * 2 <= static_cast<int64_t>(slots);
  if (s > kMaxMergeInputs && (fills || clusters) &&
      CeilDiv(range_bound, kMaxMergeInputs) <= kShortSplitTokens) {
    s = kMaxMergeInputs;
  }
  // Clusters of half the size where full ones would need more than 7/8 of the SMs (2 resident
  // slots each) and the halves still stream at most kShortSplitTokens each. Measured on an H200
  // with 8 (sequence, KV head) pairs (batch 8 x 1 KV head, batch 1 x 8 KV heads), 1K and 4K
  // tokens: 64 CTAs in clusters of 8 are 4-13% faster than 128 in clusters of 16 (12 splits are
  // slower than both); with 1 or 4-7 pairs of 4K tokens, 16 splits stay 12-36% faster than 8;
  // 8 pairs of 8K tokens (halves of 1K tokens) gain only 2%.
  const bool half_clusters =
      clusters && pairs * kMaxMergeInputs * 16 > static_cast<int64_t>(slots) * 7 &&
      CeilDiv(range_bound, kMaxMergeInputs / 2) <= kShortSplitTokens;
  if (s == kMaxMergeInputs && half_clusters) s = kMaxMergeInputs / 2;
  if (max_splits > 0) s = std::min<int64_t>(s, max_splits);
  plan.splits = static_cast<int>(std::max<int64_t>(s, 1));
  plan.merge_group = MergeGroupSize(plan.splits);
  plan.groups = static_cast<int>(CeilDiv(plan.splits, plan.merge_group));
  return plan;
}

// Tokens per CTA an overlapped call pulls into L2 before waiting for the previous kernel: a
// quarter of its share, 64 to 192. Measured on an H200 (bench_attention_decode
// --prefetch_tokens, 64 to 2048): a share prefetched whole or in half is read twice as it
// streams, and 1K-token shares of 4 splits run 6-10% slower at 256 than at 64; shares of 1K
// tokens and more are fastest at 128-192 (the 128 MiB shapes 1-2% faster than at 256 or 64).
int AutoPrefetchTokens(int chunk) { return std::clamp(chunk / 4, 64, 192); }

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Partial-state bytes for `rows` (sequence, head) rows and `slots_per_row` split slots: outputs,
// LSEs, and the same again for group states.
size_t PartialBytes(int64_t rows, int64_t slots_per_row, int head_dim) {
  const size_t per = static_cast<size_t>(rows) * static_cast<size_t>(slots_per_row);
  return 2 * (AlignUp(per * head_dim * sizeof(float)) + AlignUp(per * sizeof(float)));
}

size_t CounterBytes(int64_t pairs) {
  return static_cast<size_t>(pairs) * kCounterSlots * sizeof(uint32_t);
}

// Everything about a call's launch that depends on host values only (head_dim 64 or 128, heads
// consistent): its split plan and whether the splits merge in clusters.
struct CallPlan {
  SplitPlan split;
  int64_t pairs = 0;  // (sequence, KV head, row tile)
  int chunk = 0;      // DecodeArgs::chunk
  int cluster = 1;    // DecodeArgs::cluster
};

CallPlan PlanCall(const PagedKv& cache, const DecodeParams& p) {
  CallPlan c;
  const int group = p.n_heads / cache.kv_heads;
  c.pairs = static_cast<int64_t>(cache.kv_heads) * CeilDiv(group, kRowsPerTile) * p.batch;
  const int64_t range_bound =
      p.window > 0 ? std::min<int64_t>(p.max_kv_len, p.window) : p.max_kv_len;
  const int slots = ResidentSlots(cache.head_dim);
  c.split = PlanSplits(c.pairs, range_bound, slots, p.max_splits,
                       ClusterLimit(cache.head_dim, p.split_merge));
  c.chunk = ChunkTokens(std::max<int64_t>(range_bound, 1), c.split.splits);
  c.cluster = UseCluster(cache.head_dim, c.split.splits, c.pairs, slots, p.split_merge)
                  ? c.split.splits
                  : 1;
  return c;
}

bool PlannedShape(const PagedKv& cache, const DecodeParams& p) {
  return (cache.head_dim == 64 || cache.head_dim == 128) && p.batch > 0 && cache.kv_heads > 0 &&
         p.n_heads > 0 && p.n_heads % cache.kv_heads == 0;
}

}  // namespace

size_t DecodeWorkspaceBytes(int32_t batch, int32_t n_heads, int32_t head_dim, int32_t max_kv_len) {
  if (batch <= 0 || n_heads <= 0) return 0;
  if (head_dim != 64 && head_dim != 128) return 0;  // the generic kernel needs no workspace
  const int64_t slots = ResidentSlots(head_dim);
  // A call with batch' <= batch has batch' * splits' <= max(slots, batch) and
  // <= batch * min(ceil(max_kv_len / kMinChunk), kMaxSplits); both bounds grow with every
  // argument, so calls with smaller arguments fit in a workspace sized for larger ones and
  // never place partial states where another call keeps its counters.
  const int64_t per_seq = std::min<int64_t>(
      kMaxSplits, std::max<int64_t>(1, CeilDiv(std::max(max_kv_len, 0), kMinChunk)));
  if (per_seq == 1) return 0;  // never more than one split per sequence: nothing is touched
  const int64_t seq_slots = std::min<int64_t>(std::max<int64_t>(slots, batch), batch * per_seq);
  return 2 * kAlign + PartialBytes(seq_slots, n_heads, head_dim) +
         CounterBytes(static_cast<int64_t>(batch) * n_heads);
}

void DecodeAttention(const PagedKv& cache, const DecodeParams& p, void* workspace,
                     size_t workspace_bytes, cudaStream_t stream) {
  if (p.batch < 0) Fail("DecodeAttention", "batch %d", p.batch);
  if (p.batch == 0) return;
  if (cache.head_dim != 64 && cache.head_dim != 128) {
    DecodeAttentionGeneric(cache, p, stream);  // other head sizes: the simple exact kernel
    return;
  }
  if (cache.kv_heads <= 0 || p.n_heads <= 0 || p.n_heads % cache.kv_heads != 0) {
    Fail("DecodeAttention", "n_heads %d is not a multiple of kv_heads %d", p.n_heads,
         cache.kv_heads);
  }
  if (cache.block_size <= 0 || p.max_blocks_per_seq < 0 || p.max_kv_len < 0) {
    Fail("DecodeAttention", "block_size %d, max_blocks_per_seq %d, max_kv_len %d", cache.block_size,
         p.max_blocks_per_seq, p.max_kv_len);
  }
  if (static_cast<int64_t>(p.max_blocks_per_seq) * cache.block_size >= (int64_t{1} << 31)) {
    Fail("DecodeAttention", "max_blocks_per_seq * block_size must be < 2^31");
  }
  if (cache.k == nullptr || cache.v == nullptr || p.q == nullptr || p.out == nullptr ||
      p.kv_lens == nullptr || (p.block_tables == nullptr && p.max_blocks_per_seq > 0)) {
    Fail("DecodeAttention", "null pointer");
  }
  if (!Aligned(cache.k, 16) || !Aligned(cache.v, 16)) {
    Fail("DecodeAttention", "cache pools must be 16-byte aligned");
  }
  if (!Aligned(p.q, 8)) Fail("DecodeAttention", "q must be 8-byte aligned");
  const int group = p.n_heads / cache.kv_heads;
  const int row_tiles = static_cast<int>(CeilDiv(group, kRowsPerTile));
  const int64_t grid_y = static_cast<int64_t>(cache.kv_heads) * row_tiles;
  if (grid_y > 65535 || p.batch > 65535) {
    Fail("DecodeAttention", "kv_heads * row tiles %lld or batch %d over 65535",
         static_cast<long long>(grid_y), p.batch);
  }
  const CallPlan call = PlanCall(cache, p);
  const SplitPlan& plan = call.split;

  DecodeArgs a{};
  static_cast<PagedStreamArgs&>(a) =
      MakePagedStreamArgs(cache, p.q, p.out, p.lse, p.block_tables, p.kv_lens,
                          p.max_blocks_per_seq, p.scale, p.cta_times);
  a.kv_heads = cache.kv_heads;
  a.n_heads = p.n_heads;
  a.group = group;
  a.row_tiles = row_tiles;
  a.window = p.window;
  a.splits = plan.splits;
  a.chunk = call.chunk;
  a.merge_group = plan.merge_group;
  a.cluster = call.cluster;
  a.num_blocks = cache.num_blocks;
  if (plan.splits > 1 && a.cluster == 1) {
    const int64_t rows = static_cast<int64_t>(p.batch) * p.n_heads;
    const size_t partial = PartialBytes(rows, plan.splits, cache.head_dim);
    const size_t counters = CounterBytes(call.pairs);
    // Partial states from the (aligned) start, counters at the (4-aligned) end.
    if (workspace == nullptr || workspace_bytes < 2 * kAlign + partial + counters) {
      Fail("DecodeAttention",
           "workspace of %zu bytes is too small: this call needs %zu (size it with "
           "DecodeWorkspaceBytes for the largest batch, heads and max_kv_len)",
           workspace_bytes, 2 * kAlign + partial + counters);
    }
    const uintptr_t begin = reinterpret_cast<uintptr_t>(workspace);
    uintptr_t at = (begin + kAlign - 1) / kAlign * kAlign;
    const size_t per = static_cast<size_t>(rows) * plan.splits;
    a.part_o = reinterpret_cast<float*>(at);
    at += AlignUp(per * cache.head_dim * sizeof(float));
    a.part_lse = reinterpret_cast<float*>(at);
    at += AlignUp(per * sizeof(float));
    a.group_o = reinterpret_cast<float*>(at);
    at += AlignUp(per * cache.head_dim * sizeof(float));
    a.group_lse = reinterpret_cast<float*>(at);
    a.counters_end = reinterpret_cast<uint32_t*>((begin + workspace_bytes) / 4 * 4);
  }
  const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(grid_y),
                  static_cast<unsigned>(p.batch));
  cudaLaunchAttribute attrs[2] = {};
  int n_attrs = 0;
  if (a.cluster > 1) {
    attrs[n_attrs].id = cudaLaunchAttributeClusterDimension;
    attrs[n_attrs].val.clusterDim.x = static_cast<unsigned>(a.cluster);
    attrs[n_attrs].val.clusterDim.y = 1;
    attrs[n_attrs].val.clusterDim.z = 1;
    ++n_attrs;
  }
  if (p.overlap) {
    attrs[n_attrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n_attrs].val.programmaticStreamSerializationAllowed = 1;
    ++n_attrs;
    a.prefetch_tokens = p.overlap_prefetch_tokens >= 0 ? p.overlap_prefetch_tokens
                                                       : AutoPrefetchTokens(a.chunk);
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kThreads, 1, 1);
  cfg.stream = stream;
  cfg.attrs = attrs;
  cfg.numAttrs = n_attrs;
  Launch(cfg, cache.head_dim, a);
}

int32_t DecodeSplits(const PagedKv& cache, const DecodeParams& p) {
  return PlannedShape(cache, p) ? PlanCall(cache, p).split.splits : 1;
}

bool DecodeClusterMerge(const PagedKv& cache, const DecodeParams& p) {
  return PlannedShape(cache, p) && PlanCall(cache, p).cluster > 1;
}

}  // namespace moemesh::cuda
