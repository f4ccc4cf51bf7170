#!/usr/bin/env bash
# CI: the CPU module built with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option OPTCORE_SANITIZE) and the kernel, contract and batch-norm tests
# run against it. Any sanitizer report fails the run: UBSan does not recover
# (-fno-sanitize-recover=all) and ASan halts on the first error.
#
# Run after .ci/run's `pip install` (it reuses that environment's torch, numpy,
# pytest); standalone it needs an environment with those. The instrumented
# module goes into its own build dir and target dir, never into the venv, and
# is put first on PYTHONPATH. CPU only: the CUDA module is not built here.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

# The build runs without isolation (so its build dir can be kept apart): the
# build backend has to be in this environment.
python -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.24" ninja

target=.ci-sanitize
rm -rf "$target" build/sanitize
OPTCORE_CUDA=OFF OPTCORE_SANITIZE=address,undefined \
  python -m pip install -q --no-deps --no-build-isolation --target "$target" \
  -C build-dir=build/sanitize .
built=$(date +%s)
echo "sanitize: instrumented build took $(( built - start )) s"

# CPython itself is not instrumented, so the runtimes are preloaded; CPython
# keeps its interned objects until exit, so leak detection would only report
# the interpreter. Reports go to stderr and end the process with exit code 1.
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
[ -f "$asan" ] && [ -f "$ubsan" ] || { echo "sanitize: gcc's libasan/libubsan not found"; exit 1; }
export LD_PRELOAD="$asan:$ubsan"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=99:strict_string_checks=1:detect_stack_use_after_return=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=98
export PYTHONPATH="$PWD/$target${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=2

python -c "import optcore._core as c, sys; assert c.__file__.startswith('$PWD/$target'), c.__file__"
python -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/optim/test_first_order.py tests/optim/test_contract.py \
  tests/test_normalization.py tests/second_order/test_lbfgs_kernel.py tests/test_dtypes.py

echo "sanitize: finished in $(( $(date +%s) - start )) s (tests $(( $(date +%s) - built )) s)"
