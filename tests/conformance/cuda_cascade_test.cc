// CUDA cascade attention (kernels/cuda/cascade.h), two-launch and fused, against the scalar
// references: ref::CascadePrefix / CascadeSuffix / MergeStates (kernels/ref/cascade.h) for the
// prefix states and the merged result, and flat ref::PagedAttention for the output. Random bf16
// K/V in a shuffled pool whose shared blocks are physically shared by the level's members (as
// prefix caching stores them); unused blocks, unused rows and the block behind unused table
// entries hold NaN. Cases name their shape: levels (L), members (m), shared and own positions,
// KV heads, group (g), head_dim (d), block size (bs). The plan of the kernels' work is checked on
// the CPU by cascade_plan_test; the cases, scenarios and references are in cascade_scenario.h.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cascade_cluster_plan.h"
#include "kernels/cuda/cascade_plan.h"
#include "kernels/ref/cascade.h"
#include "kernels/ref/paged_attention.h"
#include "tests/conformance/cascade_scenario.h"
#include "tests/conformance/cuda_test_util.h"

#ifdef MOEMESH_HAVE_CUDA
#include "kernels/cuda/cascade.h"
#include "tests/conformance/delayed_copy.h"
#endif

namespace moemesh {
namespace {

namespace cs = cuda::cascade;
using cascade_scenario::Case;
using cascade_scenario::CaseBounds;
using cascade_scenario::CascadeCase;
using cascade_scenario::CaseSeed;
using cascade_scenario::ChangedLevels;
using cascade_scenario::BuildScenario;
using cascade_scenario::ComputeReference;
using cascade_scenario::ExpectStates;
using cascade_scenario::Own;
using cascade_scenario::Range;
using cascade_scenario::Reference;
using cascade_scenario::Scenario;
using cascade_scenario::ShorterLengths;
using cuda::CascadeBounds;
using cuda::CascadeLevelSpec;
using testing_cuda::Random;


std::vector<CascadeCase> Cases() {
  std::vector<CascadeCase> cases;
  // The FlashInfer #595 shape: 8 members x 8 query heads, 1 KV head, 4000 shared positions.
  cases.push_back(Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16", 1, 8, 128, 16,
                       {{Range(8), 0, 250}}, Own(8, 1, 300, 1)));
  cases.push_back(Case("L1_m17_shared4000_own1to300_kv2_g6_d128_bs16", 2, 6, 128, 16,
                       {{Range(17), 0, 250}}, Own(17, 1, 300, 2)));
  cases.push_back(Case("L1_m3_shared1block_own1to300_kv1_g8_d64_bs16", 1, 8, 64, 16,
                       {{Range(3), 0, 1}}, Own(3, 1, 300, 3)));
  cases.push_back(Case("L1_m1_shared65_own37_kv2_g1_d128_bs5", 2, 1, 128, 5, {{{0}, 0, 13}},
                       {37}));
  cases.push_back(Case("L1_m8_shared0_own1to300_kv1_g8_d128_bs16", 1, 8, 128, 16,
                       {{Range(8), 0, 0}}, Own(8, 1, 300, 5)));
  cases.push_back(Case("L0_b6_no_levels_own0to300_kv2_g8_d64_bs16_padding", 2, 8, 64, 16, {},
                       {300, 0, 17, 1, 64, 129}));
  cases.push_back(Case("L1_m3_shared1000_own1to300_kv2_g1_d64_bs5", 2, 1, 64, 5,
                       {{Range(3), 0, 200}}, Own(3, 1, 300, 7)));
  cases.push_back(Case("L1_m17_shared4000_own1to300_kv1_g8_d128_bs5", 1, 8, 128, 5,
                       {{Range(17), 0, 800}}, Own(17, 1, 300, 8)));
  cases.push_back(Case("L1_m6_shared512_own1to40_kv2_g24_d64_bs16", 2, 24, 64, 16,
                       {{Range(6), 0, 32}}, Own(6, 1, 40, 9)));
  // Nested levels: all 8 over 4000 positions, 4 of them over 800 more.
  cases.push_back(Case("L2_m8_m4_shared4000_800_own1to300_kv2_g8_d128_bs16", 2, 8, 128, 16,
                       {{Range(8), 0, 250}, {{1, 3, 5, 7}, 250, 300}}, Own(8, 1, 300, 10)));
  cases.push_back(Case("L2_m17_m3_shared1000_150_own1to300_kv1_g6_d64_bs5", 1, 6, 64, 5,
                       {{Range(17), 0, 200}, {{16, 0, 9}, 200, 230}}, Own(17, 1, 300, 11)));
  {  // Members and non-members in one batch, sliding window (members fit in it), a padding row.
    std::vector<int> own = Own(12, 1, 300, 12);
    own[8] = 1500;
    own[9] = 999;
    own[10] = 3000;
    own[11] = 0;
    CascadeCase c = Case("L1_m8_shared512_plus_4_nonmembers_window1000_kv1_g8_d128_bs16", 1, 8,
                         128, 16, {{Range(8), 0, 32}}, own);
    c.window = 1000;
    cases.push_back(c);
  }
  {  // 512 rows: 64-row tiles.
    CascadeCase c = Case("L1_m64_shared2000_own1to64_kv1_g8_d128_bs16_tile64", 1, 8, 128, 16,
                         {{Range(64), 0, 125}}, Own(64, 1, 64, 13));
    c.prefix_tile_rows = 64;
    cases.push_back(c);
  }
  {
    CascadeCase c = Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16_tile64", 1, 8, 128, 16,
                         {{Range(8), 0, 250}}, Own(8, 1, 300, 14));
    c.prefix_tile_rows = 64;
    cases.push_back(c);
  }
  {  // Two-level merges of the prefix splits.
    CascadeCase c = Case("L1_m8_shared4000_own1to300_kv1_g8_d64_bs16_40splits", 1, 8, 64, 16,
                         {{Range(8), 0, 250}}, Own(8, 1, 300, 15));
    c.max_prefix_splits = 40;
    cases.push_back(c);
  }
  {  // One split: the prefix tile writes its states directly.
    CascadeCase c = Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16_1split", 1, 8, 128, 16,
                         {{Range(8), 0, 250}}, Own(8, 1, 300, 16));
    c.max_prefix_splits = 1;
    c.max_suffix_splits = 1;
    cases.push_back(c);
  }
  cases.push_back(Case("L1_m4_shared256_own1000to3000_kv1_g8_d128_bs16_long_own", 1, 8, 128, 16,
                       {{Range(4), 0, 16}}, Own(4, 1000, 3000, 17)));
  {
    CascadeCase c = Case("L1_m8_shared160_own1to40_kv1_g8_d64_bs16_sharp_softmax", 1, 8, 64, 16,
                         {{Range(8), 0, 10}}, Own(8, 1, 40, 18));
    c.scale = 1.0f;
    c.q_stddev = 2.0f;
    cases.push_back(c);
  }
  {
    CascadeCase c = Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16_qparts2", 1, 8, 128, 16,
                         {{Range(8), 0, 250}}, Own(8, 1, 300, 19));
    c.q_parts = 2;
    cases.push_back(c);
  }
  {  // bf16 q and P (q_parts 1) on both tile kinds; awkward lengths on 64-row tiles.
    CascadeCase c = Case("L1_m64_shared2000_own1to64_kv1_g8_d128_bs16_tile64_qparts1", 1, 8, 128,
                         16, {{Range(64), 0, 125}}, Own(64, 1, 64, 22));
    c.prefix_tile_rows = 64;
    c.q_parts = 1;
    cases.push_back(c);
    c = Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16_qparts1", 1, 8, 128, 16,
             {{Range(8), 0, 250}}, Own(8, 1, 300, 23));
    c.q_parts = 1;
    cases.push_back(c);
    c = Case("L1_m23_shared1003_own1to97_kv3_g3_d64_bs17_tile64_qparts2", 3, 3, 64, 17,
             {{Range(23), 0, 59}}, Own(23, 1, 97, 24));
    c.prefix_tile_rows = 64;
    c.q_parts = 2;
    cases.push_back(c);
  }
  {  // The fused form's two-tile prefix units (q_parts 1, 64-row tiles): 8 tiles, an odd tile
     // count with 60-row tiles, and nested levels whose inner level's second tile is partly
     // filled, replayed in a graph.
    CascadeCase c = Case("L1_m64_shared2000_own1to64_kv1_g8_d128_bs16_tile64_qparts1_2tiles", 1,
                         8, 128, 16, {{Range(64), 0, 125}}, Own(64, 1, 64, 25));
    c.prefix_tile_rows = 64;
    c.q_parts = 1;
    c.prefix_unit_tiles = 2;
    cases.push_back(c);
    c = Case("L1_m23_shared1003_own1to97_kv3_g6_d64_bs17_tile64_qparts1_2tiles", 3, 6, 64, 17,
             {{Range(23), 0, 59}}, Own(23, 1, 97, 26));
    c.prefix_tile_rows = 64;
    c.q_parts = 1;
    c.prefix_unit_tiles = 2;
    cases.push_back(c);
    std::vector<int> inner;
    for (int m = 0; m < 40 && inner.size() < 13; m += 3) inner.push_back(m);
    c = Case("L2_m40_m13_shared2000_176_own1to97_kv1_g8_d128_bs16_tile64_qparts1_2tiles_graph", 1,
             8, 128, 16, {{Range(40), 0, 125}, {inner, 125, 136}}, Own(40, 1, 97, 27));
    c.prefix_tile_rows = 64;
    c.q_parts = 1;
    c.prefix_unit_tiles = 2;
    c.graph = true;
    cases.push_back(c);
  }
  {
    CascadeCase c = Case("L1_m8_shared4000_own1to300_kv1_g8_d128_bs16_graph", 1, 8, 128, 16,
                         {{Range(8), 0, 250}}, Own(8, 1, 300, 20));
    c.graph = true;
    cases.push_back(c);
  }
  {
    CascadeCase c = Case("L2_m6_m3_shared1000_200_own1to300_kv2_g6_d64_bs5_graph_padlevels", 2,
                         6, 64, 5, {{Range(6), 0, 200}, {{0, 2, 4}, 200, 240}},
                         Own(7, 1, 300, 21));
    c.padding_levels = 2;
    c.graph = true;
    cases.push_back(c);
  }
  return cases;
}

