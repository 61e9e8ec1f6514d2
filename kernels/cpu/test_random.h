// Seeded Gaussian test inputs for the CPU kernel suites. Test-only; stateless.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace moemesh::cpu::test_util {

// `size` values from N(0, stddev^2), the same for the same seed.
inline std::vector<float> Random(size_t size, float stddev, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(size);
  for (float& x : v) x = normal(rng);
  return v;
}

}  // namespace moemesh::cpu::test_util
