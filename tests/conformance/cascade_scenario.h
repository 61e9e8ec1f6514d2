// The scenarios of the CUDA cascade conformance test (cuda_cascade_test.cc): cases (levels,
// members, own positions, shapes and knobs), the pool, tables and levels built from them, the
// scalar references (ref::CascadePrefix / CascadeSuffix / MergeStates composed, and flat
// ref::PagedAttention), the comparison of states, and the bounds and replay variants of a case.
// Host only; used by that test alone.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cascade_plan.h"
#include "kernels/ref/cascade.h"
#include "kernels/ref/paged_attention.h"
#include "tests/conformance/cuda_test_util.h"

namespace moemesh::cascade_scenario {

using cuda::CascadeBounds;
using cuda::CascadeLevelSpec;
using testing_cuda::Random;
using testing_cuda::RoundBf16;

inline constexpr double kTol = 1e-4;  // fp32-class: a single bf16 rounding of q or P misses this
// q_parts 1 (q and P rounded to bf16 once): the accuracy of bf16 flash-attention kernels.
inline constexpr double kTolBf16 = 1e-2;

struct LevelDef {
  std::vector<int> members;
  int begin_block = 0;
  int end_block = 0;
};

struct CascadeCase {
  std::string name;
  int kv_heads = 1;
  int group = 8;
  int head_dim = 128;
  int block_size = 16;
  std::vector<LevelDef> levels;  // a member's levels, in this order, tile [0, its deepest end)
  std::vector<int> own;          // per sequence: positions after its deepest level (all of them
                                 // for a sequence in no level; 0 there = a padding row)
  int window = 0;
  float scale = 0.0f;  // 0 = 1 / sqrt(head_dim)
  float q_stddev = 1.0f;
  int padding_levels = 0;  // bounds.max_levels beyond the levels used
  int prefix_tile_rows = 0;
  int max_prefix_splits = 0;
  int max_suffix_splits = 0;
  int q_parts = 3;
  int prefix_unit_tiles = 0;
  bool graph = false;
};

// Absolute and relative tolerance of a case's outputs and LSEs against the fp32 references.
inline double CaseTolerance(const CascadeCase& c) { return c.q_parts == 1 ? kTolBf16 : kTol; }

inline std::ostream& operator<<(std::ostream& os, const CascadeCase& c) { return os << c.name; }

// The pool, tables and levels of a case (positions), on the host.
struct Scenario {
  int batch = 0, kv_heads = 0, group = 0, n_heads = 0, d = 0, bs = 0;
  int num_blocks = 0, max_blocks = 0;
  std::vector<int32_t> kv_lens;
  std::vector<CascadeLevelSpec> levels;
  std::vector<int32_t> tables;        // [batch, max_blocks]
  std::vector<float> k_hnd, v_hnd;    // kernel layout [blocks, kv_heads, bs, d]
  std::vector<float> k_nhd, v_nhd;    // reference layout [blocks, bs, kv_heads, d]
};

inline Scenario BuildScenario(const CascadeCase& c, uint32_t seed) {
  Scenario s;
  s.batch = static_cast<int>(c.own.size());
  s.kv_heads = c.kv_heads;
  s.group = c.group;
  s.n_heads = c.kv_heads * c.group;
  s.d = c.head_dim;
  s.bs = c.block_size;
  std::vector<int> deepest(s.batch, 0);  // in blocks
  for (const LevelDef& lv : c.levels) {
    for (int m : lv.members) deepest[m] = std::max(deepest[m], lv.end_block);
  }
  s.kv_lens.resize(s.batch);
  int used = 0;
  for (const LevelDef& lv : c.levels) used += lv.end_block - lv.begin_block;
  for (int b = 0; b < s.batch; ++b) {
    s.kv_lens[b] = deepest[b] * s.bs + c.own[b];
    const int blocks = (s.kv_lens[b] + s.bs - 1) / s.bs;
    used += blocks - deepest[b];
    s.max_blocks = std::max(s.max_blocks, blocks);
  }
  s.max_blocks = std::max(s.max_blocks, 1);
  s.num_blocks = used + used / 2 + 3;
  std::vector<int32_t> order(s.num_blocks);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const int32_t poison = order.back();  // never holds data
  int next = 0;
  // Physical blocks of each level, shared by its members.
  std::vector<std::vector<int32_t>> level_blocks(c.levels.size());
  for (size_t l = 0; l < c.levels.size(); ++l) {
    for (int i = c.levels[l].begin_block; i < c.levels[l].end_block; ++i) {
      level_blocks[l].push_back(order[next++]);
    }
  }
  s.tables.assign(static_cast<size_t>(s.batch) * s.max_blocks, poison);
  std::vector<std::pair<int32_t, int>> valid_rows;  // (block, rows holding data)
  for (size_t l = 0; l < c.levels.size(); ++l) {
    for (int32_t blk : level_blocks[l]) valid_rows.push_back({blk, s.bs});
  }
  for (int b = 0; b < s.batch; ++b) {
    int32_t* table = s.tables.data() + static_cast<size_t>(b) * s.max_blocks;
    for (size_t l = 0; l < c.levels.size(); ++l) {
      const LevelDef& lv = c.levels[l];
      if (std::find(lv.members.begin(), lv.members.end(), b) == lv.members.end()) continue;
      for (int i = lv.begin_block; i < lv.end_block; ++i) {
        table[i] = level_blocks[l][i - lv.begin_block];
      }
    }
    const int blocks = (s.kv_lens[b] + s.bs - 1) / s.bs;
    for (int i = deepest[b]; i < blocks; ++i) {
      table[i] = order[next++];
      valid_rows.push_back({table[i], std::min(s.bs, s.kv_lens[b] - i * s.bs)});
    }
  }
  const size_t pool = static_cast<size_t>(s.num_blocks) * s.bs * s.kv_heads * s.d;
  s.k_hnd.assign(pool, std::nanf(""));
  s.v_hnd.assign(pool, std::nanf(""));
  s.k_nhd.assign(pool, std::nanf(""));
  s.v_nhd.assign(pool, std::nanf(""));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& [blk, rows] : valid_rows) {
    for (int r = 0; r < rows; ++r) {
      for (int h = 0; h < s.kv_heads; ++h) {
        const size_t hnd = ((static_cast<size_t>(blk) * s.kv_heads + h) * s.bs + r) * s.d;
        const size_t nhd = ((static_cast<size_t>(blk) * s.bs + r) * s.kv_heads + h) * s.d;
        for (int e = 0; e < s.d; ++e) {
          const float kx = RoundBf16(normal(rng)), vx = RoundBf16(normal(rng));
          s.k_hnd[hnd + e] = s.k_nhd[nhd + e] = kx;
          s.v_hnd[hnd + e] = s.v_nhd[nhd + e] = vx;
        }
      }
    }
  }
  for (const LevelDef& lv : c.levels) {
    CascadeLevelSpec spec;
    spec.members.assign(lv.members.begin(), lv.members.end());
    spec.begin = lv.begin_block * s.bs;
    spec.end = lv.end_block * s.bs;
    s.levels.push_back(spec);
  }
  return s;
}

