#!/usr/bin/env bash
# cibuildwheel before-all: install the CUDA compiler and runtime headers/static
# library into a manylinux_2_28 (AlmaLinux 8) image from NVIDIA's RHEL 8 repository.
# CUDA_VERSION (default 13.0, the toolkit tools/build_wheel.sh and CI build and
# test with): the wheel then needs an NVIDIA driver >= 580. CUDA_VERSION=12.9
# also compiles sm_100 and, linked statically, runs on drivers >= 525 through
# minor-version compatibility (wider reach; not built or tested in CI).
set -euo pipefail
version=${CUDA_VERSION:-13.0}
case "$(uname -m)" in
  x86_64) repo=rhel8/x86_64 ;;
  aarch64) repo=rhel8/sbsa ;;
  *) echo "install_cuda_manylinux: no CUDA repository for $(uname -m)" >&2; exit 1 ;;
esac
dnf install -y dnf-plugins-core
dnf config-manager --add-repo "https://developer.download.nvidia.com/compute/cuda/repos/$repo/cuda-rhel8.repo"
pkg=${version/./-}
dnf install -y --setopt=install_weak_deps=False "cuda-nvcc-$pkg" "cuda-cudart-devel-$pkg" "cuda-crt-$pkg" || \
  dnf install -y --setopt=install_weak_deps=False "cuda-nvcc-$pkg" "cuda-cudart-devel-$pkg"
ln -sfn "/usr/local/cuda-$version" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
