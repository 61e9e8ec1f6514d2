#!/usr/bin/env bash
# Builds moemesh, starts a local cluster on the bundled demo model (a coordinator, 2 tensor-
# parallel attention workers and 2 expert workers as separate processes on loopback), answers
# one generate call through the public gRPC API, and stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/build.sh
prompt=${1:-The quick brown fox}
workdir=$(mktemp -d)
trap 'kill -TERM "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; rm -rf "$workdir"' EXIT
./build/bin/moemesh serve --model models/demo --tp 2 --expert_workers 2 \
  --port_file "$workdir/port" 2> "$workdir/serve.log" &
serve_pid=$!
for _ in $(seq 1 600); do
  [ -s "$workdir/port" ] && break
  if ! kill -0 "$serve_pid" 2>/dev/null; then cat "$workdir/serve.log" >&2; exit 1; fi
  sleep 0.1
done
[ -s "$workdir/port" ] || { echo "the cluster did not become ready" >&2; cat "$workdir/serve.log" >&2; exit 1; }
grep -E "placement|ready" "$workdir/serve.log" >&2 || true
./build/bin/moemesh generate --server "127.0.0.1:$(cat "$workdir/port")" --prompt "$prompt" \
  --max_tokens 48 --temperature 0
