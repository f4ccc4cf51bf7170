#!/usr/bin/env bash
# Long fuzz run: the hypothesis tests of tests/fuzz with fresh random examples
# (not the fixed, derandomized CI set) and many more of them, then the
# libFuzzer harness of the plan builder when clang is available.
#   tools/fuzz_long.sh [examples per test = 2000] [libFuzzer seconds = 300]
# Figures from runs go into tests/RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-2000}
seconds=${2:-300}
start=$(date +%s)
OPTCORE_FUZZ_EXAMPLES=$examples OPTCORE_FUZZ_LONG=1 \
  nice -n 19 python -m pytest -q -p no:cacheprovider tests/fuzz --hypothesis-show-statistics
echo "fuzz_long: hypothesis, $examples examples per test, $(( $(date +%s) - start )) s"
if command -v clang++ >/dev/null 2>&1; then
  tools/fuzz_plan_tables.sh "$seconds"
else
  echo "fuzz_long: clang++ not found; libFuzzer harness skipped"
fi
