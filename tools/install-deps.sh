#!/usr/bin/env bash
# Installs the Debian 12 packages moemesh builds with, skipping those already present.
# CUDA is optional: when /usr/local/cuda/bin/nvcc exists, CUDA kernels are built too.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libabsl-dev libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
  libhwloc-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libgloo-dev
  libdnnl-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
