#!/bin/sh
# Build the libFuzzer targets with clang and run the frame decoder's for N
# seconds (default 60), then the journal reader's for a quarter of that.
# Exits non-zero on any finding (crash, sanitizer report, leak, timeout);
# the reproducer is left in the build directory.
#
#   tests/fuzz/run.sh [SECONDS] [BUILD_DIR]
set -eu

secs=${1:-60}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${2:-$root/build-fuzz}

command -v clang >/dev/null 2>&1 || { echo "run.sh: clang is required" >&2; exit 2; }

cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
      -DPMAP_FUZZ=ON -DPMAP_BUILD_TESTS=OFF -DPMAP_BUILD_EXAMPLES=OFF \
      -DPMAP_BUILD_BENCH=OFF -DPMAP_PROGRESS=OFF >/dev/null
cmake --build "$build" --target fuzz_wire fuzz_wire_seeds fuzz_journal -j2 >/dev/null

bin=$build/tests/fuzz
seeds=$build/fuzz-seeds
corpus=$build/fuzz-corpus
rm -rf "$seeds"
mkdir -p "$seeds" "$corpus"
"$bin/fuzz_wire_seeds" "$seeds"

cd "$build"
# libFuzzer exits non-zero (and writes crash-*/leak-*/timeout-*) on a finding.
"$bin/fuzz_wire" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len=4096 -print_final_stats=1 "$corpus" "$seeds"

# The journal reader: every run opens a file, so it does far fewer runs a
# second; allocations are capped to catch one beyond what a file can hold.
jsecs=$((secs / 4))
[ "$jsecs" -ge 5 ] || jsecs=5
mkdir -p "$build/fuzz-journal-corpus"
"$bin/fuzz_journal" -max_total_time="$jsecs" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=64 -max_len=4096 -print_final_stats=1 "$build/fuzz-journal-corpus"
