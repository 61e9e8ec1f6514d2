#!/usr/bin/env bash
# Builds moemesh and runs every test suite (unit, conformance, golden vs transformers,
# integration on real processes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/build.sh
jobs=$(nproc 2>/dev/null || echo 2)
status=0
ctest --test-dir build --output-on-failure -j "$jobs" || status=$?
# ctest lists skipped tests without their reason: print each hardware-dependent suite's reason.
for suite in build/tests/conformance/cuda_ops_test build/tests/conformance/cuda_attention_test build/tests/conformance/cuda_kv_append_test build/tests/conformance/cuda_decode_overlap_test build/tests/conformance/cuda_prefill_test build/tests/conformance/cuda_sampling_test build/tests/conformance/cuda_cascade_test build/tests/conformance/cuda_layout_ops_test build/tests/conformance/cuda_attention_generic_test build/worker/gpu/gpu_forward_test build/tests/integration/integration_cluster_gpu_test build/kernels/cpu/kernels_cpu_amx_test; do
  [ -x "$suite" ] || continue
  reason=$("$suite" 2>&1 | grep -A1 -m1 ': Skipped' | tail -n 1 || true)
  [ -n "$reason" ] && echo "skipped on this machine: $(basename "$suite"): $reason"
done
exit $status