struct Reference {
  std::vector<std::vector<float>> prefix_v, prefix_lse;  // per level [members, n_heads(, d)]
  std::vector<float> out, lse;                           // cascade composition
  std::vector<float> flat;                               // ref::PagedAttention
};

// Suffix begin of each sequence: its deepest level's end (0 in no level).
inline std::vector<int> SuffixBegins(const Scenario& s, const std::vector<CascadeLevelSpec>& levels) {
  std::vector<int> begin(s.batch, 0);
  for (const CascadeLevelSpec& lv : levels) {
    for (int m : lv.members) begin[m] = std::max(begin[m], lv.end);
  }
  return begin;
}

inline Reference ComputeReference(const Scenario& s, const std::vector<CascadeLevelSpec>& levels,
                           const std::vector<int32_t>& kv_lens, const std::vector<float>& q,
                           float scale, int window) {
  Reference r;
  const size_t row = static_cast<size_t>(s.n_heads) * s.d;
  for (const CascadeLevelSpec& lv : levels) {
    const size_t m = lv.members.size();
    std::vector<float> gathered(m * row);
    for (size_t i = 0; i < m; ++i) {
      std::copy_n(q.begin() + lv.members[i] * row, row, gathered.begin() + i * row);
    }
    std::vector<float> v(m * row), lse(m * s.n_heads);
    ref::CascadePrefix(gathered.data(), static_cast<int64_t>(m), s.k_nhd.data(), s.v_nhd.data(),
                       s.tables.data() + static_cast<size_t>(lv.members[0]) * s.max_blocks, s.bs,
                       lv.begin, lv.end, s.n_heads, s.kv_heads, s.d, scale, v.data(), lse.data());
    r.prefix_v.push_back(std::move(v));
    r.prefix_lse.push_back(std::move(lse));
  }
  const std::vector<int> begins = SuffixBegins(s, levels);
  r.out.resize(s.batch * row);
  r.lse.resize(s.batch * s.n_heads);
  r.flat.assign(s.batch * row, 0.0f);
  for (int b = 0; b < s.batch; ++b) {
    const int32_t* table = s.tables.data() + static_cast<size_t>(b) * s.max_blocks;
    float* v = r.out.data() + b * row;
    float* lse = r.lse.data() + b * s.n_heads;
    ref::CascadeSuffix(q.data() + b * row, s.k_nhd.data(), s.v_nhd.data(), table, s.bs, begins[b],
                       1, kv_lens[b], s.n_heads, s.kv_heads, s.d, scale, window, v, lse);
    for (size_t l = 0; l < levels.size(); ++l) {
      const auto& mem = levels[l].members;
      const auto it = std::find(mem.begin(), mem.end(), b);
      if (it == mem.end()) continue;
      const size_t i = it - mem.begin();
      ref::MergeStates(v, lse, r.prefix_v[l].data() + i * row,
                       r.prefix_lse[l].data() + i * s.n_heads, s.n_heads, s.d);
    }
    if (kv_lens[b] > 0) {
      ref::PagedAttention(q.data() + b * row, s.k_nhd.data(), s.v_nhd.data(), table, s.bs,
                          r.flat.data() + b * row, 1, kv_lens[b], s.n_heads, s.kv_heads, s.d,
                          scale, window);
    }
  }
  return r;
}

