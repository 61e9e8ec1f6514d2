// CUDA attention over a paged bf16 KV cache: appending new tokens' K/V, GQA decode (one query
// token per sequence; the G query heads of a KV head are folded into the rows of one tile so
// each KV byte is read once, and long sequences are split across blocks whose partial results
// are combined exactly through their log-sum-exp), and causal prefill (flash-attention tiling:
// scores are never materialised). The scalar twins are kernels/ref/paged_attention.h; the
// conformance cases are in tests/conformance. All launches are asynchronous; AppendKv and
// DecodeAttention are CUDA-graph capturable (launch shapes depend only on host-side bounds,
// lengths and tables are read on the device). Thread-safe (stateless launches).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moemesh::cuda {

// One layer's cache. Pools are [num_blocks, kv_heads, block_size, head_dim] bf16 ("HND": one
// KV head's rows of a block are contiguous). Token position p of a sequence lives in row
// p % block_size of block table[p / block_size]; a slot is block * block_size + row.
struct PagedKv {
  __nv_bfloat16* k = nullptr;
  __nv_bfloat16* v = nullptr;
  int32_t num_blocks = 0;
  int32_t block_size = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;  // 64 or 128
};

// Writes n tokens' K/V (fp32 [n, kv_heads, head_dim], rounded to bf16) at slots[t]; slot -1
// skips the token (padding rows of a captured batch), as does any slot outside the pools.
void AppendKv(const PagedKv& cache, const float* k_new, const float* v_new, const int32_t* slots,
              int64_t n, cudaStream_t stream);

// Clocks per CTA in DecodeParams::cta_times.
constexpr int kDecodeStamps = 6;

struct DecodeParams {
  const float* q = nullptr;            // [batch, n_heads, head_dim]
  float* out = nullptr;                // [batch, n_heads, head_dim]
  float* lse = nullptr;                // optional [batch, n_heads]: ln sum_j exp(scale q.k_j)
  const int32_t* block_tables = nullptr;  // [batch, max_blocks_per_seq]
  const int32_t* kv_lens = nullptr;    // [batch] tokens to attend (incl. the new one); 0 = a
                                       // padding row: out = 0, lse = -inf
  int32_t batch = 0;
  int32_t n_heads = 0;                 // query heads; n_heads % cache.kv_heads == 0
  int32_t max_blocks_per_seq = 0;
  int32_t max_kv_len = 0;              // host bound on every kv_lens[b]: sizes the launch
  float scale = 1.0f;
  int32_t window = 0;                  // > 0: only the last `window` positions are attended
  int32_t max_splits = 0;              // tuning/testing: > 0 caps the CTAs per (sequence, KV
                                       // head); 0 = automatic (fill the GPU once)
  // Tuning/testing: how the splits of a (sequence, KV head) are merged. kAuto: in a thread-block
  // cluster (distributed shared memory, no global round trip) when the splits fit in one cluster
  // on this GPU (up to 16 on Hopper), else through global memory by the last CTA to finish.
  enum class SplitMerge : int32_t { kAuto = 0, kGlobal = 1, kCluster = 2 };
  SplitMerge split_merge = SplitMerge::kAuto;  // kCluster falls back to kGlobal where unsupported
  // Programmatic dependent launch: the call's CTAs may start while the previous kernel of the
  // stream (or graph) is still running. Until that kernel completes they only pull the first
  // tokens of their share of K/V into L2 (a hint: lengths and tables read then may be stale
  // without harm), so any earlier kernel may still write q, the cache, the tables or the
  // lengths. false: an ordinary launch (for timing comparisons).
  bool overlap = true;
  // Tokens per CTA pulled into L2 that way: -1 a quarter of the CTA's share, 64 to 192 (the
  // default); 0 no prefetch; > 0 that many (tuning and tests).
  int32_t overlap_prefetch_tokens = -1;
  // Diagnostics (benchmarks): when set, each CTA of the head_dim 64/128 kernel writes the device
  // clock (%globaltimer, ns) to cta_times[kDecodeStamps * i + k]: k = 0 its start, 1 when its
  // first warp's first tile has landed, 2 the end of its KV stream, 3 its end (its merges done),
  // 4 (the CTA that merges a sequence's splits last) when it starts that merge, 5 when that
  // merge's inputs have landed in shared memory, 0 for a point the CTA does not reach;
  // i = split + splits * (y + y_count * sequence) with y = KV head * row tiles + row tile, row
  // tiles = ceil(group / 8): size it kDecodeStamps * DecodeSplits(...) * kv_heads * row tiles *
  // batch.
  uint64_t* cta_times = nullptr;
};

// Device scratch DecodeAttention needs for these bounds (partial outputs and LSEs of splits, and
// the arrival counters of the in-kernel merge). It is sized for every call whose batch, n_heads,
// head_dim and max_kv_len are at most these, so size it once with the largest values. Contract:
// zero-fill it once after allocation (cudaMemset); every call leaves its counters at zero again.
// Pass the same pointer and byte count to every call that shares it, and order those calls on
// one stream. 0 when no call within these bounds splits a sequence (max_kv_len <= 64). The first
// call on a device also sets the kernel's shared-memory limit: make it before any graph capture.
size_t DecodeWorkspaceBytes(int32_t batch, int32_t n_heads, int32_t head_dim, int32_t max_kv_len);

// One query token per sequence over the paged cache (GQA: query head h reads KV head
// h / (n_heads / kv_heads); up to 8 query heads of a KV head share one pass over its K/V, more
// take further passes). fp32 q and out, bf16 K/V; the result matches fp32 math on the same bf16
// K/V to ~1e-5 relative. A kv_len above max_kv_len is still attended in full, only less
// evenly spread. Aborts when the workspace is too small for the split plan.
void DecodeAttention(const PagedKv& cache, const DecodeParams& p, void* workspace,
                     size_t workspace_bytes, cudaStream_t stream);

// How many CTAs per (sequence, KV head) DecodeAttention launches for these parameters (for
// benchmarks and tests; the plan depends only on host values and the current GPU's size).
int32_t DecodeSplits(const PagedKv& cache, const DecodeParams& p);
// Whether that launch merges its splits in thread-block clusters (see DecodeParams::split_merge).
bool DecodeClusterMerge(const PagedKv& cache, const DecodeParams& p);

// Causal attention of packed query rows: sequence b's q_lens[b] queries are rows
// q_start[b] .. + q_lens[b] of q ([rows, n_heads, head_dim]) and sit at the last q_lens[b] of
// kv_lens[b] positions, whose K/V are already in the cache (AppendKv first).
struct PrefillParams {
  const float* q = nullptr;
  float* out = nullptr;                // like q
  const int32_t* q_start = nullptr;    // [batch]
  const int32_t* q_lens = nullptr;     // [batch]
  const int32_t* kv_lens = nullptr;    // [batch]
  const int32_t* block_tables = nullptr;  // [batch, max_blocks_per_seq]
  int32_t batch = 0;
  int32_t n_heads = 0;
  int32_t max_blocks_per_seq = 0;
  int32_t max_q_len = 0;               // host bound on every q_lens[b]
  float scale = 1.0f;
  int32_t window = 0;
};

void PrefillAttention(const PagedKv& cache, const PrefillParams& p, cudaStream_t stream);

}  // namespace moemesh::cuda
