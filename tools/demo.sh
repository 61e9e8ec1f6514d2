#!/usr/bin/env bash
# Builds moemesh and generates from the bundled demo model (models/demo) in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/build.sh
./build/bin/moemesh run --model models/demo --prompt "${1:-The quick brown fox}" \
  --max_tokens 48 --temperature 0
