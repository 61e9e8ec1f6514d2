// The work decomposition of the cluster form of the fused cascade launch (cascade_cluster.cu), as
// plain functions that compile for the host and the device, like cascade_plan.h (which holds the
// layout and the flat-grid forms): the conformance test runs them on the CPU over every CTA of a
// launch. Pure functions and value types; thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/cuda/cascade_plan.h"

namespace moemesh::cuda::cascade {

// The cluster form of the fused launch (cascade_cluster.cu): a grid of thread-block clusters of
// `size` CTAs, one per (level, KV head, row tile) at the bounds ("level units"). A tile holds up
// to members_per_tile members (one 16-row MMA tile, at most size / 2 members). Each CTA attends
// one thing: CTAs [0, piece_first) the splits of the level's range for all the tile's rows, CTAs
// [piece_first, size) the members' own positions, `own` pieces per member (CTA piece_first +
// m * own + j: member m's piece j), own chosen so that split and piece CTAs get about as many
// positions each. The states stay in each CTA's shared memory; after a cluster barrier CTA k
// merges rows [k * rows / size, (k + 1) * rows / size) of the tile from every CTA's shared memory
// and writes the final outputs: no global scratch, no atomics, one launch. Sequences in no level
// form "solo tiles" (sequences [t * members_per_tile, + members_per_tile) of the batch, those in
// a level skipped), which the clusters take after their level tile, cluster c solo units c, c +
// level_units, ... Needs max_depth <= 1 and group <= 16; the prefix states are not written.

constexpr int kMaxClusterSize = 16;
constexpr int kClusterTileRows = 16;  // members_per_tile x group, at most

struct ClusterPlan {
  int size = 0;              // CTAs per cluster; 0: the call does not run as clusters
  int members_per_tile = 0;
  int tiles = 0;             // row tiles per (level, KV head)
  int level_units = 0;       // clusters of the launch: max_levels * kv_heads * tiles
  int solo_units = 0;        // (solo tile, KV head) pairs: ceil(batch / members_per_tile) * kv_heads
};

MM_CASCADE_HD ClusterPlan MakeClusterPlan(const CascadeBounds& b, int kv_heads, int size) {
  ClusterPlan c;
  const int group = b.n_heads / kv_heads;
  c.size = size;
  c.members_per_tile = MinInt(MaxInt(1, kClusterTileRows / group), MaxInt(1, size / 2));
  c.tiles = (MaxInt(b.max_members, 1) + c.members_per_tile - 1) / c.members_per_tile;
  c.level_units = b.max_levels * kv_heads * c.tiles;
  c.solo_units = (b.batch + c.members_per_tile - 1) / c.members_per_tile * kv_heads;
  return c;
}

// What a cluster does with one unit.
struct ClusterTile {
  bool active = false;  // false: the unit has no member (every CTA of the cluster agrees)
  int head = 0;
  bool solo = false;
  int level = 0;
  int first = 0;        // level units: member index of the tile's first member; solo: sequence
  int members = 0;      // member slots of the tile (solo: sequences of its range, some skipped)
  int own = 1;          // pieces per member's own positions
  int piece_first = 0;  // the first CTA attending own pieces (the CTAs before it: splits)
  int table_seq = 0;    // level units: whose block table the shared range is read through
  int begin = 0, end = 0;  // level units: the shared range (empty for solo units)
  int chunk = kMinChunk;   // positions per split of the shared range
  int n_splits = 0;        // splits with positions (0: no shared range)
};

// Whether sequence `seq` is in no level (a solo tile attends it).
MM_CASCADE_HD bool InNoLevel(int seq, const LayoutView& l) {
  return l.max_depth == 0 || l.seq_slots[seq * l.max_depth] < 0;
}

// Level unit `unit` (< c.level_units) or, with solo, solo unit `unit` (< c.solo_units).
MM_CASCADE_HD ClusterTile ResolveClusterTile(int unit, bool solo, const ClusterPlan& c,
                                             const Dims& d, const LayoutView& l,
                                             const int32_t* kv_lens) {
  ClusterTile t;
  t.solo = solo;
  if (solo) {
    t.head = unit % d.kv_heads;
    t.first = unit / d.kv_heads * c.members_per_tile;
    t.members = MinInt(c.members_per_tile, d.batch - t.first);
    for (int i = 0; i < t.members; ++i) t.active = t.active || InNoLevel(t.first + i, l);
    t.own = c.size / c.members_per_tile;
    t.piece_first = c.size - c.members_per_tile * t.own;
    return t;
  }
  const int tile = unit % c.tiles;
  const int r = unit / c.tiles;
  t.head = r % d.kv_heads;
  t.level = r / d.kv_heads;
  const int count = MinInt(l.level_members[t.level], l.max_members);
  t.first = tile * c.members_per_tile;
  if (count <= 0 || t.first >= count) return t;
  t.active = true;
  t.members = MinInt(c.members_per_tile, count - t.first);
  t.table_seq = l.member_seq[t.level * l.max_members];
  t.begin = ClampInt(l.level_begin[t.level], 0, d.capacity);
  t.end = ClampInt(l.level_end[t.level], t.begin, d.capacity);
  const int range = t.end - t.begin;
  if (range == 0) {
    t.own = c.size / t.members;
  } else {
    int longest = 0;  // the members' longest own range
    for (int i = 0; i < t.members; ++i) {
      int start = 0, len = 0;
      OwnRange(l.member_seq[t.level * l.max_members + t.first + i], d, l, kv_lens, &start, &len);
      longest = MaxInt(longest, len - start);
    }
    // About as many positions per piece CTA as per split CTA, at least one of each.
    const int64_t total = static_cast<int64_t>(range) + static_cast<int64_t>(t.members) * longest;
    const int want = static_cast<int>((static_cast<int64_t>(c.size) * longest + total / 2) / total);
    t.own = ClampInt(want, 1, MaxInt(1, (c.size - 1) / t.members));
  }
  t.piece_first = c.size - t.members * t.own;
  t.chunk = ChunkTokens(range, MaxInt(1, t.piece_first));
  t.n_splits = range > 0 ? ActiveSplits(range, t.chunk) : 0;
  return t;
}

// Why calls with these bounds cannot run as clusters ("" when they can).
inline std::string ClusterUnsupported(const CascadeBounds& b, int kv_heads) {
  if (b.max_levels == 0) return "no levels (max_levels 0)";
  if (b.max_depth > 1) return "nested levels (max_depth " + std::to_string(b.max_depth) + " > 1)";
  const int group = b.n_heads / kv_heads;
  if (group > 16) return "group " + std::to_string(group) + " > 16 query heads per KV head";
  return "";
}

// Member i's sequence (-1: a solo tile's sequence that is in a level).
MM_CASCADE_HD int ClusterMemberSeq(const ClusterTile& t, int i, const LayoutView& l) {
  if (t.solo) return InNoLevel(t.first + i, l) ? t.first + i : -1;
  return l.member_seq[t.level * l.max_members + t.first + i];
}

// Piece j (< t.own) of a member's own positions [start, len): [*lo, *hi); false when the piece
// has no positions, except piece 0 of an empty range (it writes the empty state).
MM_CASCADE_HD bool OwnPiece(const ClusterTile& t, int start, int len, int j, int* lo, int* hi) {
  const int range = len - start;
  const int chunk = ChunkTokens(range, t.own);
  if (j >= ActiveSplits(range, chunk)) return false;
  *lo = start + j * chunk;
  *hi = MinInt(*lo + chunk, len);
  if (*hi < *lo) *hi = *lo;
  return true;
}

}  // namespace moemesh::cuda::cascade