// Compares `rows` states (out [rows, n_heads, d], lse [rows, n_heads]; lse may be empty) within
// tol (absolute and relative); names the row (through row_name), head and dim of the first
// mismatch.
inline void ExpectStates(const std::vector<float>& got, const std::vector<float>& got_lse,
                  const std::vector<float>& want, const std::vector<float>& want_lse, int rows,
                  int n_heads, int d, const std::string& what,
                  const std::function<std::string(int)>& row_name, double* worst,
                  double tol = kTol) {
  for (int r = 0; r < rows; ++r) {
    for (int h = 0; h < n_heads; ++h) {
      for (int e = 0; e < d; ++e) {
        const size_t i = (static_cast<size_t>(r) * n_heads + h) * d + e;
        ASSERT_TRUE(std::isfinite(got[i]))
            << what << ": non-finite output at " << row_name(r) << " head " << h << " dim " << e;
        const double err = std::abs(static_cast<double>(got[i]) - want[i]);
        ASSERT_LE(err, tol + tol * std::abs(want[i]))
            << what << ": output at " << row_name(r) << " head " << h << " dim " << e << " is "
            << got[i] << ", want " << want[i];
        *worst = std::max(*worst, err / (1.0 + std::abs(want[i])));
      }
      if (got_lse.empty()) continue;
      const size_t i = static_cast<size_t>(r) * n_heads + h;
      if (std::isinf(want_lse[i])) {
        ASSERT_TRUE(std::isinf(got_lse[i]) && got_lse[i] < 0)
            << what << ": lse at " << row_name(r) << " head " << h << " is " << got_lse[i]
            << ", want -inf";
        continue;
      }
      ASSERT_TRUE(std::isfinite(got_lse[i]))
          << what << ": non-finite lse at " << row_name(r) << " head " << h;
      ASSERT_LE(std::abs(static_cast<double>(got_lse[i]) - want_lse[i]),
                tol + tol * std::abs(want_lse[i]))
          << what << ": lse at " << row_name(r) << " head " << h << " is " << got_lse[i]
          << ", want " << want_lse[i];
    }
  }
}

