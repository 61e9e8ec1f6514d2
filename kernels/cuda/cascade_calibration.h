// Start-up timings for the cascade cost model: times flat DecodeAttention and the cascade kernels
// (cascade.h) on a few synthetic shapes, each captured in a CUDA graph and replayed, and returns
// the constants coordinator/cascade_cost.h's CascadeCalibration needs as a plain struct (kernels
// do not include coordinator headers; the caller converts). Allocates and frees its own device
// memory (about max(4 x L2, 128 MiB) of KV pool, less when the GPU has less free). Not for use
// while other work runs on the GPU (the numbers would be wrong); one call at a time per device.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace moemesh::cuda {

struct CascadeTimings {
  std::string device;                  // cudaDeviceProp::name
  int32_t kv_bytes_per_element = 2;    // bf16 KV cache
  // KV bytes / time of flat DecodeAttention over 16 sequences with no sharing, KV > L2.
  double decode_bytes_per_second = 0;
  // Shared KV bytes / time of the prefix pass alone, ~64 rows, shared range > L2.
  double prefix_bytes_per_second = 0;
  // 4 * rows * tokens * head_dim / time of the fused launch (CascadeFused, what a decode step
  // runs) over ~8K shared positions, at 64 rows per KV head and (wide_) at 512 (rows = members x
  // n_heads, as the cost model counts them; coordinator/cascade_cost.h kFewRowsPerKvHead and
  // kManyRowsPerKvHead).
  double prefix_flops_per_second = 0;
  double wide_prefix_flops_per_second = 0;
  // Fused cascade minus flat decode on a one-block shared range (members x n_heads rows): the
  // fixed cost of a level, and its growth per row (between 8 and 64 members).
  double level_seconds = 0;
  double merge_seconds_per_row = 0;
  // The same for the two-launch form.
  double level_seconds_two_launch = 0;
  double merge_seconds_per_row_two_launch = 0;
  std::string detail;  // the raw times and shapes, one line each (for logs)
};

// kv_heads and n_heads per GPU, head_dim 64 or 128, the cache's block size. Aborts on a CUDA
// error or invalid shape (a caller bug).
CascadeTimings MeasureCascadeCosts(int kv_heads, int n_heads, int head_dim, int block_size,
                                   cudaStream_t stream);

}  // namespace moemesh::cuda
