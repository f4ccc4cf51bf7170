#!/usr/bin/env bash
# Build the libFuzzer harness of the plan builder (tools/fuzz/plan_tables_fuzzer.cpp)
# with clang -fsanitize=fuzzer,address,undefined and run it for a bounded time.
#   tools/fuzz_plan_tables.sh [seconds=60] [extra libFuzzer flags...]
# Needs clang (apt-get install -y clang). The corpus is kept in
# build/fuzz/plan_tables_corpus between runs; crashes land in build/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (apt-get install -y clang)"; exit 2; }
out=build/fuzz
mkdir -p "$out/plan_tables_corpus"
py_inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
pb_inc=$(python3 -c "import pybind11; print(pybind11.get_include())")
py_lib=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
py_ver=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('LDVERSION'))")
bin="$out/plan_tables_fuzzer"
if [ ! -x "$bin" ] || [ tools/fuzz/plan_tables_fuzzer.cpp -nt "$bin" ] || [ csrc/bindings/plan_tables.h -nt "$bin" ]; then
  nice -n 19 clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -I csrc -I "$py_inc" -I "$pb_inc" tools/fuzz/plan_tables_fuzzer.cpp -o "$bin" \
    -L "$py_lib" -Wl,-rpath,"$py_lib" -lpython"$py_ver"
fi
# rss limit: a valid but huge plan would be an allocation defect, not a slow input.
nice -n 19 "$bin" -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=5 -print_final_stats=1 \
  -artifact_prefix="$out/" "$@" "$out/plan_tables_corpus"
