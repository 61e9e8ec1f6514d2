#!/usr/bin/env bash
# Builds moemesh and runs every test suite (unit, conformance, golden vs transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/build.sh
jobs=$(nproc 2>/dev/null || echo 2)
status=0
ctest --test-dir build --output-on-failure -j "$jobs" || status=$?
# ctest lists skipped tests without their reason: print each skipped GPU suite's reason once.
gpu_test=build/tests/conformance/cuda_conformance_test
if [ -x "$gpu_test" ]; then
  reason=$("$gpu_test" 2>&1 | grep -A1 -m1 ': Skipped' | tail -n 1 || true)
  [ -n "$reason" ] && echo "GPU conformance tests skipped: $reason"
fi
exit $status
