// Benchmark helper: synthetic MoE routing for one decode/prefill step, and its grouping by
// expert. Each token picks top-k distinct experts, drawn without replacement from a Zipf-like
// popularity (p_e ~ 1 / rank^skew, ranks shuffled per step as each layer has its own hot
// experts); the same (seed, step) always gives the same routing. Not the model's router.
// Thread-safety: plain functions on caller-owned data.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace moemesh::bench {

struct StepRouting {
  int tokens = 0;
  int top_k = 0;
  std::vector<int32_t> ids;     // [tokens * top_k], distinct per token
  std::vector<float> weights;   // [tokens * top_k], positive, summing to 1 per token
};

inline StepRouting MakeRouting(int experts, int top_k, int tokens, double skew, uint64_t seed,
                               uint64_t step) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + step * 0xD1B54A32D192ED03ull + 1);
  std::vector<int> rank(experts);
  std::iota(rank.begin(), rank.end(), 0);
  std::shuffle(rank.begin(), rank.end(), rng);
  std::vector<double> log_p(experts);
  for (int e = 0; e < experts; ++e) log_p[e] = -skew * std::log(rank[e] + 1.0);
  StepRouting r;
  r.tokens = tokens;
  r.top_k = top_k;
  r.ids.resize(static_cast<size_t>(tokens) * top_k);
  r.weights.resize(r.ids.size());
  std::uniform_real_distribution<double> u(1e-12, 1.0);
  std::vector<std::pair<double, int>> keys(experts);
  for (int t = 0; t < tokens; ++t) {
    // Gumbel top-k: the k largest log p + Gumbel noise are a draw without replacement.
    for (int e = 0; e < experts; ++e) keys[e] = {log_p[e] - std::log(-std::log(u(rng))), e};
    std::partial_sort(keys.begin(), keys.begin() + top_k, keys.end(),
                      [](const auto& a, const auto& b) { return a.first > b.first; });
    double total = 0;
    for (int j = 0; j < top_k; ++j) total += std::exp(keys[j].first - keys[0].first);
    for (int j = 0; j < top_k; ++j) {
      r.ids[t * top_k + j] = keys[j].second;
      r.weights[t * top_k + j] = static_cast<float>(std::exp(keys[j].first - keys[0].first) / total);
    }
  }
  return r;
}

// Routes grouped by expert, experts in first-touch order: group g is expert expert[g], its
// routes are route[begin[g]..begin[g+1]) (route r = token r / top_k, choice r % top_k), tokens
// ascending. pos[r] is where route r landed.
struct ExpertGroups {
  std::vector<int32_t> expert;
  std::vector<int64_t> begin;
  std::vector<int32_t> route;
  std::vector<int64_t> pos;
  int64_t count() const { return static_cast<int64_t>(expert.size()); }
  int64_t tokens(int64_t g) const { return begin[g + 1] - begin[g]; }
};

inline ExpertGroups GroupByExpert(const StepRouting& r, int experts) {
  ExpertGroups g;
  const int64_t routes = static_cast<int64_t>(r.ids.size());
  std::vector<int64_t> count(experts, 0);
  std::vector<int32_t> group_of(experts, -1);
  for (int64_t i = 0; i < routes; ++i) {
    const int32_t e = r.ids[i];
    if (group_of[e] < 0) {
      group_of[e] = static_cast<int32_t>(g.expert.size());
      g.expert.push_back(e);
    }
    ++count[e];
  }
  g.begin.assign(g.expert.size() + 1, 0);
  for (size_t k = 0; k < g.expert.size(); ++k) g.begin[k + 1] = g.begin[k] + count[g.expert[k]];
  std::vector<int64_t> cursor(g.begin.begin(), g.begin.end() - 1);
  g.route.resize(routes);
  g.pos.resize(routes);
  for (int64_t i = 0; i < routes; ++i) {
    const int64_t p = cursor[group_of[r.ids[i]]]++;
    g.route[p] = static_cast<int32_t>(i);
    g.pos[i] = p;
  }
  return g;
}

}  // namespace moemesh::bench
