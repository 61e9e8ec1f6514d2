#include "model/sampling/rng.h"

namespace moemesh {

uint64_t SplitMix64::Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::Next() {
  state_ += kGamma;
  return Mix(state_);
}

double SplitMix64::NextDouble() { return ToUnitDouble(Next()); }

uint64_t SplitMix64::At(uint64_t seed, uint64_t index) { return Mix(seed + (index + 1) * kGamma); }

double SplitMix64::ToUnitDouble(uint64_t bits) {
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

}  // namespace moemesh
