#!/usr/bin/env bash
# One call on a lent GPU machine: build with the CUDA module, run every cuda-marked test, every
# bench suite on the device, and the demo; logs and JSON land under $OUT (at most 8 files come
# back, so the bench JSONs travel as one tarball). Sized to finish within 8 minutes on an H200
# machine (16 cores): every stage has its own time limit, and a stage that fails or runs out of
# time is recorded in summary.txt while the later stages still run.
#
#   device run:  bash bench/gpu_session.sh        (timeout_s 540 leaves a margin for the transfer)
#
# Stage limits (seconds) can be lowered for a rerun, e.g. GPU_BENCH_S=60 bash bench/gpu_session.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT" "$OUT/.bench"
export PYTHONUNBUFFERED=1
BUILD_S=${GPU_BUILD_S:-200}
TEST_S=${GPU_TEST_S:-120}
BENCH_S=${GPU_BENCH_S:-45}       # per suite
DEMO_S=${GPU_DEMO_S:-45}
summary="$OUT/summary.txt"
: > "$summary"
t_start=$(date +%s)

stage() {  # stage NAME LIMIT_S LOG COMMAND...
  local name=$1 limit=$2 log=$3; shift 3
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  printf '%-28s rc=%-3s %4ss\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" | tee -a "$summary"
  return $rc
}

{
  echo "== machine"; date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  nvcc --version | tail -2; python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"
  nproc
} > "$OUT/build.log" 2>&1

# The machine has no network: build against the packages already there.
export OPTCORE_CUDA=ON CUDAARCHS=${CUDAARCHS:-90} CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
if ! stage build "$BUILD_S" "$OUT/build.log" python3 -m pip install -v --no-build-isolation --no-deps .; then
  echo "build failed: see build.log" | tee -a "$summary"
  exit 1
fi
python3 -c "import optcore, json; print(json.dumps(optcore.backend(), indent=1))" >>"$OUT/build.log" 2>&1

# The sources live under python/, so `import optcore` here is the installed package (with _cuda).
stage cuda-tests "$TEST_S" "$OUT/tests.log" \
  python3 -m pytest -q -rs -m cuda --junitxml="$OUT/tests.xml" -p no:cacheprovider tests

suites=$(python3 -m bench --list | awk '{print $1}')
for s in $suites; do
  case $s in distributed) continue ;; esac   # multi-process CPU suite: not a device measurement
  stage "bench $s" "$BENCH_S" "$OUT/bench.log" \
    python3 -m bench --suite "$s" --device cuda --json "$OUT/.bench/$s-cuda.json"
done
tar -czf "$OUT/bench-json.tar.gz" -C "$OUT/.bench" . && rm -rf "$OUT/.bench"

stage demo "$DEMO_S" "$OUT/demo.log" python3 -m optcore demo --device cuda --out "$OUT/.demo"
rm -rf "$OUT/.demo"

echo "total $(( $(date +%s) - t_start ))s" | tee -a "$summary"
# The reply carries the end of the output: the failures first, then the stage table.
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -40
tail -3 "$OUT/tests.log"
cat "$summary"
