// Token sampling on the GPU with the semantics of moemesh::Sampler (model/sampling/sampling.h).
//
// One block per row. Phase 0 reads the logits once: NaN -> -inf, the penalties (penalised ids are
// marked in a shared bitmap and recomputed from the raw logit), temperature; it writes the
// tempered scores t (fp64, as the reference computes them) to the row's scratch and reduces the
// max, the argmax and, when asked, the raw log-sum-exp for the logprob.
//
// Filters never sort the row. Tokens are ranked by a composite integer key (order-preserving bits
// of t, then the complement of the id, so ties go to lower ids); top-k and top-p find the last
// kept token by radix selection on that key: 11-bit digits, one counting (top-k) or mass-summing
// (top-p) pass over the row per digit, masses in exact fixed point so the choice is independent of
// summation order. As soon as the tokens at or above the selected bin number <= kSmall they are
// gathered into shared memory and sorted, and the remaining filters and the draw run there
// ("small mode"); otherwise the kept set stays a key threshold over the row ("row mode") and the
// draw is an ordered block scan over the row in token order.
#include "kernels/cuda/sampling.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/sampling_block.cuh"

namespace moemesh::cuda {
namespace {

using sampling_detail::Append;
using sampling_detail::BitonicSort;
using sampling_detail::BlockExclusiveScan;
using sampling_detail::BlockReduce;
using sampling_detail::HistAdd;
using sampling_detail::IdAsc;
using sampling_detail::KeyDescIdAsc;
using sampling_detail::kThreads;
using sampling_detail::MassToDouble;
using sampling_detail::MassValue;
using sampling_detail::MaxOp;
using sampling_detail::MinOp;
using sampling_detail::OrderedKey;
using sampling_detail::SumOp;
using sampling_detail::ToMass;
using sampling_detail::u128;
using sampling_detail::u64;

constexpr int kItems = 4;                   // consecutive elements per thread in ordered scans
constexpr int kSmall = kThreads * kItems;   // capacity of the shared token list
constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kBinsPerThread = kBins / kThreads;
constexpr int kMaxSlots = 256;              // row scratch slots: grid = min(rows, kMaxSlots)
constexpr int64_t kMaxVocab = int64_t{1} << 20;
constexpr double kInf = std::numeric_limits<double>::infinity();
static_assert(kBins % kThreads == 0, "bins are split evenly over threads");

struct Hist {
  uint32_t count[kBins];
  u64 mass_hi[kBins];
  u64 mass_lo[kBins];
};
struct List {
  u64 key[kSmall];
  double e[kSmall];
  int32_t id[kSmall];
};
union BigShared {  // a histogram and the token list are never live at the same time
  Hist hist;
  List list;
};

// What one block knows about the row it is sampling (uniform across the block).
struct Row {
  const float* logits;
  double* t;  // scratch: tempered, penalised scores
  int vocab;
  int id_bits;       // composite key = OrderedKey(t) << id_bits | (id_mask - id)
  uint32_t id_mask;
  double m;     // max t
  bool m_inf;   // m == +inf: the +inf tokens share the mass (weights 1), all others weigh 0
};

__device__ __forceinline__ u128 Composite(const Row& r, double t, int id) {
  return (static_cast<u128>(OrderedKey(t)) << r.id_bits) |
         static_cast<u128>(r.id_mask - static_cast<uint32_t>(id));
}
__device__ __forceinline__ u128 CompositeOfKey(const Row& r, u64 key, int id) {
  return (static_cast<u128>(key) << r.id_bits) |
         static_cast<u128>(r.id_mask - static_cast<uint32_t>(id));
}

// Unnormalised probability exp(t - m) (the reference's Softmax numerator).
__device__ __forceinline__ double Weight(const Row& r, double t) {
  if (r.m_inf) return t == kInf ? 1.0 : 0.0;
  return exp(t - r.m);
}

__device__ __forceinline__ double Canonical(double t) { return t == 0.0 ? 0.0 : t; }  // -0 -> +0

// model/sampling/penalties.cc on one score, without FMA contraction (the reference is built
// without FMA): repetition s > 0 ? s / p : s * p, then s -= frequency * count + presence.
__device__ __forceinline__ double PenalisedScore(float x, int32_t count, const SampleRowParams& p,
                                                 bool rep_on, bool freq_presence_on) {
  double s = isnan(x) ? -kInf : static_cast<double>(x);
  if (rep_on) {
    const double penalty = p.repetition_penalty;
    s = s > 0 ? __ddiv_rn(s, penalty) : __dmul_rn(s, penalty);
  }
  if (freq_presence_on && count > 0) {
    const double sub = __dadd_rn(__dmul_rn(static_cast<double>(p.frequency_penalty),
                                           static_cast<double>(count)),
                                 static_cast<double>(p.presence_penalty));
    s = __dsub_rn(s, sub);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Phase 0.

struct Phase0Stats {  // per-thread partials, combined by BlockReduce
  double best_t;
  double z_max;
  int best_id;
  int raw_inf;
  int z_inf;
  float raw_max;
};
struct Phase0Op {
  __device__ Phase0Stats operator()(Phase0Stats a, Phase0Stats b) const {
    Phase0Stats r = a;
    if (b.best_t > a.best_t || (b.best_t == a.best_t && b.best_id < a.best_id)) {
      r.best_t = b.best_t;
      r.best_id = b.best_id;
    }
    r.z_max = fmax(a.z_max, b.z_max);
    r.raw_inf = a.raw_inf + b.raw_inf;
    r.z_inf = a.z_inf + b.z_inf;
    r.raw_max = fmaxf(a.raw_max, b.raw_max);
    return r;
  }
};
struct Sums2 {
  double a;
  double b;
};
struct Sums2Op {
  __device__ Sums2 operator()(Sums2 x, Sums2 y) const { return {x.a + y.a, x.b + y.b}; }
};

struct Phase0Result {
  double m;
  int best_id;
  double z;         // sum of Weight over the row (valid when asked for)
  float raw_max;    // largest finite raw logit (-inf if none)
  double raw_sum;   // sum of exp(x - raw_max) over finite raw logits
  int raw_inf;      // number of +inf raw logits
};

// Online (running-max) sum of exp(v - max) over finite v, +inf counted apart.
__device__ __forceinline__ void OnlineAdd(double v, double& max, double& sum, int& inf_count) {
  if (v == kInf) {
    ++inf_count;
  } else if (v > -kInf) {
    if (v > max) {
      sum = sum * exp(max - v) + 1.0;
      max = v;
    } else {
      sum += exp(v - max);
    }
  }
}
__device__ __forceinline__ void OnlineAddRaw(float x, float& max, double& sum, int& inf_count) {
  if (isinf(x)) {
    inf_count += x > 0;
  } else if (!isnan(x)) {
    if (x > max) {
      sum = sum * exp(static_cast<double>(max) - static_cast<double>(x)) + 1.0;
      max = x;
    } else {
      sum += static_cast<double>(expf(x - max));  // accurate to ~1e-7 relative: logprob only
    }
  }
}

__device__ __forceinline__ void Consider(Phase0Stats& st, double t, int id) {
  if (t > st.best_t || (t == st.best_t && id < st.best_id)) {
    st.best_t = t;
    st.best_id = id;
  }
}

// flags: what phase 0 must produce besides max / argmax.
struct Phase0Flags {
  bool greedy;      // keep scores untempered, write no scratch
  bool want_lp;     // raw log-sum-exp
  bool want_z;      // online sum of weights
  bool hist1;       // first-digit histogram for top-k
  bool penalties;   // penalty entries present and some penalty active
  bool rep_on;
  bool freq_presence_on;
};

__device__ Phase0Result Phase0(const Row& r, const SampleRowParams& p, PenaltyTokens pen,
                               const Phase0Flags& f, Hist& hist, uint32_t* bitmap) {
  const int tid = static_cast<int>(threadIdx.x);
  const int words = (r.vocab + 31) / 32;
  const double temperature = p.temperature;
  const int lo1 = 64 + r.id_bits - kDigitBits;  // first radix digit: composite bits [lo1, W)
  if (f.penalties) {
    for (int w = tid; w < words; w += kThreads) bitmap[w] = 0;
  }
  if (f.hist1) {
    for (int b = tid; b < kBins; b += kThreads) hist.count[b] = 0;
  }
  __syncthreads();
  if (f.penalties) {
    for (int j = p.penalty_begin + tid; j < p.penalty_end; j += kThreads) {
      const int id = pen.ids[j];
      if (id >= 0 && id < r.vocab) atomicOr(&bitmap[id >> 5], 1u << (id & 31));
    }
  }
  __syncthreads();

  Phase0Stats st{-kInf, -kInf, INT_MAX, 0, 0, -std::numeric_limits<float>::infinity()};
  double z_sum = 0.0;
  double raw_sum = 0.0;
  auto tempered = [&](double s) {  // s / 1 == s exactly: skip the fp64 division then
    return f.greedy ? s : Canonical(temperature == 1.0 ? s : s / temperature);
  };
  auto record = [&](double t, int id, bool& hist_active, uint32_t& bin) {
    if (!f.greedy) r.t[id] = t;
    Consider(st, t, id);
    if (f.want_z) OnlineAdd(t, st.z_max, z_sum, st.z_inf);
    if (f.hist1) {
      hist_active = true;
      bin = static_cast<uint32_t>(Composite(r, t, id) >> lo1) & (kBins - 1);
    }
  };

  for (int base = 0; base < r.vocab; base += kThreads) {  // uniform trip count (HistAdd)
    const int i = base + tid;
    bool active = false;
    uint32_t bin = 0;
    if (i < r.vocab) {
      const float x = r.logits[i];
      if (f.want_lp) OnlineAddRaw(x, st.raw_max, raw_sum, st.raw_inf);
      const bool penalised = f.penalties && ((bitmap[i >> 5] >> (i & 31)) & 1u);
      if (!penalised) record(tempered(isnan(x) ? -kInf : static_cast<double>(x)), i, active, bin);
    }
    if (f.hist1) HistAdd<false>(active, bin, 0.0, hist.count, nullptr, nullptr);
  }
  if (f.penalties) {
    __syncthreads();  // the main loop has read the bitmap
    for (int base = p.penalty_begin; base < p.penalty_end; base += kThreads) {
      const int j = base + tid;
      bool active = false;
      uint32_t bin = 0;
      if (j < p.penalty_end) {
        const int id = pen.ids[j];
        if (id >= 0 && id < r.vocab) {
          // The first entry to clear the bit owns the id (ids are distinct by contract; this
          // keeps a duplicate from being counted twice).
          const uint32_t bit = 1u << (id & 31);
          if (atomicAnd(&bitmap[id >> 5], ~bit) & bit) {
            const double s = PenalisedScore(r.logits[id], pen.generated_counts[j], p, f.rep_on,
                                            f.freq_presence_on);
            record(tempered(s), id, active, bin);
          }
        }
      }
      if (f.hist1) HistAdd<false>(active, bin, 0.0, hist.count, nullptr, nullptr);
    }
  }

  const Phase0Stats all = BlockReduce(st, Phase0Op());
  Sums2 part{0.0, 0.0};
  if (f.want_lp && st.raw_max > -std::numeric_limits<float>::infinity()) {
    part.a = raw_sum * exp(static_cast<double>(st.raw_max) - static_cast<double>(all.raw_max));
  }
  if (f.want_z && st.z_max > -kInf) part.b = z_sum * exp(st.z_max - all.z_max);
  const Sums2 sums = BlockReduce(part, Sums2Op());

  Phase0Result out;
  out.m = all.best_t;
  out.best_id = all.best_id;
  out.z = all.z_inf > 0 ? static_cast<double>(all.z_inf) : sums.b;
  out.raw_max = all.raw_max;
  out.raw_sum = sums.a;
  out.raw_inf = all.raw_inf;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Radix selection of the last kept token (top-k by count, top-p by mass).

struct ScanAcc {
  u128 mass;
  u64 count;
};
struct ScanAccOp {
  __device__ ScanAcc operator()(ScanAcc a, ScanAcc b) const {
    return {a.mass + b.mass, a.count + b.count};
  }
};

struct Crossing {
  u128 before_mass;  // mass of the selection set strictly above the bin
  u128 bin_mass;
  u64 before_count;
  u64 bin_count;
  int bin;
};

// Walks the bins from the top; returns the bin where the running count reaches `need` (kMass
// false) or the running mass reaches `target` (kMass true), starting from `above`.
template <bool kMass>
__device__ Crossing FindCrossing(const Hist& h, int nb, ScanAcc above, u64 need, u128 target) {
  __shared__ Crossing result;
  const int tid = static_cast<int>(threadIdx.x);
  if (tid == 0) result.bin = -1;
  ScanAcc local{0, 0};
  for (int q = 0; q < kBinsPerThread; ++q) {
    const int idx = tid * kBinsPerThread + q;
    if (idx >= nb) break;
    const int bin = nb - 1 - idx;
    local.count += h.count[bin];
    if (kMass) local.mass += MassValue(h.mass_hi[bin], h.mass_lo[bin]);
  }
  ScanAcc total;
  const ScanAcc excl = BlockExclusiveScan(local, ScanAccOp(), ScanAcc{0, 0}, &total);
  ScanAcc cum = ScanAccOp()(above, excl);
  for (int q = 0; q < kBinsPerThread; ++q) {
    const int idx = tid * kBinsPerThread + q;
    if (idx >= nb) break;
    const int bin = nb - 1 - idx;
    const u64 c = h.count[bin];
    const u128 m = kMass ? MassValue(h.mass_hi[bin], h.mass_lo[bin]) : 0;
    const bool hit = kMass ? (cum.mass < target && target <= cum.mass + m)
                           : (cum.count < need && need <= cum.count + c);
    if (hit) result = Crossing{cum.mass, m, cum.count, c, bin};
    cum.count += c;
    cum.mass += m;
  }
  __syncthreads();
  const Crossing out = result;
  if (out.bin < 0) __trap();  // cannot happen: need <= set size, target <= set mass
  return out;
}

// ceil(top_p * z) for z in units of 2^-80 and top_p in (0, 1), exactly.
__device__ u128 TopPTarget(u128 z, float top_p) {
  int exp2 = 0;
  const float mant = frexpf(top_p, &exp2);  // top_p = mant * 2^exp2, mant in [0.5, 1)
  const u128 m24 = static_cast<u128>(static_cast<uint32_t>(ldexpf(mant, 24)));
  const int shift = 24 - exp2;  // >= 24
  const u128 prod = z * m24;    // z < 2^100, m24 < 2^24
  if (shift >= 128) return prod != 0 ? 1 : 0;
  const u128 q = prod >> shift;
  return q + (((q << shift) != prod) ? 1 : 0);
}

// Gathers the tokens with lower <= composite <= upper into the shared list (unsorted); returns
// how many there are (the caller guarantees <= kSmall).
__device__ int Collect(const Row& r, List& list, u128 lower, u128 upper) {
  __shared__ int size;
  if (threadIdx.x == 0) size = 0;
  __syncthreads();
  for (int base = 0; base < r.vocab; base += kThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    bool take = false;
    double t = 0.0;
    if (i < r.vocab) {
      t = r.t[i];
      const u128 c = Composite(r, t, i);
      take = c >= lower && c <= upper;
    }
    Append(take, OrderedKey(t), i, take ? Weight(r, t) : 0.0, &size, kSmall, list.key, list.id,
           list.e);
  }
  __syncthreads();
  const int n = size;
  if (n > kSmall) __trap();  // cannot happen: the histogram counted them
  return n;
}

// First list position j < n (list in key order) where start + sum of masses [0, j] >= target;
// *mass_through gets that sum.
__device__ int FirstMassCrossing(const List& list, int n, u128 start, u128 target,
                                 u128* mass_through) {
  __shared__ u128 crossing_mass;
  const int tid = static_cast<int>(threadIdx.x);
  u128 m[kItems];
  u128 local = 0;
  for (int q = 0; q < kItems; ++q) {
    const int j = tid * kItems + q;
    m[q] = 0;
    if (j < n) {
      const auto parts = ToMass(list.e[j]);
      m[q] = MassValue(parts.hi, parts.lo);
    }
    local += m[q];
  }
  u128 total;
  u128 cum = start + BlockExclusiveScan(local, SumOp(), static_cast<u128>(0), &total);
  int found = INT_MAX;
  u128 found_mass = 0;
  for (int q = 0; q < kItems; ++q) {
    const int j = tid * kItems + q;
    if (j >= n) break;
    cum += m[q];
    if (cum >= target) {
      found = j;
      found_mass = cum;
      break;
    }
  }
  // Every thread after the crossing also passes the test: the first position wins.
  const int idx = BlockReduce(found, MinOp());
  if (idx == INT_MAX) {  // cannot happen (the set's mass reaches target); keep the whole list
    *mass_through = start + total;
    return n - 1;
  }
  if (tid == idx / kItems) crossing_mass = found_mass;  // the owner of idx found exactly idx
  __syncthreads();
  *mass_through = crossing_mass;
  return idx;
}

struct Selection {
  bool small;     // the shared list holds every token of the set at or above `pivot`, sorted
  int keep;       // small: the kept prefix length of the list
  u128 pivot;     // !small: composite of the last kept token
  u128 mass;      // !small, kMass: mass of the kept tokens (units of 2^-80)
};

// Among the tokens with composite >= floor, finds the last one of the prefix (in descending
// composite order) holding `need` tokens (kMass false) or reaching the mass ceil(top_p * total)
// (kMass true). hist_ready: the first digit's count histogram was built by phase 0 (floor 0).
template <bool kMass>
__device__ Selection Select(const Row& r, BigShared& big, u128 floor, u64 need, float top_p,
                            bool hist_ready) {
  const int tid = static_cast<int>(threadIdx.x);
  const int width = 64 + r.id_bits;
  u128 prefix = 0;
  int hi = width;
  ScanAcc above{0, 0};
  u128 target = 0;
  for (bool first = true;; first = false) {
    const int lo = hi > kDigitBits ? hi - kDigitBits : 0;
    const int bits = hi - lo;
    const int nb = 1 << bits;
    if (!(first && hist_ready)) {
      for (int b = tid; b < kBins; b += kThreads) {
        big.hist.count[b] = 0;
        big.hist.mass_hi[b] = 0;
        big.hist.mass_lo[b] = 0;
      }
      __syncthreads();
      for (int base = 0; base < r.vocab; base += kThreads) {
        const int i = base + tid;
        bool active = false;
        uint32_t bin = 0;
        double e = 0.0;
        if (i < r.vocab) {
          const double t = r.t[i];
          const u128 c = Composite(r, t, i);
          if (c >= floor && (c >> hi) == prefix) {
            active = true;
            bin = static_cast<uint32_t>(c >> lo) & static_cast<uint32_t>(nb - 1);
            if (kMass) e = Weight(r, t);
          }
        }
        HistAdd<kMass>(active, bin, e, big.hist.count, big.hist.mass_hi, big.hist.mass_lo);
      }
      __syncthreads();
    }
    if (kMass && first) {
      u128 local = 0;
      for (int b = tid; b < kBins; b += kThreads) {
        local += MassValue(big.hist.mass_hi[b], big.hist.mass_lo[b]);
      }
      target = TopPTarget(BlockReduce(local, SumOp()), top_p);
    }
    const Crossing x = FindCrossing<kMass>(big.hist, nb, above, need, target);
    const u128 bin_prefix = (prefix << bits) | static_cast<u128>(x.bin);
    const u128 bin_lo = bin_prefix << lo;
    const u128 bin_hi = bin_lo | ((static_cast<u128>(1) << lo) - 1);
    const u128 lower = bin_lo > floor ? bin_lo : floor;
    if (x.before_count + x.bin_count <= static_cast<u64>(kSmall)) {
      // Everything from the top of the set down to this bin fits: gather it and go small.
      const int n = Collect(r, big.list, lower, ~static_cast<u128>(0));
      BitonicSort(big.list.key, big.list.id, big.list.e, n, KeyDescIdAsc());
      Selection s{true, 0, 0, 0};
      if (kMass) {
        u128 through;
        s.keep = FirstMassCrossing(big.list, n, 0, target, &through) + 1;
      } else {
        s.keep = static_cast<int>(need);
      }
      return s;
    }
    const bool resolve = x.bin_count <= static_cast<u64>(kSmall) &&
                         (kMass ? x.before_count >= static_cast<u64>(kSmall)
                                : need > static_cast<u64>(kSmall));
    if (resolve) {
      // The kept set is large: find its last token inside this bin and stay in row mode.
      const int n = Collect(r, big.list, lower, bin_hi);
      BitonicSort(big.list.key, big.list.id, big.list.e, n, KeyDescIdAsc());
      Selection s{false, 0, 0, 0};
      int idx;
      if (kMass) {
        idx = FirstMassCrossing(big.list, n, x.before_mass, target, &s.mass);
      } else {
        idx = static_cast<int>(need - x.before_count) - 1;
      }
      s.pivot = CompositeOfKey(r, big.list.key[idx], big.list.id[idx]);
      __syncthreads();  // everyone has read the list before it is reused
      return s;
    }
    prefix = bin_prefix;
    hi = lo;
    above = ScanAcc{x.before_mass, x.before_count};
    // The final digit leaves one token per bin, so one of the branches above is always taken.
  }
}

// ---------------------------------------------------------------------------------------------
// Row mode: the kept set is {composite >= floor} (and, with min-p, weight / z >= threshold).

struct MinP {
  bool on;
  double z;          // mass of the set before min-p
  double threshold;  // min_p * (1 / z), as the reference computes it
};

__device__ __forceinline__ double KeptWeight(const Row& r, double t, int i, u128 floor,
                                             const MinP& mp) {
  if (Composite(r, t, i) < floor) return 0.0;
  const double e = Weight(r, t);
  if (mp.on && e / mp.z < mp.threshold) return 0.0;
  return e;
}

__device__ double RowSum(const Row& r, u128 floor, const MinP& mp) {
  double sum = 0.0;
  for (int i = static_cast<int>(threadIdx.x); i < r.vocab; i += kThreads) {
    sum += KeptWeight(r, r.t[i], i, floor, mp);
  }
  return BlockReduce(sum, SumOp());
}

// CDF walk in token order: the first token with weight > 0 and target < cumulative weight; when
// rounding leaves none, the last token with weight > 0 (model/sampling/distribution.cc).
__device__ int RowDraw(const Row& r, u128 floor, const MinP& mp, double target) {
  const int tid = static_cast<int>(threadIdx.x);
  double carry = 0.0;
  int last_positive = -1;
  for (int tile = 0; tile < r.vocab; tile += kThreads * kItems) {
    const int i0 = tile + tid * kItems;
    double w[kItems];
    double local = 0.0;
    for (int q = 0; q < kItems; ++q) {
      const int i = i0 + q;
      w[q] = i < r.vocab ? KeptWeight(r, r.t[i], i, floor, mp) : 0.0;
      local += w[q];
      if (w[q] > 0) last_positive = i;
    }
    double tile_total;
    double cum = carry + BlockExclusiveScan(local, SumOp(), 0.0, &tile_total);
    int found = INT_MAX;
    for (int q = 0; q < kItems; ++q) {
      if (!(w[q] > 0)) continue;
      cum += w[q];
      if (target < cum) {
        found = i0 + q;
        break;
      }
    }
    found = BlockReduce(found, MinOp());
    if (found != INT_MAX) return found;
    carry += tile_total;
  }
  return BlockReduce(last_positive, MaxOp());
}

// ---------------------------------------------------------------------------------------------
// Small mode: the kept tokens are list[0, keep), sorted by descending key then ascending id.

__device__ double ListSum(const List& list, int keep) {
  double sum = 0.0;
  for (int q = 0; q < kItems; ++q) {
    const int j = static_cast<int>(threadIdx.x) * kItems + q;
    if (j < keep) sum += list.e[j];
  }
  return BlockReduce(sum, SumOp());
}

// model/sampling/filters.cc ApplyTopP on the list: probabilities e / z, cumulated in rank order.
__device__ int ListTopP(const List& list, int keep, float top_p) {
  const double z = ListSum(list, keep);
  const int tid = static_cast<int>(threadIdx.x);
  double p[kItems];
  double local = 0.0;
  for (int q = 0; q < kItems; ++q) {
    const int j = tid * kItems + q;
    p[q] = j < keep ? list.e[j] / z : 0.0;
    local += p[q];
  }
  double total;
  double cum = BlockExclusiveScan(local, SumOp(), 0.0, &total);
  int found = INT_MAX;
  for (int q = 0; q < kItems; ++q) {
    const int j = tid * kItems + q;
    if (j >= keep) break;
    cum += p[q];
    if (cum >= static_cast<double>(top_p)) {
      found = j;
      break;
    }
  }
  found = BlockReduce(found, MinOp());
  return found == INT_MAX ? keep : found + 1;
}

// ApplyMinP on the list: zero the weight of tokens with e / z < min_p * (1 / z).
__device__ void ListMinP(List& list, int keep, float min_p) {
  const double z = ListSum(list, keep);
  const double threshold = static_cast<double>(min_p) * (1.0 / z);
  for (int q = 0; q < kItems; ++q) {
    const int j = static_cast<int>(threadIdx.x) * kItems + q;
    if (j < keep && list.e[j] / z < threshold) list.e[j] = 0.0;
  }
  __syncthreads();
}

__device__ int ListDraw(List& list, int keep, double u) {
  BitonicSort(list.key, list.id, list.e, keep, IdAsc());
  const double target = u * ListSum(list, keep);
  const int tid = static_cast<int>(threadIdx.x);
  double local = 0.0;
  int last_positive = -1;
  for (int q = 0; q < kItems; ++q) {
    const int j = tid * kItems + q;
    if (j < keep && list.e[j] > 0) {
      local += list.e[j];
      last_positive = list.id[j];
    }
  }
  double total;
  double cum = BlockExclusiveScan(local, SumOp(), 0.0, &total);
  int found = INT_MAX;
  for (int q = 0; q < kItems; ++q) {
    const int j = tid * kItems + q;
    if (j >= keep || !(list.e[j] > 0)) continue;
    cum += list.e[j];
    if (target < cum) {
      found = list.id[j];
      break;
    }
  }
  found = BlockReduce(found, MinOp());  // ids ascend with list position
  const int fallback = BlockReduce(last_positive, MaxOp());
  __syncthreads();  // the list is free again
  return found != INT_MAX ? found : fallback;
}

// ---------------------------------------------------------------------------------------------

// The non-greedy choice for one row whose scores (scratch) have a finite or +inf max.
__device__ int ChooseSampled(const Row& r, const SampleRowParams& p, BigShared& big,
                             const Phase0Result& p0, bool hist_ready, bool have_z) {
  const bool topk_on = p.top_k > 0 && p.top_k < r.vocab;
  const bool topp_on = p.top_p < 1.0f;
  const bool minp_on = p.min_p > 0.0f;

  if (r.vocab <= kSmall) {
    const int n = Collect(r, big.list, 0, ~static_cast<u128>(0));
    BitonicSort(big.list.key, big.list.id, big.list.e, n, KeyDescIdAsc());
    int keep = topk_on ? p.top_k : n;
    if (topp_on) keep = ListTopP(big.list, keep, p.top_p);
    if (minp_on) ListMinP(big.list, keep, p.min_p);
    return ListDraw(big.list, keep, p.u);
  }

  u128 floor = 0;
  bool z_known = have_z;
  double z = p0.z;
  if (topk_on) {
    const Selection s = Select<false>(r, big, 0, static_cast<u64>(p.top_k), 1.0f, hist_ready);
    if (s.small) {
      int keep = s.keep;
      if (topp_on) keep = ListTopP(big.list, keep, p.top_p);
      if (minp_on) ListMinP(big.list, keep, p.min_p);
      return ListDraw(big.list, keep, p.u);
    }
    floor = s.pivot;
    z_known = false;
  }
  if (topp_on) {
    const Selection s = Select<true>(r, big, floor, 0, p.top_p, false);
    if (s.small) {
      if (minp_on) ListMinP(big.list, s.keep, p.min_p);
      return ListDraw(big.list, s.keep, p.u);
    }
    floor = s.pivot;
    z = MassToDouble(s.mass);
    z_known = true;
  }
  MinP mp{false, 1.0, 0.0};
  if (!z_known) z = RowSum(r, floor, mp);
  if (minp_on) {
    mp = MinP{true, z, static_cast<double>(p.min_p) * (1.0 / z)};
    z = RowSum(r, floor, mp);
  }
  return RowDraw(r, floor, mp, p.u * z);
}

__device__ float RawLogprob(const Row& r, const Phase0Result& p0, int token) {
  const float x = r.logits[token];
  if (p0.raw_inf > 0) {
    return x == std::numeric_limits<float>::infinity()
               ? static_cast<float>(-log(static_cast<double>(p0.raw_inf)))
               : -std::numeric_limits<float>::infinity();
  }
  if (!(p0.raw_max > -std::numeric_limits<float>::infinity()) || isnan(x) || isinf(x)) {
    return -std::numeric_limits<float>::infinity();
  }
  const double log_normalizer = static_cast<double>(p0.raw_max) + log(p0.raw_sum);
  return static_cast<float>(static_cast<double>(x) - log_normalizer);
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* __restrict__ logits, int64_t rows, int vocab, int id_bits,
                 const SampleRowParams* __restrict__ params, PenaltyTokens penalties,
                 int32_t* __restrict__ tokens, float* __restrict__ logprobs, double* workspace,
                 int64_t slot_stride) {
  extern __shared__ __align__(16) unsigned char smem[];
  BigShared& big = *reinterpret_cast<BigShared*>(smem);
  uint32_t* bitmap = reinterpret_cast<uint32_t*>(smem + sizeof(BigShared));

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const SampleRowParams p = params[row];
    Row r;
    r.logits = logits + row * vocab;
    r.t = workspace + static_cast<int64_t>(blockIdx.x) * slot_stride;
    r.vocab = vocab;
    r.id_bits = id_bits;
    r.id_mask = static_cast<uint32_t>((uint64_t{1} << id_bits) - 1);

    Phase0Flags f;
    f.greedy = p.temperature == 0.0f;
    f.want_lp = logprobs != nullptr && p.want_logprob != 0;
    f.rep_on = static_cast<double>(p.repetition_penalty) != 1.0;
    f.freq_presence_on = !(p.frequency_penalty == 0.0f && p.presence_penalty == 0.0f);
    f.penalties = p.penalty_end > p.penalty_begin && (f.rep_on || f.freq_presence_on);
    const bool topk_on = p.top_k > 0 && p.top_k < vocab;
    const bool small_vocab = vocab <= kSmall;
    f.hist1 = !f.greedy && !small_vocab && topk_on;
    f.want_z = !f.greedy && !small_vocab && !topk_on && !(p.top_p < 1.0f);

    const Phase0Result p0 = Phase0(r, p, penalties, f, big.hist, bitmap);
    r.m = p0.m;
    r.m_inf = p0.m == kInf;

    int token;
    if (f.greedy) {
      token = p0.best_id;  // lowest id of the max; 0 when every score is -inf
    } else if (!(p0.m > -kInf)) {
      token = 0;
    } else {
      token = ChooseSampled(r, p, big, p0, f.hist1, f.want_z);
    }
    if (threadIdx.x == 0) {
      tokens[row] = token;
      if (logprobs != nullptr) logprobs[row] = f.want_lp ? RawLogprob(r, p0, token) : 0.0f;
    }
    __syncthreads();  // shared memory and the scratch slot are reused by the next row
  }
}

int IdBits(int64_t vocab) {
  int bits = 1;
  while ((int64_t{1} << bits) < vocab) ++bits;
  return bits;
}

int64_t SlotStride(int64_t vocab) { return (vocab + 31) / 32 * 32; }

size_t SharedBytes(int64_t vocab) {
  return sizeof(BigShared) + static_cast<size_t>((vocab + 31) / 32) * sizeof(uint32_t);
}

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "moemesh::cuda::Sample: %s\n", what);
  std::abort();
}

}  // namespace

size_t SampleWorkspaceBytes(int64_t rows, int64_t vocab) {
  if (rows <= 0 || vocab <= 0) return 0;
  const int64_t slots = rows < kMaxSlots ? rows : kMaxSlots;
  return static_cast<size_t>(slots) * static_cast<size_t>(SlotStride(vocab)) * sizeof(double);
}

void Sample(const float* logits, int64_t rows, int64_t vocab, const SampleRowParams* params,
            PenaltyTokens penalties, int32_t* tokens, float* logprobs, void* workspace,
            size_t workspace_bytes, cudaStream_t stream) {
  if (rows <= 0) return;
  // Broken caller invariants (not request input): abort with the reason.
  if (vocab < 1 || vocab > kMaxVocab) Fail("vocab must be in [1, 2^20]");
  if (workspace == nullptr || workspace_bytes < SampleWorkspaceBytes(rows, vocab)) {
    Fail("workspace smaller than SampleWorkspaceBytes(rows, vocab)");
  }
  const size_t smem = SharedBytes(vocab);
  MM_CUDA_CHECK(cudaFuncSetAttribute(SampleKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(smem)));
  const unsigned grid = static_cast<unsigned>(rows < kMaxSlots ? rows : kMaxSlots);
  SampleKernel<<<grid, kThreads, smem, stream>>>(logits, rows, static_cast<int>(vocab),
                                                 IdBits(vocab), params, penalties, tokens,
                                                 logprobs, static_cast<double*>(workspace),
                                                 SlotStride(vocab));
  MM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace moemesh::cuda
