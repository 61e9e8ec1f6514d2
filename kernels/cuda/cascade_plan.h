// The work decomposition of the CUDA cascade attention kernels (cascade.h) as plain functions that
// compile for the host and the device: the launch plan (row tiles, splits, CTA counts) and what
// each CTA of a launch does (which rows, which positions, how many arrivals complete a merge). The
// kernels call these functions, and the conformance test runs them on the CPU over every CTA of a
// launch to check coverage and arrival counts without a GPU. The levels' layout is in
// cascade_layout.h; no tensor math here. Pure functions and value types; thread-safe.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cascade_layout.h"

namespace moemesh::cuda::cascade {

constexpr int kTileTokens = 16;               // tokens of one warp step (one mma k-step of P.V)
constexpr int kStageTokens = 64;              // tokens of one pipeline stage (4 warp steps)
constexpr int kMinChunk = kStageTokens;       // fewest positions a split is given
constexpr int kMaxPrefixSplits = 256;
constexpr int kMaxSuffixSplits = 32;
constexpr int kSingleLevelMaxSplits = 16;     // above: splits merge in groups of ~sqrt, then groups
constexpr int kShortSplitTokens = 512;        // see MakePlan
constexpr int kMaxMergeInputs = 16;           // max(group size, groups) of a two-level merge
constexpr int kCounterSlots = kMaxMergeInputs + 1;  // per prefix tile: groups, then the top
constexpr int kMaxFinalInputs = kMaxSuffixSplits + kCascadeMaxDepth;
constexpr int kMaxMergeRows = 64;             // rows of one merge unit (fused form)
constexpr int kMaxUnitRows = 128;             // rows of one prefix unit (two 64-row tiles)
constexpr int kCtasPerSm = 2;                 // the flat-grid kernel's launch bounds (cascade.cu)
// The fused flat grid's unit queues (cascade.cu TakeUnit): CTAs done taking, prefix, suffix and
// merge units taken, then a claim word per SM id (%smid; an SM id beyond them claims nothing).
constexpr int kQueueWords = 4;
constexpr int kSmClaims = 1024;
constexpr int kSeqCounterWords = 2;           // per (sequence, KV head): arrivals, readers

// Which launch a plan is for.
enum class Form { kPrefixPass, kSuffixPass, kFused };

// Positions per split when a range of `range` positions is spread over `splits` CTAs: whole warp
// steps, at least kMinChunk.
MM_CASCADE_HD int ChunkTokens(int64_t range, int splits) {
  const int64_t even = (range + splits - 1) / splits;
  const int64_t steps = (even + kTileTokens - 1) / kTileTokens * kTileTokens;
  return static_cast<int>(steps > kMinChunk ? steps : kMinChunk);
}

// Splits that have positions to attend (1 for an empty range: split 0 writes the empty state).
MM_CASCADE_HD int ActiveSplits(int range, int chunk) {
  return range <= 0 ? 1 : (range + chunk - 1) / chunk;
}

// ---------------------------------------------------------------------------------------------
// The launch plan. A prefix unit is (level, KV head, row tile, split): the rows of up to
// members_per_tile members x the group's query heads against one split of the level's range
// (with pre_unit_tiles 2, two consecutive 64-row tiles sharing each K/V stage). A
// suffix unit is (sequence, KV head, split): the group's rows against one split of the sequence's
// own positions. The grid is flat: units [0, suf_ctas) are suffix units (short: they start first
// and free their slots early), then prefix units (row tile fastest, so the tiles reading the
// same positions run together), then (fused form) merge units (MergeWork). A launch with merge
// units numbers its CTAs by a ticket taken at their start, in the order the GPU starts them, so
// a merge unit, which waits for other units, only ever waits for units already running.

struct Dims {
  int kv_heads = 0;
  int n_heads = 0;
  int group = 0;  // n_heads / kv_heads
  int batch = 0;
  int max_levels = 0;
  int capacity = 0;  // positions a block table row addresses (max_blocks_per_seq * block_size)
  int window = 0;    // > 0: a sequence attends at most its last `window` positions itself
};

struct Plan {
  int pre_tile_rows = 16;      // 16 (one row-warp, the 4 warps split the positions) or 64
  int members_per_tile = 1;    // pre_tile_rows / group
  int pre_tiles = 0;           // row tiles per (level, KV head) at the bound
  int pre_unit_tiles = 1;      // 64-row tiles one prefix unit attends (1, or 2 on request)
  int pre_splits = 1;
  int pre_chunk = kMinChunk;   // positions per split at the bound
  int pre_merge_group = 1;     // splits per first-level merge
  int pre_ctas = 0;            // 0 when the form runs no prefix units
  int suf_tile_rows = 16;      // 16 when group <= 16, else 64
  int suf_splits = 1;
  int suf_chunk = kMinChunk;
  int suf_ctas = 0;            // 0 when the form runs no suffix units
  bool fused = false;          // merge units complete every sequence (see MergeWork)
  int merge_rows = 1;          // fused: rows per merge unit (a divisor or a multiple of group)
  int merge_units = 0;         // fused: (KV head, merge_rows rows) units, last in the grid
  bool spread_prefix = false;  // fused: one prefix unit per SM before two (see MakePlan)
};

// Tuning and testing knobs (0 = automatic).
struct PlanKnobs {
  int prefix_tile_rows = 0;   // 16 or 64
  int max_prefix_splits = 0;  // caps splits per prefix tile
  int max_suffix_splits = 0;  // caps splits per (sequence, KV head)
  int prefix_unit_tiles = 0;  // 2: two 64-row tiles per prefix unit of the fused form
  int q_parts = 3;            // the call's bf16 parts of q (two-tile units need 1)
};

inline int MergeGroupSize(int splits) {
  if (splits <= kSingleLevelMaxSplits) return splits;
  int g = 1;
  while (g * g < splits) ++g;  // ceil(sqrt(splits)) <= 16
  return g;
}

// Bytes one prefix CTA moves on the critical path with `tile_rows`-row tiles when the prefix
// pass has the GPU (`slots` CTAs) to itself: its share of the shared KV, plus, with
// `tile_merge`, what the merger of its tile reads (splits x rows x head_dim floats, in two levels
// above kSingleLevelMaxSplits; the fused form's merge units spread the rows instead).
inline int64_t PrefixCtaBytes(const CascadeBounds& b, int kv_heads, int head_dim, int group,
                              int slots, int tile_rows, int max_splits, bool tile_merge) {
  const int mpt = std::max(1, tile_rows / group);
  const int64_t members = std::max(b.max_members, 1);
  const int64_t tiles = (members + mpt - 1) / mpt;
  const int64_t units = std::max<int64_t>(1, static_cast<int64_t>(b.max_levels) * kv_heads * tiles);
  const int64_t cap = std::min<int64_t>(
      max_splits, std::max<int64_t>(1, (static_cast<int64_t>(b.max_shared_len) + kMinChunk - 1) /
                                           kMinChunk));
  const int splits = static_cast<int>(std::clamp<int64_t>(slots / units, 1, cap));
  const int64_t chunk = ChunkTokens(std::max(b.max_shared_len, 1), splits);
  const int64_t rows = std::min<int64_t>(tile_rows, members * group);
  const int64_t state = rows * head_dim * 4;
  const int mg = MergeGroupSize(splits);
  const int64_t merge = !tile_merge || splits == 1 ? 0
                        : splits == mg ? splits * state
                                       : (mg + (splits + mg - 1) / mg) * state;
  return chunk * head_dim * 4 + merge;  // K and V bf16 per position
}

// Most prefix splits of a fused launch: its merge units take at most kMaxFinalInputs inputs per
// row (the suffix splits, at least one, and the splits of each level).
inline int FusedMaxPrefixSplits(const CascadeBounds& b) {
  return std::max(1, (kMaxFinalInputs - 1) / std::max(1, b.max_depth));
}

// The 16-or-64 choice of a form (the forms of a call size their workspace and counters for the
// larger of their plans): 16-row tiles re-read the shared KV once per tile (from L2) but need
// fewer splits per tile; the smaller critical path wins (16 on a tie). In the two-launch form the
// last split of a tile merges the tile's states, which weighs against the many splits of a
// 64-row tile; the fused form's merge units spread that merge over the GPU. Measured on an H200
// (bench_cascade (b): 8 members x 8 query heads per KV head, 8 KV heads, 4000 shared positions),
// the fused form with 64-row tiles took 23.5 us against 31.6 with the 16-row tiles the
// two-launch model picks.
inline int PrefixTileRows(const CascadeBounds& b, int kv_heads, int head_dim, int group,
                          int slots, const PlanKnobs& k, Form form) {
  if (group > 16) return 64;
  if (k.prefix_tile_rows == 16 || k.prefix_tile_rows == 64) return k.prefix_tile_rows;
  if (static_cast<int64_t>(std::max(b.max_members, 1)) * group <= 16) return 16;
  int max_splits = k.max_prefix_splits > 0 ? std::min(k.max_prefix_splits, kMaxPrefixSplits)
                                           : kMaxPrefixSplits;
  const bool tile_merge = form != Form::kFused;
  if (!tile_merge) max_splits = std::min(max_splits, FusedMaxPrefixSplits(b));
  const int64_t small =
      PrefixCtaBytes(b, kv_heads, head_dim, group, slots, 16, max_splits, tile_merge);
  const int64_t large =
      PrefixCtaBytes(b, kv_heads, head_dim, group, slots, 64, max_splits, tile_merge);
  return small <= large ? 16 : 64;
}

// `slots`: CTAs of the kernel resident on the GPU at once (the plan fills it about once).
inline Plan MakePlan(const CascadeBounds& b, int kv_heads, int head_dim, int slots, Form form,
                     const PlanKnobs& k) {
  Plan p;
  const int group = b.n_heads / kv_heads;
  slots = std::max(slots, 1);
  p.fused = form == Form::kFused;
  p.pre_tile_rows = PrefixTileRows(b, kv_heads, head_dim, group, slots, k, form);
  p.members_per_tile = std::max(1, p.pre_tile_rows / group);
  p.pre_tiles = b.max_levels > 0 ? (std::max(b.max_members, 1) + p.members_per_tile - 1) /
                                       p.members_per_tile
                                 : 0;
  p.suf_tile_rows = group <= 16 ? 16 : 64;
  // Two 64-row tiles per prefix unit, on request (fused form, q in one bf16 part, which then fits
  // in shared memory beside two stages): each K/V stage is loaded once for 128 rows, halving the
  // L2 reads of a split. Not automatic: measured on an H200 (bench_cascade (c), 64 x 8 rows over
  // 32K positions), a two-tile unit runs a stage in 2.4 us alone on an SM and 3.0 us beside
  // another (the tiles' MMA and softmax chains run one after the other), against 1.9 us for
  // two one-tile units side by side, so with the SMs the suffix units hold, the fused call took
  // 58 us against 55.
  if (form == Form::kFused && p.pre_tile_rows == 64 && k.q_parts == 1 && p.pre_tiles >= 2 &&
      k.prefix_unit_tiles == 2) {
    p.pre_unit_tiles = 2;
  }

  const int64_t suf_units = static_cast<int64_t>(b.batch) * kv_heads;
  int64_t suf_cap = std::min<int64_t>(
      kMaxSuffixSplits, std::max<int64_t>(1, (static_cast<int64_t>(b.max_suffix_len) +
                                              kMinChunk - 1) / kMinChunk));
  if (k.max_suffix_splits > 0) suf_cap = std::min<int64_t>(suf_cap, k.max_suffix_splits);
  p.suf_splits = static_cast<int>(
      std::clamp<int64_t>(suf_units > 0 ? slots / suf_units : 1, 1, suf_cap));
  p.suf_chunk = ChunkTokens(std::max(b.max_suffix_len, 1), p.suf_splits);

  const int64_t pre_tile_units = static_cast<int64_t>(b.max_levels) * kv_heads * p.pre_tiles;
  const int64_t pre_units = static_cast<int64_t>(b.max_levels) * kv_heads *
                            ((p.pre_tiles + p.pre_unit_tiles - 1) / p.pre_unit_tiles);
  int64_t pre_cap = std::min<int64_t>(
      kMaxPrefixSplits, std::max<int64_t>(1, (static_cast<int64_t>(b.max_shared_len) +
                                              kMinChunk - 1) / kMinChunk));
  if (k.max_prefix_splits > 0) pre_cap = std::min<int64_t>(pre_cap, k.max_prefix_splits);
  int64_t pre_slots = slots;
  if (form == Form::kFused && suf_units > 0) {
    // One wave (the suffix units' CTAs beside the prefix units'), unless that leaves the prefix
    // well below its share of the work (MMA rows x positions) while its splits are long: then
    // the prefix takes that share and the suffix CTAs, first in the grid and short, free their
    // slots for the rest. Short splits stay in one wave: a prefix CTA takes ~6 us to its first
    // stage, which a second wave pays again (measured on an H200, bench_cascade (b), 8 KV heads
    // x 64 rows over 4000 shared positions: 32 splits, a second wave, 33.0 us; 24 splits 28.6).
    const int64_t rows_pre = std::min<int64_t>(
        p.pre_tile_rows, (static_cast<int64_t>(std::max(b.max_members, 1)) * group + 15) / 16 * 16);
    const double work_pre = static_cast<double>(pre_tile_units) * rows_pre *
                            std::max(b.max_shared_len, 1);
    const double work_suf = static_cast<double>(suf_units) * ((group + 15) / 16 * 16) *
                            std::max(b.max_suffix_len, 1);
    const int64_t share = static_cast<int64_t>(slots * work_pre / (work_pre + work_suf));
    const int64_t one_wave = std::max<int64_t>(1, slots - suf_units * p.suf_splits);
    const int64_t wave_splits = std::clamp<int64_t>(one_wave / std::max<int64_t>(pre_units, 1),
                                                    1, pre_cap);
    const bool long_splits = ChunkTokens(std::max(b.max_shared_len, 1),
                                         static_cast<int>(wave_splits)) >= kShortSplitTokens;
    pre_slots = 8 * one_wave >= 7 * share || !long_splits ? one_wave : share;
  }
  // Two-tile units are spread over the SMs (the GPU fills an SM's kCtasPerSm slots with
  // consecutive CTAs, which put two prefix units on most SMs and the suffix units' pairs on the
  // others; measured on an H200, one two-tile unit alone on an SM ran a stage in 2.3 us, two on
  // one SM in 3.0 us each, so every SM should hold one before any holds two).
  p.spread_prefix = p.pre_unit_tiles == 2;
  p.pre_splits = static_cast<int>(
      std::clamp<int64_t>(pre_units > 0 ? pre_slots / pre_units : 1, 1, pre_cap));
  if (form == Form::kFused) {
    // A merge unit merges each sequence's inputs (its suffix splits and the prefix splits of
    // each of its levels) in one step, at most kMaxFinalInputs of them.
    p.pre_splits = std::min(
        p.pre_splits, std::max(1, (kMaxFinalInputs - p.suf_splits) / std::max(1, b.max_depth)));
  }
  // Two-launch form: a short range takes at most kSingleLevelMaxSplits splits while each gets at
  // most kShortSplitTokens positions: the tile then merges in one level, which costs less than
  // the shorter chunks of more splits save. (The fused form merges every split of a row in one
  // step.)
  if (form != Form::kFused && p.pre_splits > kSingleLevelMaxSplits &&
      ChunkTokens(std::max(b.max_shared_len, 1), kSingleLevelMaxSplits) <= kShortSplitTokens) {
    p.pre_splits = kSingleLevelMaxSplits;
  }
  p.pre_chunk = ChunkTokens(std::max(b.max_shared_len, 1), p.pre_splits);
  p.pre_merge_group = MergeGroupSize(p.pre_splits);

  if (form != Form::kSuffixPass) p.pre_ctas = static_cast<int>(pre_units * p.pre_splits);
  if (form != Form::kPrefixPass) p.suf_ctas = static_cast<int>(suf_units * p.suf_splits);
  if (form == Form::kFused && suf_units > 0) {
    // About one merge unit per resident slot: one SM stages a merge's inputs at well under its
    // share of L2 bandwidth, so the rows are spread (down to one row per unit, a divisor of the
    // group) rather than merged a sequence per unit; above, whole sequences per unit (up to
    // kMaxMergeRows rows) rather than more waves.
    const int64_t rows = static_cast<int64_t>(b.batch) * b.n_heads;
    const int target = static_cast<int>(std::clamp<int64_t>((rows + slots - 1) / slots, 1,
                                                            kMaxMergeRows));
    if (target < group) {
      p.merge_rows = target;
      while (group % p.merge_rows != 0) --p.merge_rows;
    } else {
      p.merge_rows = group * std::max(1, std::min(target, kMaxMergeRows) / group);
    }
    const int64_t head_rows = static_cast<int64_t>(b.batch) * group;
    p.merge_units = static_cast<int>(kv_heads * ((head_rows + p.merge_rows - 1) / p.merge_rows));
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// What one CTA does.

struct PrefixWork {
  bool active = false;
  int level = 0, head = 0, tile = 0, split = 0;  // tile: the unit's first row tile
  int tiles = 0;       // row tiles of the unit that have members (1 or 2)
  int first_slot = 0;  // member slot of the unit's first member
  int members = 0;     // members in the unit
  int rows = 0;        // members * group
  int table_seq = 0;   // whose block table the level is read through (its first member)
  int lo = 0, hi = 0;  // this split's positions
  int n_active = 1;    // splits of the tile that have positions (all of them agree)
};

// The positions of level `level`, [*begin, *end), as its prefix tiles split them: *chunk
// positions per split; returns the active splits (those with positions; 1 for an empty range).
MM_CASCADE_HD int LevelSplits(int level, const Plan& p, const Dims& d, const LayoutView& l,
                              int* begin, int* end, int* chunk) {
  *begin = ClampInt(l.level_begin[level], 0, d.capacity);
  *end = ClampInt(l.level_end[level], *begin, d.capacity);
  const int range = *end - *begin;
  *chunk = MaxInt(p.pre_chunk, ChunkTokens(range, p.pre_splits));
  return ActiveSplits(range, *chunk);
}

// Index of prefix tile (level, KV head, tile) among a launch's tiles (its counters and
// kCounterSlots further on).
MM_CASCADE_HD int64_t TileIndex(int level, int head, int tile, const Plan& p, const Dims& d) {
  return (static_cast<int64_t>(level) * d.kv_heads + head) * p.pre_tiles + tile;
}

// Prefix units per (level, KV head, split).
MM_CASCADE_HD int PrefixUnitsPerSplit(const Plan& p) {
  return (p.pre_tiles + p.pre_unit_tiles - 1) / p.pre_unit_tiles;
}

// Prefix unit `cta` (< plan.pre_ctas; unit suf_ctas + cta of the launch).
MM_CASCADE_HD PrefixWork ResolvePrefix(int cta, const Plan& p, const Dims& d, const LayoutView& l) {
  PrefixWork w;
  const int units = PrefixUnitsPerSplit(p);
  w.tile = cta % units * p.pre_unit_tiles;
  int r = cta / units;
  w.split = r % p.pre_splits;
  r /= p.pre_splits;
  w.head = r % d.kv_heads;
  w.level = r / d.kv_heads;
  const int count = MinInt(l.level_members[w.level], l.max_members);
  const int m0 = w.tile * p.members_per_tile;
  if (count <= 0 || m0 >= count) return w;
  w.first_slot = w.level * l.max_members + m0;
  w.members = MinInt(p.members_per_tile * p.pre_unit_tiles, count - m0);
  w.tiles = (w.members + p.members_per_tile - 1) / p.members_per_tile;
  w.rows = w.members * d.group;
  w.table_seq = l.member_seq[w.level * l.max_members];
  int begin = 0, end = 0, chunk = 0;
  w.n_active = LevelSplits(w.level, p, d, l, &begin, &end, &chunk);
  if (w.split >= w.n_active) return w;
  w.lo = begin + w.split * chunk;
  w.hi = MinInt(w.lo + chunk, end);
  if (w.hi < w.lo) w.hi = w.lo;  // empty range: split 0 writes the empty state
  w.active = true;
  return w;
}

struct SuffixWork {
  bool active = false;
  int seq = 0, head = 0, split = 0;
  int lo = 0, hi = 0;
  int n_active = 1;
};

// The positions sequence `seq` attends itself: [*start, *len).
MM_CASCADE_HD void OwnRange(int seq, const Dims& d, const LayoutView& l, const int32_t* kv_lens,
                            int* start, int* len) {
  *len = ClampInt(kv_lens[seq], 0, d.capacity);
  int s = ClampInt(l.seq_suffix_begin[seq], 0, *len);
  if (d.window > 0) s = MaxInt(s, *len - d.window);
  *start = s;
}

// The positions sequence `seq` attends itself, [start, len), and its active splits.
MM_CASCADE_HD void SuffixRange(int seq, const Plan& p, const Dims& d, const LayoutView& l,
                               const int32_t* kv_lens, int* start, int* len, int* n_active,
                               int* chunk) {
  OwnRange(seq, d, l, kv_lens, start, len);
  const int range = *len - *start;
  *chunk = MaxInt(p.suf_chunk, ChunkTokens(range, p.suf_splits));
  *n_active = ActiveSplits(range, *chunk);
}

// Suffix unit `id` (< plan.suf_ctas; CTA id of the launch).
MM_CASCADE_HD SuffixWork ResolveSuffix(int id, const Plan& p, const Dims& d, const LayoutView& l,
                                       const int32_t* kv_lens) {
  SuffixWork w;
  w.split = id % p.suf_splits;
  const int r = id / p.suf_splits;
  w.head = r % d.kv_heads;
  w.seq = r / d.kv_heads;
  int start = 0, len = 0, chunk = 0;
  SuffixRange(w.seq, p, d, l, kv_lens, &start, &len, &w.n_active, &chunk);
  if (w.split >= w.n_active) return w;
  w.lo = start + w.split * chunk;
  w.hi = MinInt(w.lo + chunk, len);
  if (w.hi < w.lo) w.hi = w.lo;
  w.active = true;
  return w;
}

// Arrivals of the suffix splits of (seq, KV head) at its counter: its active suffix splits.
MM_CASCADE_HD int SuffixArrivals(int seq, const Plan& p, const Dims& d, const LayoutView& l,
                                 const int32_t* kv_lens) {
  int start = 0, len = 0, n_active = 1, chunk = 0;
  SuffixRange(seq, p, d, l, kv_lens, &start, &len, &n_active, &chunk);
  return n_active;
}

// The active splits of level `level` (LevelSplits without the positions).
MM_CASCADE_HD int LevelActiveSplits(int level, const Plan& p, const Dims& d, const LayoutView& l) {
  int begin = 0, end = 0, chunk = 0;
  return LevelSplits(level, p, d, l, &begin, &end, &chunk);
}

// The prefix tile holding member slot `slot` (for any KV head): its level and tile, and the
// members it holds (the readers of its counter in the fused form).
struct SlotTile {
  int level = 0, tile = 0, members = 0;
};

MM_CASCADE_HD SlotTile TileOfSlot(int slot, const Plan& p, const Dims& d, const LayoutView& l) {
  SlotTile t;
  t.level = slot / l.max_members;
  t.tile = (slot - t.level * l.max_members) / p.members_per_tile;
  const int count = MinInt(l.level_members[t.level], l.max_members);
  t.members = MinInt(p.members_per_tile, count - t.tile * p.members_per_tile);
  return t;
}

// A merge unit of the fused form: KV head `head`, rows [row_begin, row_end) of its
// batch x group rows (row g is query head g % group of the KV head, of sequence g / group), so
// sequences [seq_begin, seq_end). It waits until the suffix splits of each sequence and the
// prefix splits of each of its levels have arrived (their units come earlier in the launch's
// ticket order, so they are running or done), then merges all those partial states in one step
// per row. A sequence is read by `readers` units (MergeReaders), which count themselves to reset
// the counters.
struct MergeWork {
  bool active = false;
  int head = 0, row_begin = 0, row_end = 0, seq_begin = 0, seq_end = 0;
};

// Units reading each (sequence, KV head)'s counters.
MM_CASCADE_HD int MergeReaders(const Plan& p, const Dims& d) {
  return p.merge_rows < d.group ? d.group / p.merge_rows : 1;
}

// Merge unit `id` (< plan.merge_units; unit suf_ctas + pre_ctas + id of the launch).
MM_CASCADE_HD MergeWork ResolveMerge(int id, const Plan& p, const Dims& d) {
  MergeWork w;
  w.head = id % d.kv_heads;
  w.row_begin = id / d.kv_heads * p.merge_rows;
  w.row_end = MinInt(w.row_begin + p.merge_rows, d.batch * d.group);
  w.seq_begin = w.row_begin / d.group;
  w.seq_end = (w.row_end + d.group - 1) / d.group;
  w.active = w.row_begin < w.row_end;
  return w;
}

}  // namespace moemesh::cuda::cascade
