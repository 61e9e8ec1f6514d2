// Per-CTA timelines of one CUDA cascade call (CascadeParams::cta_times) for bench_cascade
// --timeline: the points of each kind of CTA as min / median / max after the first CTA's start.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/cascade.h"

namespace moemesh::bench {

// One call of `run` with p.cta_times set (CascadeParams): per unit kind (suffix / prefix / merge)
// and timeline point, min / median / max in us after the first CTA's start, then the end of the
// last CTA. The call is timed alone on the stream after a warm-up call. With csv_path, every
// CTA's row is appended there too: label, form, CTA, unit, SM, the points in us ("" where none).
std::vector<std::string> Timeline(const char* form, const cuda::PagedKv& cache,
                                  cuda::CascadeParams p, cuda::cascade::Form plan_form,
                                  const std::function<void(const cuda::CascadeParams&)>& run,
                                  cudaStream_t stream, const std::string& csv_path = "",
                                  const std::string& label = "");

}  // namespace moemesh::bench
