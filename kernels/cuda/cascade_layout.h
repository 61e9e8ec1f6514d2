// The host bounds and the device image ("layout") of a step's cascade levels for the CUDA cascade
// attention kernels (cascade.h): which sequences share which positions, as one int32 array whose
// offsets depend only on the bounds, and its host builder with the checks of a step's levels. The
// launch plan and what each CTA does are in cascade_plan.h. Compiles for the host and the device;
// pure functions and value types; thread-safe.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define MM_CASCADE_HD __host__ __device__ __forceinline__
#else
#define MM_CASCADE_HD inline
#endif

namespace moemesh::cuda {

// Host bounds of a cascade call: they size the launch and the workspace (so a CUDA graph captured
// with them can be replayed with any lengths and levels within them).
struct CascadeBounds {
  int32_t batch = 0;           // sequences (one query token each)
  int32_t n_heads = 0;         // query heads
  int32_t max_levels = 0;      // cascade levels per call (0: none, the call is flat decode)
  int32_t max_members = 0;     // members of any one level
  int32_t max_depth = 0;       // levels containing any one sequence (<= kCascadeMaxDepth)
  int32_t max_shared_len = 0;  // positions of any one level (end - begin); longer still works
  int32_t max_suffix_len = 0;  // positions a sequence attends itself (kv_len - its suffix begin,
                               // or its window); longer still works, only less evenly spread
};

// One cascade level on the host: its members (batch indices) share the KV of positions
// [begin, end) through the same physical blocks; the prefix pass reads them through the block
// table of members[0].
struct CascadeLevelSpec {
  std::vector<int32_t> members;
  int32_t begin = 0;
  int32_t end = 0;
};

constexpr int kCascadeMaxDepth = 16;
constexpr int kCascadeMaxGroup = 64;  // query heads per KV head

namespace cascade {

MM_CASCADE_HD int MinInt(int a, int b) { return a < b ? a : b; }
MM_CASCADE_HD int MaxInt(int a, int b) { return a > b ? a : b; }
MM_CASCADE_HD int ClampInt(int x, int lo, int hi) { return MinInt(MaxInt(x, lo), hi); }

// ---------------------------------------------------------------------------------------------
// The layout: one int32 array (copied to the device once per step) holding, at offsets that
// depend only on the bounds:
//   level_begin[max_levels], level_end[max_levels], level_members[max_levels] (0: unused level),
//   member_seq[max_levels * max_members]: batch index of member i of level l at l * max_members + i
//     (its "member slot": the row of the prefix states that member's prefix result goes to),
//   seq_suffix_begin[batch]: the first position the sequence attends itself (0: in no level),
//   seq_slots[batch * max_depth]: member slots of the sequence in its levels, -1 padded.

struct LayoutOffsets {
  int64_t level_begin = 0, level_end = 0, level_members = 0, member_seq = 0, seq_suffix_begin = 0,
          seq_slots = 0, words = 0;
};

MM_CASCADE_HD LayoutOffsets ComputeLayoutOffsets(int batch, int max_levels, int max_members,
                                                 int max_depth) {
  LayoutOffsets o;
  const int64_t levels = max_levels > 0 ? max_levels : 0;
  o.level_begin = 0;
  o.level_end = o.level_begin + levels;
  o.level_members = o.level_end + levels;
  o.member_seq = o.level_members + levels;
  o.seq_suffix_begin = o.member_seq + levels * (max_members > 0 ? max_members : 0);
  o.seq_slots = o.seq_suffix_begin + (batch > 0 ? batch : 0);
  o.words = o.seq_slots + static_cast<int64_t>(batch > 0 ? batch : 0) *
                              (levels > 0 && max_depth > 0 ? max_depth : 0);
  return o;
}

// Pointers into a layout (host or device memory).
struct LayoutView {
  const int32_t* level_begin = nullptr;
  const int32_t* level_end = nullptr;
  const int32_t* level_members = nullptr;
  const int32_t* member_seq = nullptr;
  const int32_t* seq_suffix_begin = nullptr;
  const int32_t* seq_slots = nullptr;
  int max_members = 0;
  int max_depth = 0;  // 0 when there are no levels
};

MM_CASCADE_HD LayoutView MakeLayoutView(const int32_t* words, const CascadeBounds& b) {
  const LayoutOffsets o = ComputeLayoutOffsets(b.batch, b.max_levels, b.max_members, b.max_depth);
  LayoutView v;
  v.level_begin = words + o.level_begin;
  v.level_end = words + o.level_end;
  v.level_members = words + o.level_members;
  v.member_seq = words + o.member_seq;
  v.seq_suffix_begin = words + o.seq_suffix_begin;
  v.seq_slots = words + o.seq_slots;
  v.max_members = b.max_members;
  v.max_depth = b.max_levels > 0 ? b.max_depth : 0;
  return v;
}

// ---------------------------------------------------------------------------------------------
// Host: building a layout.

inline int64_t LayoutWords(const CascadeBounds& b) {
  return ComputeLayoutOffsets(b.batch, b.max_levels, b.max_members, b.max_depth).words;
}

// Fills *words (resized to LayoutWords(bounds)) with the layout of `levels`. Checks that the
// levels fit the bounds (count, members, depth), that members are batch indices without repeats
// within a level, that 0 <= begin <= end, and that each member's levels, ordered by begin, tile
// [0, its deepest end) without gaps or overlaps (that end is where its own positions start).
// kv_lens (optional, host copy of the lengths) adds: every level ends at or before each member's
// kv_len. Returns "" or what is wrong, naming the level and member.
inline std::string BuildLayout(const CascadeBounds& b, const std::vector<CascadeLevelSpec>& levels,
                               const int32_t* kv_lens, std::vector<int32_t>* words) {
  auto text = [](const char* what, int64_t x) { return std::string(what) + std::to_string(x); };
  if (b.batch < 0 || b.max_levels < 0 || b.max_members < 0 || b.max_depth < 0) {
    return "negative bound";
  }
  if (b.max_levels > 0 && (b.max_members < 1 || b.max_depth < 1 ||
                           b.max_depth > kCascadeMaxDepth)) {
    return text("with levels, need max_members >= 1 and 1 <= max_depth <= ", kCascadeMaxDepth);
  }
  if (static_cast<int64_t>(levels.size()) > b.max_levels) {
    return text("levels: ", static_cast<int64_t>(levels.size())) +
           text(" > max_levels ", b.max_levels);
  }
  const LayoutOffsets o = ComputeLayoutOffsets(b.batch, b.max_levels, b.max_members, b.max_depth);
  words->assign(static_cast<size_t>(o.words), 0);
  int32_t* w = words->data();
  std::fill(w + o.member_seq, w + o.seq_suffix_begin, -1);
  std::fill(w + o.seq_slots, w + o.words, -1);
  std::vector<std::vector<int>> of_seq(std::max(b.batch, 0));  // levels of each sequence
  for (size_t li = 0; li < levels.size(); ++li) {
    const CascadeLevelSpec& lv = levels[li];
    const std::string name = text("level ", static_cast<int64_t>(li));
    if (lv.members.empty()) return name + ": no members";
    if (static_cast<int64_t>(lv.members.size()) > b.max_members) {
      return name + text(": members ", static_cast<int64_t>(lv.members.size())) +
             text(" > max_members ", b.max_members);
    }
    if (lv.begin < 0 || lv.end < lv.begin) {
      return name + text(": bad range begin ", lv.begin) + text(" end ", lv.end);
    }
    w[o.level_begin + li] = lv.begin;
    w[o.level_end + li] = lv.end;
    w[o.level_members + li] = static_cast<int32_t>(lv.members.size());
    for (size_t i = 0; i < lv.members.size(); ++i) {
      const int32_t m = lv.members[i];
      if (m < 0 || m >= b.batch) return name + text(": member ", m) + " is not a batch index";
      for (size_t j = 0; j < i; ++j) {
        if (lv.members[j] == m) return name + text(": member ", m) + " repeated";
      }
      if (kv_lens != nullptr && lv.end > kv_lens[m]) {
        return name + text(": end ", lv.end) + text(" beyond kv_len ", kv_lens[m]) +
               text(" of member ", m);
      }
      w[o.member_seq + static_cast<int64_t>(li) * b.max_members + i] = m;
      of_seq[m].push_back(static_cast<int>(li));
    }
  }
  for (int s = 0; s < b.batch; ++s) {
    std::vector<int>& mine = of_seq[s];
    if (static_cast<int>(mine.size()) > b.max_depth) {
      return text("sequence ", s) + text(" is in ", static_cast<int64_t>(mine.size())) +
             text(" levels > max_depth ", b.max_depth);
    }
    std::sort(mine.begin(), mine.end(), [&](int x, int y) {
      return levels[x].begin != levels[y].begin ? levels[x].begin < levels[y].begin
                                                : levels[x].end < levels[y].end;
    });
    int32_t covered = 0;
    for (size_t j = 0; j < mine.size(); ++j) {
      const CascadeLevelSpec& lv = levels[mine[j]];
      if (lv.begin != covered) {
        return text("sequence ", s) + text(": its levels do not tile [0, end): level ", mine[j]) +
               text(" begins at ", lv.begin) + text(" where the previous ones end at ", covered);
      }
      covered = lv.end;
      int slot = -1;
      const std::vector<int32_t>& mem = lv.members;
      for (size_t i = 0; i < mem.size(); ++i) {
        if (mem[i] == s) slot = mine[j] * b.max_members + static_cast<int>(i);
      }
      w[o.seq_slots + static_cast<int64_t>(s) * b.max_depth + j] = slot;
    }
    w[o.seq_suffix_begin + s] = covered;
  }
  return "";
}

}  // namespace cascade
}  // namespace moemesh::cuda
