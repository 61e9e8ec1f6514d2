// Scalar reference of one routed expert's FFN over the tokens routed to it, in fp32 with double
// accumulation: the yardstick of every kernels/cpu expert path (tests feed it the Unpack()ed
// weights). Nothing about packing or quantization belongs here. Thread-safe (pure function).
#pragma once

#include <cstdint>

namespace moemesh::ref {

// y[t] += weight[t] * down(silu(gate x_t) * (up x_t)) for t < n.
// gate, up: [intermediate, hidden]; down: [hidden, intermediate]; x, y: [n, hidden]; all fp32
// row-major. weight == nullptr means 1 for every token.
void ExpertFfn(const float* gate, const float* up, const float* down, int64_t hidden,
               int64_t intermediate, const float* x, int64_t n, const float* weight, float* y);

}  // namespace moemesh::ref