// The test's own harness, on the CPU: for every case (and the replay variants of graph cases) the
// scenario's levels are valid, and the reference cascade composition equals flat
// ref::PagedAttention, finite everywhere (no NaN-poisoned row, block or table entry is read).
TEST(CascadeScenario, ReferenceCascadeEqualsFlatReference) {
  for (const CascadeCase& c : Cases()) {
    const Scenario s = BuildScenario(c, CaseSeed(c));
    const CascadeBounds bounds = CaseBounds(c, s);
    const float scale = c.scale > 0 ? c.scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    const std::vector<float> q =
        Random(static_cast<size_t>(s.batch) * s.n_heads * s.d, 300, c.q_stddev);
    std::vector<std::pair<std::vector<CascadeLevelSpec>, std::vector<int32_t>>> variants = {
        {s.levels, s.kv_lens}};
    if (c.graph) {
      variants.push_back({s.levels, ShorterLengths(s)});
      variants.push_back({ChangedLevels(s), s.kv_lens});
    }
    for (size_t v = 0; v < variants.size(); ++v) {
      const std::string what = c.name + " variant " + std::to_string(v);
      std::vector<int32_t> words;
      ASSERT_EQ(cs::BuildLayout(bounds, variants[v].first, variants[v].second.data(), &words), "")
          << what;
      const Reference r =
          ComputeReference(s, variants[v].first, variants[v].second, q, scale, c.window);
      double worst = 0;
      ExpectStates(r.out, {}, r.flat, {}, s.batch, s.n_heads, s.d, what,
                   [](int b) { return "seq " + std::to_string(b); }, &worst);
      if (HasFatalFailure()) return;
      for (size_t l = 0; l < r.prefix_v.size(); ++l) {
        for (float x : r.prefix_v[l]) ASSERT_TRUE(std::isfinite(x)) << what << " level " << l;
      }
    }
  }
}

