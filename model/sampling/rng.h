// The random stream used by token sampling: SplitMix64 (Steele, Lea, Flood, "Fast splittable
// pseudorandom number generators", OOPSLA 2014; constants of Vigna's public-domain
// splitmix64.c). Fully specified here so that any backend (CPU, GPU) can reproduce it bit for bit.
// Holds no sampling logic. Not thread-safe (one instance per request).
#pragma once

#include <cstdint>

namespace moemesh {

// Output i (0-based) of a stream seeded with `seed` is Mix(seed + (i + 1) * kGamma), where
//   Mix(z): z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
//           z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
//           return z ^ (z >> 31);
// with all arithmetic modulo 2^64. The stream is therefore also counter-based: output i needs
// only (seed, i), see SplitMix64::At.
class SplitMix64 {
 public:
  static constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;

  explicit SplitMix64(uint64_t seed) : state_(seed) {}

  // The next 64-bit output.
  uint64_t Next();
  // The next output mapped to a double in [0, 1): (Next() >> 11) * 2^-53. Every value is a
  // multiple of 2^-53, so the mapping is exact on every platform.
  double NextDouble();

  // Skips `n` outputs in O(1): the state advances by n * kGamma.
  void Skip(uint64_t n) { state_ += n * kGamma; }

  // Output `index` of the stream seeded with `seed`, without walking the stream.
  static uint64_t At(uint64_t seed, uint64_t index);
  // Maps a 64-bit output to [0, 1) exactly as NextDouble does.
  static double ToUnitDouble(uint64_t bits);

 private:
  static uint64_t Mix(uint64_t z);

  uint64_t state_;
};

}  // namespace moemesh
