// The arguments of the CUDA cascade attention kernel (cascade.cu) and its launch, shared by the
// kernel and the host side of a call (cascade_launch.cc: checks, workspace, plan). Internal to
// kernels/cuda; the public interface is cascade.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cascade_cluster_plan.h"
#include "kernels/cuda/cascade_plan.h"
#include "kernels/cuda/fast_div.h"
#include "kernels/cuda/paged_stream_args.h"

namespace moemesh::cuda::cascade {

struct KernelArgs : PagedStreamArgs {
  LayoutView layout;
  float* prefix_v;
  float* prefix_lse;
  float* pre_part_o;     // [slot rows, pre_splits, D]; log2 LSEs below
  float* pre_part_lse;   // [slot rows, pre_splits]
  float* pre_group_o;    // like pre_part_o (group slots)
  float* pre_group_lse;
  float* suf_part_o;     // [batch * n_heads, suf_splits, D]
  float* suf_part_lse;   // [batch * n_heads, suf_splits]
  uint32_t* pre_counters;  // [max_levels * kv_heads * pre_tiles][kCounterSlots]
  uint32_t* seq_counters;  // [batch * kv_heads][kSeqCounterWords]
  uint32_t* tickets;       // the fused launch's unit queues: kQueueWords + kSmClaims words
  Plan plan;
  Dims dims;
  FastDivisor group_div;  // dims.group
  ClusterPlan cluster;  // the cluster form (cascade_cluster.cu); size 0 for the other launches
};

// Calls f(std::integral_constant<int, D>, std::integral_constant<int, QP>) with D = head_dim (64
// or 128) and QP = q_parts (1, 2 or 3): the launches' choice of kernel instance.
template <class F>
void ForInstance(int head_dim, int q_parts, F&& f) {
  auto with_parts = [&](auto d) {
    if (q_parts == 1) {
      f(d, std::integral_constant<int, 1>{});
    } else if (q_parts == 2) {
      f(d, std::integral_constant<int, 2>{});
    } else {
      f(d, std::integral_constant<int, 3>{});
    }
  };
  if (head_dim == 128) {
    with_parts(std::integral_constant<int, 128>{});
  } else {
    with_parts(std::integral_constant<int, 64>{});
  }
}

// CTAs of the kernel for head_dim (64 or 128) resident on the current GPU at once.
int CascadeResidentSlots(int head_dim);

// Launches the kernel instance for head_dim and q_parts (1, 2 or 3) with `grid` CTAs; overlap:
// as a programmatic dependent launch (CascadeParams::overlap).
void LaunchCascadeKernel(int head_dim, int q_parts, unsigned grid, bool overlap,
                         const KernelArgs& a, cudaStream_t stream);

// Clusters of `size` CTAs (2, 4, 8 or 16) of the cluster-form kernel for head_dim that the
// current GPU holds at once; 0 where that size cannot be placed. Computed once per device (which
// also sets the kernels' shared-memory and cluster-size attributes).
int ClusterCapacity(int head_dim, int size);

// Launches the cluster form: a.cluster.level_units clusters of a.cluster.size CTAs.
void LaunchCascadeCluster(int head_dim, int q_parts, bool overlap, const KernelArgs& a,
                          cudaStream_t stream);

}  // namespace moemesh::cuda::cascade