#ifdef MOEMESH_HAVE_CUDA

using testing_cuda::CapturedGraph;
using testing_cuda::DeviceBuffer;
using testing_cuda::ToBf16Host;

class CudaCascade : public ::testing::TestWithParam<CascadeCase> {};

TEST_P(CudaCascade, MatchesReferenceAndFlat) {
  MM_REQUIRE_CUDA();
  const CascadeCase& c = GetParam();
  const Scenario s = BuildScenario(c, CaseSeed(c));
  const float scale = c.scale > 0 ? c.scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int d = s.d, nh = s.n_heads, batch = s.batch;
  const size_t row = static_cast<size_t>(nh) * d;

  const CascadeBounds bounds = CaseBounds(c, s);
  std::vector<int32_t> words;
  const std::string error = cuda::BuildCascadeLayout(bounds, s.levels, s.kv_lens.data(), &words);
  ASSERT_EQ(error, "") << c.name;

  DeviceBuffer<__nv_bfloat16> k_pool(ToBf16Host(s.k_hnd)), v_pool(ToBf16Host(s.v_hnd));
  DeviceBuffer<int32_t> tables(s.tables), lens(s.kv_lens), layout(words);
  const std::vector<float> q1 = Random(batch * row, 300, c.q_stddev);
  const std::vector<float> q2 = Random(batch * row, 301, c.q_stddev);
  const size_t slot_rows = static_cast<size_t>(std::max(bounds.max_levels, 1)) *
                           bounds.max_members * nh;
  DeviceBuffer<float> q(q1), out(batch * row), lse(batch * nh), prefix_v(slot_rows * d),
      prefix_lse(slot_rows);

  cuda::PagedKv cache;
  cache.k = k_pool.ptr;
  cache.v = v_pool.ptr;
  cache.num_blocks = s.num_blocks;
  cache.block_size = s.bs;
  cache.kv_heads = s.kv_heads;
  cache.head_dim = d;
  cuda::CascadeParams p;
  p.q = q.ptr;
  p.out = out.ptr;
  p.lse = lse.ptr;
  p.block_tables = tables.ptr;
  p.kv_lens = lens.ptr;
  p.layout = layout.ptr;
  p.prefix_v = prefix_v.ptr;
  p.prefix_lse = prefix_lse.ptr;
  p.bounds = bounds;
  p.max_blocks_per_seq = s.max_blocks;
  p.scale = scale;
  p.window = c.window;
  p.prefix_tile_rows = c.prefix_tile_rows;
  p.max_prefix_splits = c.max_prefix_splits;
  p.max_suffix_splits = c.max_suffix_splits;
  p.q_parts = c.q_parts;
  p.prefix_unit_tiles = c.prefix_unit_tiles;

  const double tol = CaseTolerance(c);
  const size_t ws_bytes = cuda::CascadeWorkspaceBytes(cache, p);
  DeviceBuffer<unsigned char> ws(ws_bytes);  // zero-filled
  for (cs::Form form : {cs::Form::kPrefixPass, cs::Form::kSuffixPass, cs::Form::kFused}) {
    const cuda::CascadePlanInfo info = cuda::DescribeCascadePlan(cache, p, form);
    std::printf("  %s form %d: prefix tile %d rows x %d tiles (%d per CTA) x %d splits, suffix %d "
                "splits, %d CTAs, cluster %d; workspace %zu bytes\n",
                c.name.c_str(), static_cast<int>(form), info.prefix_tile_rows, info.prefix_tiles,
                info.prefix_unit_tiles, info.prefix_splits, info.suffix_splits, info.ctas,
                info.cluster, ws_bytes);
  }

  // Runs one form (poisoning every output first) and checks it against the references.
  // (The fused launch writes no prefix states: prefix_states false.)
  auto check = [&](const std::string& what, const std::vector<CascadeLevelSpec>& levels,
                   const std::vector<int32_t>& kv_lens, const std::vector<float>& qh,
                   const std::function<void()>& run, bool prefix_states) {
    MM_CUDA_CHECK(cudaMemcpy(q.ptr, qh.data(), qh.size() * 4, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemset(out.ptr, 0xff, out.n * 4));  // NaN: every output must be written
    MM_CUDA_CHECK(cudaMemset(lse.ptr, 0xff, lse.n * 4));
    MM_CUDA_CHECK(cudaMemset(prefix_v.ptr, 0xff, prefix_v.n * 4));
    MM_CUDA_CHECK(cudaMemset(prefix_lse.ptr, 0xff, prefix_lse.n * 4));
    run();
    MM_CUDA_CHECK(cudaDeviceSynchronize());
    const Reference want = ComputeReference(s, levels, kv_lens, qh, scale, c.window);
    const std::vector<float> got_v = prefix_v.ToHost(), got_lse = prefix_lse.ToHost();
    double worst_prefix = 0, worst_out = 0, worst_flat = 0;
    for (size_t l = 0; prefix_states && l < levels.size(); ++l) {
      const int m = static_cast<int>(levels[l].members.size());
      const size_t first = l * bounds.max_members;
      const std::vector<float> v(got_v.begin() + first * row, got_v.begin() + (first + m) * row);
      const std::vector<float> ls(got_lse.begin() + first * nh,
                                  got_lse.begin() + (first + m) * nh);
      ExpectStates(v, ls, want.prefix_v[l], want.prefix_lse[l], m, nh, d,
                   what + " prefix state of level " + std::to_string(l),
                   [&](int i) {
                     return "member " + std::to_string(i) + " (seq " +
                            std::to_string(levels[l].members[i]) + ")";
                   },
                   &worst_prefix, tol);
      if (HasFatalFailure()) return;
    }
    const std::vector<float> got_out = out.ToHost(), got_out_lse = lse.ToHost();
    auto seq_name = [](int b) { return "seq " + std::to_string(b); };
    ExpectStates(got_out, got_out_lse, want.out, want.lse, batch, nh, d,
                 what + " vs ref cascade", seq_name, &worst_out, tol);
    if (HasFatalFailure()) return;
    ExpectStates(got_out, {}, want.flat, {}, batch, nh, d, what + " vs flat ref::PagedAttention",
                 seq_name, &worst_flat, tol);
    if (HasFatalFailure()) return;
    std::printf("  %s: max |err| / (1 + |want|): prefix %.2e, vs cascade %.2e, vs flat %.2e\n",
                what.c_str(), worst_prefix, worst_out, worst_flat);
  };

  // The fused launch's shapes (CascadeParams::cluster): the flat grid, automatic, and, where the
  // bounds allow clusters, clusters of 2 and 4 CTAs (the most rows and pieces per CTA).
  std::vector<int> shapes = {1, 0};
  if (cs::ClusterUnsupported(bounds, c.kv_heads).empty()) {
    shapes.push_back(2);
    shapes.push_back(4);
  }
  auto fused_name = [&](int shape) {
    p.cluster = shape;
    const int size = cuda::DescribeCascadePlan(cache, p, cs::Form::kFused).cluster;
    return "fused (cluster " + std::to_string(shape) + ": " +
           (size > 0 ? std::to_string(size) + " CTAs)" : "flat grid)");
  };

  // Each form twice on one workspace (the second run proves the merge counters were reset).
  for (int pass = 0; pass < 2; ++pass) {
    const std::vector<float>& qh = pass == 0 ? q1 : q2;
    p.cluster = 0;
    check(c.name + " two-launch run " + std::to_string(pass + 1), s.levels, s.kv_lens, qh, [&] {
      cuda::CascadeAttention(cache, p, cuda::CascadeForm::kTwoLaunch, ws.ptr, ws_bytes, nullptr);
    }, true);
    if (HasFatalFailure()) return;
    for (int shape : shapes) {
      const std::string name = fused_name(shape);
      check(c.name + " " + name + " run " + std::to_string(pass + 1), s.levels, s.kv_lens, qh,
            [&] {
              cuda::CascadeAttention(cache, p, cuda::CascadeForm::kFused, ws.ptr, ws_bytes,
                                     nullptr);
            },
            false);
      if (HasFatalFailure()) return;
    }
  }

  if (!c.graph) return;
  // Captured once per form; replayed with new queries and shorter own ranges (lengths read on
  // the device), then with a changed layout: the last level loses its last member (which then
  // attends those positions itself) and, when it has several blocks, its last block.
  const std::vector<int32_t> lens2 = ShorterLengths(s);
  const std::vector<CascadeLevelSpec> levels3 = ChangedLevels(s);
  std::vector<int32_t> words3;
  ASSERT_EQ(cuda::BuildCascadeLayout(bounds, levels3, s.kv_lens.data(), &words3), "") << c.name;
  cudaStream_t stream;
  MM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<std::pair<cuda::CascadeForm, int>> forms = {{cuda::CascadeForm::kTwoLaunch, 0}};
  for (int shape : shapes) forms.push_back({cuda::CascadeForm::kFused, shape});
  for (const auto& [form, shape] : forms) {
    const std::string form_name =
        form == cuda::CascadeForm::kFused ? fused_name(shape) : "two-launch";
    p.cluster = shape;
    const bool states = form == cuda::CascadeForm::kTwoLaunch;
    const CapturedGraph graph(stream, [&] {
      cuda::CascadeAttention(cache, p, form, ws.ptr, ws_bytes, stream);
    });
    auto replay = [&] {
      graph.Launch(stream);
      MM_CUDA_CHECK(cudaStreamSynchronize(stream));
    };
    MM_CUDA_CHECK(cudaMemcpy(lens.ptr, lens2.data(), lens2.size() * 4, cudaMemcpyHostToDevice));
    check(c.name + " " + form_name + " graph replay, new lengths", s.levels, lens2, q2, replay,
          states);
    if (!HasFatalFailure()) {
      MM_CUDA_CHECK(
          cudaMemcpy(lens.ptr, s.kv_lens.data(), s.kv_lens.size() * 4, cudaMemcpyHostToDevice));
      MM_CUDA_CHECK(
          cudaMemcpy(layout.ptr, words3.data(), words3.size() * 4, cudaMemcpyHostToDevice));
      check(c.name + " " + form_name + " graph replay, new levels", levels3, s.kv_lens, q1,
            replay, states);
      MM_CUDA_CHECK(
          cudaMemcpy(layout.ptr, words.data(), words.size() * 4, cudaMemcpyHostToDevice));
    }
    if (HasFatalFailure()) break;
  }

  // Overlapped launches (CascadeParams::overlap, the default) right after a kernel that, after a
  // delay, writes the queries, lengths, layout and block tables: until it ends the device holds
  // other queries, shorter lengths, the changed levels' layout and tables of block 0, so a call
  // that read anything before waiting for it fails the check. Each form runs twice in a row (the
  // second call overlapping the first, on the same workspace), eagerly and as a graph replay.
  const std::vector<int32_t> zero_tables(s.tables.size(), 0);
  const std::vector<float> q_old = Random(batch * row, 302, c.q_stddev);
  DeviceBuffer<float> q_src(q.n);
  DeviceBuffer<int32_t> lens_src(s.kv_lens), layout_src(words), tables_src(s.tables);
  const cuda_test::CopyRegion regions[4] = {
      {q.ptr, q_src.ptr, q.n * sizeof(float)},
      {lens.ptr, lens_src.ptr, lens.n * sizeof(int32_t)},
      {layout.ptr, layout_src.ptr, layout.n * sizeof(int32_t)},
      {tables.ptr, tables_src.ptr, tables.n * sizeof(int32_t)}};
  auto stale = [&](const std::vector<float>& qh) {  // the racing writer's sources and old contents
    MM_CUDA_CHECK(cudaMemcpy(q_src.ptr, qh.data(), qh.size() * 4, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemcpy(q.ptr, q_old.data(), q_old.size() * 4, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemcpy(lens.ptr, lens2.data(), lens2.size() * 4, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(
        cudaMemcpy(layout.ptr, words3.data(), words3.size() * 4, cudaMemcpyHostToDevice));
    MM_CUDA_CHECK(cudaMemcpy(tables.ptr, zero_tables.data(), zero_tables.size() * 4,
                             cudaMemcpyHostToDevice));
  };
  for (const auto& [form, shape] : forms) {
    const std::string form_name =
        (form == cuda::CascadeForm::kFused ? fused_name(shape) : "two-launch") + " overlapped";
    p.cluster = shape;
    ASSERT_TRUE(p.overlap) << "overlapped launches are the default";
    const bool states = form == cuda::CascadeForm::kTwoLaunch;
    auto enqueue = [&] {
      cuda_test::DelayedCopy(regions, 4, 300, stream);
      cuda::CascadeAttention(cache, p, form, ws.ptr, ws_bytes, stream);
      cuda::CascadeAttention(cache, p, form, ws.ptr, ws_bytes, stream);
    };
    check(c.name + " " + form_name + " eager", s.levels, s.kv_lens, q2, [&] {
      stale(q2);
      enqueue();
    }, states);
    if (HasFatalFailure()) break;
    const CapturedGraph graph(stream, enqueue);
    check(c.name + " " + form_name + " graph replay", s.levels, s.kv_lens, q1, [&] {
      stale(q1);
      graph.Launch(stream);
    }, states);
    if (HasFatalFailure()) break;
  }
  MM_CUDA_CHECK(cudaStreamDestroy(stream));
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaCascade, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<CascadeCase>& info) {
                           return info.param.name;
                         });

#else  // !MOEMESH_HAVE_CUDA

TEST(CudaCascade, MatchesReferenceAndFlat) { MM_REQUIRE_CUDA(); }

#endif  // MOEMESH_HAVE_CUDA

}  // namespace
}  // namespace moemesh
