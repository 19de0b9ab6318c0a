#!/bin/sh
# Run libpmap's benchmarks and the Python original (multiprocessing.Pool.imap,
# chunksize 1 and 1024) on the same workloads, one after the other in one run,
# and print the figures side by side with their ratios and the targets of the
# performance issue. Only ratios measured side by side mean anything on a
# shared, noisy machine.
#
#   tests/bench/compare.sh [build-dir]        (default: ./build)
#
# It builds nothing: configure and build first, optimised, e.g.
#   cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j
# Without python3 only libpmap's figures are printed.
# Environment: BENCH_REPEAT (runs per figure, best kept; default 3),
# BENCH_QUICK=1 (smaller inputs, for a smoke test; ratios less reliable).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-./build}
bin=$build/tests/bench
for b in bench_tiny bench_cpu bench_large bench_latency bench_create bench_rss; do
    if [ ! -x "$bin/$b" ]; then
        echo "compare.sh: $bin/$b not found; build first, e.g.:" >&2
        echo "  cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release && cmake --build $build -j" >&2
        exit 2
    fi
done
py=$(command -v python3 || true)

out=$(mktemp)
trap 'rm -f "$out"' EXIT INT TERM

if [ "${BENCH_QUICK:-0}" = 1 ]; then
    tiny_n=500000 tiny_n1=20000 large_mib=64 rss_n=1000000 cpu_ms=200
else
    tiny_n=4000000 tiny_n1=200000 large_mib=512 rss_n=10000000 cpu_ms=500
fi

