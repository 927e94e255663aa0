#!/usr/bin/env bash
# Installs what kbit needs to build and test on Debian 12, from Debian's archive only.
# The CUDA toolkit (nvcc, for the `cuda` preset) is not a Debian package: install it from
# NVIDIA into /usr/local/cuda if you build the GPU kernels.
set -euo pipefail
packages=(cmake ninja-build g++ git libgtest-dev libbenchmark-dev nlohmann-json3-dev
          libcli11-dev libfmt-dev libpcre2-dev libopenblas-dev pkg-config clang-format-14)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: everything is installed"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
