#!/usr/bin/env bash
# Runs the GPU suites and benchmarks on a host with NVIDIA GPUs: every CUDA conformance suite,
# the GPU forward pass against the reference engine, GPU clusters end to end (TP 1 and, with
# more GPUs, TP 2/4), then bench_attention_decode (with PyTorch when importable),
# bench_cascade and bench_gpu_decode_step. Logs go to OUT (default build/gpu-logs), one file
# per program, and a summary line per program to stdout.
#   usage: tools/test-gpu.sh [--bin DIR] [--run "PREFIX"] [--out DIR] [--skip-bench] [--only-bench]
# --bin: where the executables are (default: build/bin, build/tests/..., found by name);
# --run: a command prefix that runs an executable by name (a device bundle's `run` script).
set -uo pipefail
cd "$(dirname "$0")/.."
bin="" run="" out="build/gpu-logs" bench=1 tests=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --run) run=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --skip-bench) bench=0; shift ;;
    --only-bench) tests=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
export MOEMESH_SOURCE_DIR=$PWD NCCL_NVLS_ENABLE=0
status=0

exe() {  # the command that runs executable $1
  if [ -n "$run" ]; then echo "$run $1"; return; fi
  local found
  found=$(find "${bin:-build}" -type f -name "$1" -perm -u+x 2>/dev/null | head -n 1)
  echo "${found:-$1}"
}

step() {  # step NAME TIMEOUT_S ARGS...: runs one program, logs it, prints a summary line
  local name=$1 limit=$2; shift 2
  local log=$out/${LABEL:-$name}.log
  local start=$SECONDS
  timeout "$limit" $(exe "$name") "$@" >"$log" 2>&1
  local rc=$?
  local summary
  summary=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) |tests? ran|^verdict|^PASS|^FAIL|\[(PASS|FAIL)\]' "$log" | tr '\n' ' ' | cut -c1-400)
  echo "${LABEL:-$name}: exit $rc in $((SECONDS - start)) s; $summary"
  [ $rc -eq 0 ] || status=1
}

nvidia-smi -L 2>&1 | tee "$out/gpus.txt"
if [ -n "$run" ]; then export MOEMESH_BINARY=$PWD/$(dirname "$(echo "$run" | awk '{print $1}')")/bin/moemesh; fi
if [ $tests -eq 1 ]; then
  for suite in cuda_ops_test cuda_layout_ops_test cuda_attention_test cuda_kv_append_test \
               cuda_decode_overlap_test cuda_attention_generic_test cuda_prefill_test \
               cuda_sampling_test cuda_cascade_test; do
    step $suite 300
  done
  step gpu_forward_test 300
  step integration_cluster_gpu_test 420
fi
if [ $bench -eq 1 ]; then
  torch=()
  python3 -c 'import torch' 2>/dev/null && torch=(--torch python3 --torch_script bench/attention_decode_torch.py)
  step bench_attention_decode 300 "${torch[@]}"
  step bench_cascade 300 --calibration_out "$out/cascade_calibration.json"
  step bench_gpu_decode_step 300
  gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
  tps=1; [ "$gpus" -ge 2 ] && tps=1,2; [ "$gpus" -ge 4 ] && tps=1,2,4; [ "$gpus" -ge 8 ] && tps=1,2,4,8
  LABEL=bench_gpu_decode_step_mixtral step bench_gpu_decode_step 420 --shape=mixtral-8x22b \
    --tp=$tps --experts=none --steps=10
fi
exit $status
