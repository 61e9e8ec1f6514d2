// The cascade cost model's constants (coordinator/cascade_cost.h CascadeCalibration) from the
// CUDA start-up timings (kernels/cuda/cascade_calibration.h, which does not include coordinator
// headers): the fused form's fixed costs, which a captured decode step pays. Used by the GPU
// attention worker, which measures at start-up, and by bench_cascade.
#pragma once

#include "coordinator/cascade_cost.h"
#include "kernels/cuda/cascade_calibration.h"

namespace moemesh {

inline CascadeCalibration ToCascadeCalibration(const cuda::CascadeTimings& t) {
  CascadeCalibration c;
  c.device = t.device;
  c.kv_bytes_per_element = t.kv_bytes_per_element;
  c.decode_bytes_per_second = t.decode_bytes_per_second;
  c.prefix_bytes_per_second = t.prefix_bytes_per_second;
  c.prefix_flops_per_second = t.prefix_flops_per_second;
  c.wide_prefix_flops_per_second = t.wide_prefix_flops_per_second;
  c.level_seconds = t.level_seconds;
  c.merge_seconds_per_row = t.merge_seconds_per_row;
  return c;
}

}  // namespace moemesh
