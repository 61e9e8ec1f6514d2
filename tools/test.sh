#!/usr/bin/env bash
# Builds moemesh and runs every test suite (unit, conformance, golden vs transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/build.sh
jobs=$(nproc 2>/dev/null || echo 2)
ctest --test-dir build --output-on-failure -j "$jobs"