run() { # label, command...: figures go to the log and to the screen
    label=$1
    shift
    echo "== $label" >&2
    "$@" | tee -a "$out" >&2
}

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(uname -sr)" >&2
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# Each workload: libpmap first, then the Python original, close in time.
run "tiny records, libpmap" "$bin/bench_tiny" "$tiny_n" "$tiny_n1"
[ -n "$py" ] && run "tiny records, Python" "$py" "$here/py_baseline.py" tiny
run "CPU-bound tasks, libpmap + OpenMP" env BENCH_CPU_MS="$cpu_ms" "$bin/bench_cpu"
[ -n "$py" ] && run "CPU-bound tasks, Python" "$py" "$here/py_baseline.py" cpu
run "large records, libpmap + plain pipes" "$bin/bench_large" "$large_mib"
[ -n "$py" ] && run "large records, Python" "$py" "$here/py_baseline.py" large
run "latency, libpmap" "$bin/bench_latency"
[ -n "$py" ] && run "latency, Python" "$py" "$here/py_baseline.py" latency
run "create + destroy, libpmap" "$bin/bench_create"
[ -n "$py" ] && run "create + destroy, Python" "$py" "$here/py_baseline.py" create
run "peak RSS, libpmap" "$bin/bench_rss" "$rss_n"
[ -n "$py" ] && run "peak RSS, Python" "$py" "$here/py_baseline.py" rss
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# The table. Ratios: libpmap / Python for rates, Python / libpmap for times
# and memory (so > 1 always means libpmap is better), except where a column
# says otherwise.
awk -v ncpu="$(nproc)" '
function has(k) { return (k in v) }
function fmt(x) {
    if (x == "") return "-"
    if (x >= 1e6) return sprintf("%.3gM", x / 1e6)
    if (x >= 1e4) return sprintf("%.3gk", x / 1e3)
    return sprintf("%.3g", x)
}
function row(what, mine, theirs, ratio, target, verdict) {
    printf "%-44s %10s %10s %9s  %-14s %s\n", what, fmt(mine), fmt(theirs), ratio, target, verdict
}
function rate(what, a, b, target, need) {
    if (!has(a)) return
    if (!has(b)) { row(what, v[a], "", "-", target, ""); return }
    r = v[a] / v[b]
    row(what, v[a], v[b], sprintf("%.3gx", r), target, need == "" ? "" : (r >= need ? "met" : "MISSED"))
}
function lower(what, a, b, target, need) { # smaller is better: ratio = b / a
    if (!has(a)) return
    if (!has(b)) { row(what, v[a], "", "-", target, ""); return }
    r = v[b] / v[a]
    row(what, v[a], v[b], sprintf("%.3gx", r), target, need == "" ? "" : (r >= need ? "met" : "MISSED"))
}
{ v[$1] = $2 }
END {
    w = ncpu
    printf "\n%-44s %10s %10s %9s  %-14s %s\n", "workload (unit)", "libpmap", "Python", "ratio", "target", ""
    rate("tiny ordered, default vs imap cs=1024 (rec/s)", "tiny_ordered_default", "py_tiny_ordered_cs1024", ">= 20x", 20)
    rate("tiny ordered, default vs imap cs=1 (rec/s)", "tiny_ordered_default", "py_tiny_ordered_cs1", ">= 300x", 300)
    rate("tiny unordered, default vs cs=1024 (rec/s)", "tiny_unordered_default", "py_tiny_unordered_cs1024", "", "")
    rate("tiny unordered, default vs cs=1 (rec/s)", "tiny_unordered_default", "py_tiny_unordered_cs1", "", "")
    rate("tiny ordered, chunk=1 vs cs=1 (rec/s)", "tiny_ordered_chunk1", "py_tiny_ordered_cs1", "", "")
    rate("tiny unordered, chunk=1 vs cs=1 (rec/s)", "tiny_unordered_chunk1", "py_tiny_unordered_cs1", "", "")
    for (k = 1; k <= w; k++) {
        rate(sprintf("1 ms tasks, %d worker(s): speedup (x)", k), "cpu_1ms_pmap_w" k "_speedup", "py_cpu_1ms_w" k "_speedup", "", "")
    }
    if (has("cpu_1ms_pmap_w2") && has("cpu_1ms_omp_w2")) {
        r = v["cpu_1ms_pmap_w2"] / v["cpu_1ms_omp_w2"]
        row("1 ms tasks, 2 workers: wall vs OpenMP (s)", v["cpu_1ms_pmap_w2"], "", sprintf("%.3gx", r), "<= 1.05x omp", r <= 1.05 ? "met" : "MISSED")
        printf "%-44s %10s %10s %9s\n", "  (OpenMP wall, s; OpenMP speedup, x)", fmt(v["cpu_1ms_omp_w2"]), fmt(v["cpu_1ms_omp_w2_speedup"]), ""
    }
    for (s = 0; s <= 3; s++) {
        # the figures name sizes "64KiB", "1MiB", ...; the table "64 KiB", "1 MiB", ...
        sz = s == 0 ? "64KiB" : s == 1 ? "1MiB" : s == 2 ? "8MiB" : "64MiB"
        label = sz; sub(/[KM]iB$/, " &", label)
        rate(label " echo (MB/s)", "large_" sz "_echo", "py_large_" sz "_echo", "", "")
        if (has("large_" sz "_vs_pipe")) {
            r = v["large_" sz "_vs_pipe"]
            row("  " label " echo vs plain pipe copy (%)", v["large_" sz "_echo"], "", sprintf("%.0f%%", r), sz == "8MiB" ? ">= 50%" : "", sz == "8MiB" ? (r >= 50 ? "met" : "MISSED") : "")
        }
    }
    lower("latency, one record, idle pool (us)", "latency_idle_us", "py_latency_idle_us", "", "")
    lower("create + destroy, 2 workers (us)", "create_destroy_w2_us", "py_create_destroy_w2_us", ">= 10x", 10)
    lower("create + destroy, 8 workers (us)", "create_destroy_w8_us", "py_create_destroy_w8_us", "", "")
    for (k in v) if (k ~ /^create_destroy_w2_heap/) row("create + destroy, 2 workers, " substr(k, 23, index(k, "_us") - 23) " heap (us)", v[k], "", "-", "", "")
    if (has("rss_growth_fast_MiB")) {
        n = fmt(v["rss_records"])
        row("RSS growth, " n " records, fast (MiB)", v["rss_growth_fast_MiB"], v["py_rss_growth_fast_MiB"], "-", "<= 16 MiB", v["rss_growth_fast_MiB"] <= 16 ? "met" : "MISSED")
        row("RSS growth, " n " records, stalled (MiB)", v["rss_growth_stalled_MiB"], v["py_rss_growth_stalled_MiB"], "-", "<= 16 MiB", v["rss_growth_stalled_MiB"] <= 16 ? "met" : "MISSED")
        if (has("py_rss_records")) printf "  (Python figures for %s records, chunksize 1024)\n", fmt(v["py_rss_records"])
    }
}' "$out"