inline std::vector<int> Range(int n) {
  std::vector<int> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// Own positions of n sequences, uniform in [lo, hi] (seeded).
inline std::vector<int> Own(int n, int lo, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> u(lo, hi);
  std::vector<int> v(n);
  for (int& x : v) x = u(rng);
  return v;
}

inline CascadeCase Case(std::string name, int kv_heads, int group, int head_dim, int block_size,
                 std::vector<LevelDef> levels, std::vector<int> own) {
  CascadeCase c;
  c.name = std::move(name);
  c.kv_heads = kv_heads;
  c.group = group;
  c.head_dim = head_dim;
  c.block_size = block_size;
  c.levels = std::move(levels);
  c.own = std::move(own);
  return c;
}

// The bounds a case's launches use: exact for its levels and lengths (plus padding levels).
inline CascadeBounds CaseBounds(const CascadeCase& c, const Scenario& s) {
  CascadeBounds bounds;
  bounds.batch = s.batch;
  bounds.n_heads = s.n_heads;
  bounds.max_levels = static_cast<int>(s.levels.size()) + c.padding_levels;
  bounds.max_members = 1;
  bounds.max_depth = 1;
  std::vector<int> depth(s.batch, 0);
  for (const CascadeLevelSpec& lv : s.levels) {
    bounds.max_members = std::max<int>(bounds.max_members, static_cast<int>(lv.members.size()));
    bounds.max_shared_len = std::max(bounds.max_shared_len, lv.end - lv.begin);
    for (int m : lv.members) bounds.max_depth = std::max(bounds.max_depth, ++depth[m]);
  }
  const std::vector<int> begins = SuffixBegins(s, s.levels);
  for (int b = 0; b < s.batch; ++b) {
    bounds.max_suffix_len = std::max(bounds.max_suffix_len, s.kv_lens[b] - begins[b]);
  }
  if (c.window > 0) bounds.max_suffix_len = std::min(bounds.max_suffix_len, c.window);
  return bounds;
}

inline uint32_t CaseSeed(const CascadeCase& c) { return 17 + static_cast<uint32_t>(c.own.size()); }

// Graph replay 1: shorter own ranges (never longer: the pool holds NaN past the lengths).
inline std::vector<int32_t> ShorterLengths(const Scenario& s) {
  const std::vector<int> begins = SuffixBegins(s, s.levels);
  std::vector<int32_t> lens = s.kv_lens;
  for (int b = 0; b < s.batch; ++b) {
    const int own = s.kv_lens[b] - begins[b];
    lens[b] = begins[b] + (own > 0 ? std::max(1, own * 2 / 3 + b % 2) : 0);
  }
  return lens;
}

// Graph replay 2: the last level (the innermost of its members) loses its last member, which then
// attends those positions itself, and, when it has several blocks, its last block.
inline std::vector<CascadeLevelSpec> ChangedLevels(const Scenario& s) {
  std::vector<CascadeLevelSpec> levels = s.levels;
  if (!levels.empty()) {
    CascadeLevelSpec& last = levels.back();
    if (last.members.size() >= 2) last.members.pop_back();
    if (last.end - last.begin >= 2 * s.bs) last.end -= s.bs;
  }
  return levels;
}

}  // namespace moemesh::cascade_scenario
