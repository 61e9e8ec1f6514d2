// The host side of a CUDA cascade attention call (cascade.h): argument checks, the launch plan
// (cascade_plan.h, cascade_cluster_plan.h), the workspace layout, and the kernel arguments; the
// kernels are cascade.cu (flat grid) and cascade_cluster.cu (clusters).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/cascade.h"
#include "kernels/cuda/cascade_kernel_args.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch_util.h"

namespace moemesh::cuda {
namespace {

namespace cs = cascade;

cs::PlanKnobs Knobs(const CascadeParams& p) {
  cs::PlanKnobs k;
  k.prefix_tile_rows = p.prefix_tile_rows;
  k.max_prefix_splits = p.max_prefix_splits;
  k.max_suffix_splits = p.max_suffix_splits;
  k.prefix_unit_tiles = p.prefix_unit_tiles;
  k.q_parts = p.q_parts;
  return k;
}

// Shapes and bounds; with `pointers`, also the pointers and alignments a launch needs.
void Validate(const PagedKv& cache, const CascadeParams& p, const char* op, bool pointers) {
  const CascadeBounds& b = p.bounds;
  if (cache.head_dim != 64 && cache.head_dim != 128) {
    Fail(op, "head_dim %d (64 or 128)", cache.head_dim);
  }
  if (b.batch < 0 || b.max_levels < 0 || b.max_members < 0 || b.max_depth < 0 ||
      b.max_shared_len < 0 || b.max_suffix_len < 0) {
    Fail(op, "negative bound (batch %d, max_levels %d, max_members %d, max_depth %d, "
             "max_shared_len %d, max_suffix_len %d)",
         b.batch, b.max_levels, b.max_members, b.max_depth, b.max_shared_len, b.max_suffix_len);
  }
  if (cache.kv_heads <= 0 || b.n_heads <= 0 || b.n_heads % cache.kv_heads != 0) {
    Fail(op, "n_heads %d is not a multiple of kv_heads %d", b.n_heads, cache.kv_heads);
  }
  const int group = b.n_heads / cache.kv_heads;
  if (group > kCascadeMaxGroup) {
    Fail(op, "%d query heads per KV head (at most %d)", group, kCascadeMaxGroup);
  }
  if (b.max_levels > 0 &&
      (b.max_members < 1 || b.max_depth < 1 || b.max_depth > kCascadeMaxDepth)) {
    Fail(op, "with levels, max_members (%d) must be >= 1 and max_depth (%d) in 1..%d",
         b.max_members, b.max_depth, kCascadeMaxDepth);
  }
  if (p.prefix_tile_rows != 0 && p.prefix_tile_rows != 16 && p.prefix_tile_rows != 64) {
    Fail(op, "prefix_tile_rows %d (0, 16 or 64)", p.prefix_tile_rows);
  }
  if (p.q_parts < 1 || p.q_parts > 3) Fail(op, "q_parts %d (1, 2 or 3)", p.q_parts);
  if (p.prefix_unit_tiles < 0 || p.prefix_unit_tiles > 2) {
    Fail(op, "prefix_unit_tiles %d (0 automatic, 1 or 2)", p.prefix_unit_tiles);
  }
  if (p.prefix_unit_tiles == 2 && p.q_parts != 1) {
    Fail(op, "prefix_unit_tiles 2 needs q_parts 1 (q_parts is %d)", p.q_parts);
  }
  if (p.cluster != 0 && p.cluster != 1 && p.cluster != 2 && p.cluster != 4 && p.cluster != 8 &&
      p.cluster != 16) {
    Fail(op, "cluster %d (0 automatic, 1 flat grid, or 2, 4, 8, 16 CTAs)", p.cluster);
  }
  if (cache.block_size <= 0 || p.max_blocks_per_seq < 0) {
    Fail(op, "block_size %d, max_blocks_per_seq %d", cache.block_size, p.max_blocks_per_seq);
  }
  if (static_cast<int64_t>(p.max_blocks_per_seq) * cache.block_size >= (int64_t{1} << 31)) {
    Fail(op, "max_blocks_per_seq * block_size must be < 2^31");
  }
  // Index products computed in 32 bits on the device.
  const int64_t slot_rows = static_cast<int64_t>(b.max_levels) * b.max_members * b.n_heads;
  const int64_t seq_rows = static_cast<int64_t>(b.batch) * b.n_heads;
  const int64_t pre_ctas = static_cast<int64_t>(b.max_levels) * cache.kv_heads *
                           std::max(b.max_members, 1) * cs::kMaxPrefixSplits;
  const int64_t suf_ctas = static_cast<int64_t>(b.batch) * cache.kv_heads * cs::kMaxSuffixSplits;
  const int64_t merge_ctas = static_cast<int64_t>(b.batch) * cache.kv_heads;
  if (slot_rows >= (int64_t{1} << 31) || seq_rows >= (int64_t{1} << 31) ||
      pre_ctas + suf_ctas + merge_ctas >= (int64_t{1} << 31)) {
    Fail(op, "bounds too large (batch %d, max_levels %d, max_members %d, n_heads %d)", b.batch,
         b.max_levels, b.max_members, b.n_heads);
  }
  if (b.batch == 0 || !pointers) return;
  if (cache.k == nullptr || cache.v == nullptr || p.q == nullptr || p.out == nullptr ||
      p.kv_lens == nullptr || p.layout == nullptr ||
      (p.block_tables == nullptr && p.max_blocks_per_seq > 0) ||
      (b.max_levels > 0 && (p.prefix_v == nullptr || p.prefix_lse == nullptr))) {
    Fail(op, "null pointer (q, out, kv_lens, layout, block_tables, or prefix states with levels)");
  }
  if (!Aligned(cache.k, 16) || !Aligned(cache.v, 16) || !Aligned(p.q, 8) || !Aligned(p.out, 16) ||
      (p.prefix_v != nullptr && !Aligned(p.prefix_v, 16))) {
    Fail(op, "alignment: pools, out and prefix_v need 16 bytes, q 8");
  }
}

constexpr size_t kAlign = 256;
size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Byte offsets of the workspace regions, the same for every form of a call with these bounds.
struct WorkspaceLayout {
  size_t pre_counters = 0, seq_counters = 0, pre_part_o = 0, pre_part_lse = 0, pre_group_o = 0,
         pre_group_lse = 0, suf_part_o = 0, suf_part_lse = 0, total = 0;
};

WorkspaceLayout ComputeWorkspace(const PagedKv& cache, const CascadeParams& p, int slots) {
  const CascadeBounds& b = p.bounds;
  const cs::PlanKnobs knobs = Knobs(p);
  int pre_splits = 1, suf_splits = 1, pre_tiles = 0;
  for (cs::Form form : {cs::Form::kPrefixPass, cs::Form::kSuffixPass, cs::Form::kFused}) {
    const cs::Plan plan = cs::MakePlan(b, cache.kv_heads, cache.head_dim, slots, form, knobs);
    pre_splits = std::max(pre_splits, plan.pre_splits);
    suf_splits = std::max(suf_splits, plan.suf_splits);
    pre_tiles = std::max(pre_tiles, plan.pre_tiles);
  }
  const size_t d = static_cast<size_t>(cache.head_dim);
  const size_t slot_rows = static_cast<size_t>(b.max_levels) * b.max_members * b.n_heads;
  const size_t seq_rows = static_cast<size_t>(b.batch) * b.n_heads;
  // (The fused form's merge units read even a single split's partial state.)
  const size_t pre_parts = slot_rows * pre_splits;
  const size_t pre_groups = pre_splits > cs::kSingleLevelMaxSplits ? pre_parts : 0;
  const size_t suf_parts = seq_rows * suf_splits;
  WorkspaceLayout w;
  size_t at = 0;
  w.pre_counters = at;
  at += AlignUp(static_cast<size_t>(b.max_levels) * cache.kv_heads * pre_tiles *
                cs::kCounterSlots * sizeof(uint32_t));
  w.seq_counters = at;  // then the unit queues
  at += AlignUp((static_cast<size_t>(b.batch) * cache.kv_heads * cs::kSeqCounterWords +
                 cs::kQueueWords + cs::kSmClaims) * sizeof(uint32_t));
  w.pre_part_o = at;
  at += AlignUp(pre_parts * d * sizeof(float));
  w.pre_part_lse = at;
  at += AlignUp(pre_parts * sizeof(float));
  w.pre_group_o = at;
  at += AlignUp(pre_groups * d * sizeof(float));
  w.pre_group_lse = at;
  at += AlignUp(pre_groups * sizeof(float));
  w.suf_part_o = at;
  at += AlignUp(suf_parts * d * sizeof(float));
  w.suf_part_lse = at;
  at += AlignUp(suf_parts * sizeof(float));
  w.total = at + kAlign;  // room to align the caller's pointer
  return w;
}

// CTAs per cluster of the fused launch (0: the flat grid). Automatic: clusters of 16 when all
// level units fit on the GPU at once at that size, else the flat grid. Measured on an H200
// (bench_cascade): 16-CTA clusters beat the flat grid 1.5-1.6x on 1-2 row tiles, while 4-CTA
// clusters, which leave each CTA a long serial range, were 1.6x (8 KV heads) to 3.7x (64 x 32K
// shared positions) slower than it.
int ClusterSize(const PagedKv& cache, const CascadeParams& p, const char* op) {
  if (p.cluster == 1) return 0;
  const std::string why = cs::ClusterUnsupported(p.bounds, cache.kv_heads);
  if (!why.empty()) {
    if (p.cluster > 1) Fail(op, "cluster %d: the bounds cannot run as clusters: %s", p.cluster,
                            why.c_str());
    return 0;
  }
  for (int size = cs::kMaxClusterSize; size >= 2; size /= 2) {
    if (p.cluster == 0 && size != cs::kMaxClusterSize) break;
    if (p.cluster > 1 && size != p.cluster) continue;
    const cs::ClusterPlan c = cs::MakeClusterPlan(p.bounds, cache.kv_heads, size);
    const int capacity = cs::ClusterCapacity(cache.head_dim, size);
    if (c.level_units <= capacity) return size;
    if (p.cluster > 1) {
      Fail(op, "cluster %d: %d clusters of %d CTAs needed, the GPU holds %d at once", p.cluster,
           c.level_units, size, capacity);
    }
  }
  return 0;
}

void Launch(const PagedKv& cache, const CascadeParams& p, cs::Form form, void* workspace,
            size_t workspace_bytes, cudaStream_t stream, const char* op) {
  Validate(cache, p, op, /*pointers=*/true);
  const CascadeBounds& b = p.bounds;
  if (b.batch == 0) return;
  const int slots = cs::CascadeResidentSlots(cache.head_dim);
  const cs::Plan plan = cs::MakePlan(b, cache.kv_heads, cache.head_dim, slots, form, Knobs(p));
  const int64_t ctas = static_cast<int64_t>(plan.pre_ctas) + plan.suf_ctas + plan.merge_units;
  if (ctas == 0) return;
  const WorkspaceLayout wl = ComputeWorkspace(cache, p, slots);
  if (workspace == nullptr || workspace_bytes < wl.total) {
    Fail(op,
         "workspace of %zu bytes is too small: these bounds need %zu (size it with "
         "CascadeWorkspaceBytes)",
         workspace_bytes, wl.total);
  }
  const uintptr_t base = (reinterpret_cast<uintptr_t>(workspace) + kAlign - 1) / kAlign * kAlign;
  auto at = [&](size_t offset) { return reinterpret_cast<void*>(base + offset); };

  cs::KernelArgs a{};
  static_cast<PagedStreamArgs&>(a) =
      MakePagedStreamArgs(cache, p.q, p.out, p.lse, p.block_tables, p.kv_lens,
                          p.max_blocks_per_seq, p.scale, p.cta_times);
  a.layout = cs::MakeLayoutView(p.layout, b);
  a.prefix_v = p.prefix_v;
  a.prefix_lse = p.prefix_lse;
  a.pre_counters = static_cast<uint32_t*>(at(wl.pre_counters));
  a.seq_counters = static_cast<uint32_t*>(at(wl.seq_counters));
  a.tickets =
      a.seq_counters + static_cast<int64_t>(b.batch) * cache.kv_heads * cs::kSeqCounterWords;
  a.pre_part_o = static_cast<float*>(at(wl.pre_part_o));
  a.pre_part_lse = static_cast<float*>(at(wl.pre_part_lse));
  a.pre_group_o = static_cast<float*>(at(wl.pre_group_o));
  a.pre_group_lse = static_cast<float*>(at(wl.pre_group_lse));
  a.suf_part_o = static_cast<float*>(at(wl.suf_part_o));
  a.suf_part_lse = static_cast<float*>(at(wl.suf_part_lse));
  a.plan = plan;
  a.dims.kv_heads = cache.kv_heads;
  a.dims.n_heads = b.n_heads;
  a.dims.group = b.n_heads / cache.kv_heads;
  a.dims.batch = b.batch;
  a.dims.max_levels = b.max_levels;
  a.dims.capacity = p.max_blocks_per_seq * cache.block_size;
  a.dims.window = p.window;
  a.group_div = FastDivisor(static_cast<uint32_t>(a.dims.group));
  const int cluster = form == cs::Form::kFused ? ClusterSize(cache, p, op) : 0;
  if (cluster > 0) {
    a.cluster = cs::MakeClusterPlan(b, cache.kv_heads, cluster);
    if (a.cluster.level_units > 0) {
      cs::LaunchCascadeCluster(cache.head_dim, p.q_parts, p.overlap, a, stream);
    }
    return;
  }
  cs::LaunchCascadeKernel(cache.head_dim, p.q_parts, static_cast<unsigned>(ctas), p.overlap, a,
                          stream);
}

}  // namespace

int64_t CascadeLayoutWords(const CascadeBounds& bounds) { return cs::LayoutWords(bounds); }

std::string BuildCascadeLayout(const CascadeBounds& bounds,
                               const std::vector<CascadeLevelSpec>& levels,
                               const int32_t* kv_lens, std::vector<int32_t>* words) {
  return cs::BuildLayout(bounds, levels, kv_lens, words);
}

size_t CascadeWorkspaceBytes(const PagedKv& cache, const CascadeParams& p) {
  Validate(cache, p, "CascadeWorkspaceBytes", /*pointers=*/false);
  (void)cs::ClusterCapacity(cache.head_dim, 2);  // sets the cluster kernels' attributes
  return ComputeWorkspace(cache, p, cs::CascadeResidentSlots(cache.head_dim)).total;
}

void CascadePrefixPass(const PagedKv& cache, const CascadeParams& p, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream) {
  Launch(cache, p, cs::Form::kPrefixPass, workspace, workspace_bytes, stream, "CascadePrefixPass");
}

void CascadeSuffixPass(const PagedKv& cache, const CascadeParams& p, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream) {
  Launch(cache, p, cs::Form::kSuffixPass, workspace, workspace_bytes, stream, "CascadeSuffixPass");
}

void CascadeFused(const PagedKv& cache, const CascadeParams& p, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream) {
  Launch(cache, p, cs::Form::kFused, workspace, workspace_bytes, stream, "CascadeFused");
}

void CascadeAttention(const PagedKv& cache, const CascadeParams& p, CascadeForm form,
                      void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (form == CascadeForm::kFused) {
    CascadeFused(cache, p, workspace, workspace_bytes, stream);
    return;
  }
  CascadePrefixPass(cache, p, workspace, workspace_bytes, stream);
  CascadeSuffixPass(cache, p, workspace, workspace_bytes, stream);
}

CascadePlanInfo DescribeCascadePlan(const PagedKv& cache, const CascadeParams& p,
                                    cascade::Form form) {
  Validate(cache, p, "DescribeCascadePlan", /*pointers=*/false);
  const cs::Plan plan = cs::MakePlan(p.bounds, cache.kv_heads, cache.head_dim,
                                     cs::CascadeResidentSlots(cache.head_dim), form, Knobs(p));
  CascadePlanInfo info;
  info.prefix_tile_rows = plan.pre_tile_rows;
  info.prefix_tiles = plan.pre_tiles;
  info.prefix_unit_tiles = plan.pre_unit_tiles;
  info.prefix_splits = plan.pre_splits;
  info.suffix_splits = plan.suf_splits;
  info.ctas = plan.pre_ctas + plan.suf_ctas + plan.merge_units;
  info.suffix_ctas = plan.suf_ctas;
  info.merge_ctas = plan.merge_units;
  const int cluster = form == cs::Form::kFused ? ClusterSize(cache, p, "DescribeCascadePlan") : 0;
  if (cluster > 0) {
    const cs::ClusterPlan c = cs::MakeClusterPlan(p.bounds, cache.kv_heads, cluster);
    info.cluster = cluster;
    info.prefix_tile_rows = c.members_per_tile * (p.bounds.n_heads / cache.kv_heads);
    info.prefix_tiles = c.tiles;
    info.prefix_splits = cluster;
    info.suffix_splits = 0;
    info.ctas = c.level_units * cluster;
    info.suffix_ctas = 0;
    info.merge_ctas = 0;
  }
  return info;
}

}  // namespace moemesh::cuda
