#!/bin/sh
# A/B run of two builds of libpmap on the workloads that guard the default
# path: tiny records ordered (records/s), 1 ms CPU-bound tasks on 2 workers
# (wall s), 8 MiB records echoed (MB/s) and pool create + destroy with 2
# workers (us). The two builds run alternately, A B then B A, round after
# round, so that drift of a shared machine falls on both; each round gives
# one B/A ratio per workload, and the median ratio is printed with its
# spread. Only options and figures that every earlier version of the
# benchmarks knows are used, so an old build can be A.
#
#   tests/bench/ab.sh BUILD_A BUILD_B [rounds]     (default 5 rounds)
#
# Build both optimised first, e.g. for the previous main in a worktree:
#   git worktree add /some/dir/old main~1
#   cmake -S /some/dir/old -B build-old -DCMAKE_BUILD_TYPE=Release
#   cmake --build build-old -j
# The ratio column is "B relative to A, higher is better" for every row
# (A's time divided by B's for times).
set -eu

a=${1:?usage: ab.sh BUILD_A BUILD_B [rounds]}
b=${2:?usage: ab.sh BUILD_A BUILD_B [rounds]}
rounds=${3:-5}
for d in "$a" "$b"; do
    for p in bench_tiny bench_cpu bench_large bench_create; do
        [ -x "$d/tests/bench/$p" ] || { echo "ab.sh: $d/tests/bench/$p not found" >&2; exit 2; }
    done
done

# AB_LOG=file keeps every figure of every round.
log=${AB_LOG:-$(mktemp)}
[ -n "${AB_LOG:-}" ] || trap 'rm -f "$log"' EXIT INT TERM
: >"$log"

# One run of every workload with build $2, its figures tagged with $1.
one() {
    tag=$1
    bin=$2/tests/bench
    {
        BENCH_REPEAT=1 BENCH_ONLY=tiny_ordered_default "$bin/bench_tiny" 4000000 2>/dev/null
        BENCH_REPEAT=1 BENCH_CPU_MS=300 "$bin/bench_cpu" 2 2>/dev/null | grep '^cpu_1ms_pmap_w2 '
        BENCH_REPEAT=1 "$bin/bench_large" 128 2>/dev/null | grep '^large_8MiB_echo '
        BENCH_HEAP_MIB=0 BENCH_MANY=0 "$bin/bench_create" 30 2>/dev/null | grep '^create_destroy_w2_us '
    } | sed "s/^/$tag $round /" >>"$log"
}

echo "machine: $(nproc) CPUs, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
round=1
while [ "$round" -le "$rounds" ]; do
    if [ $((round % 2)) -eq 1 ]; then
        one A "$a"; one B "$b"
    else
        one B "$b"; one A "$a"
    fi
    echo "round $round of $rounds done" >&2
    round=$((round + 1))
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

awk -v rounds="$rounds" '
function median(arr, n,    i, j, t) {
    for (i = 2; i <= n; i++) {
        t = arr[i]
        for (j = i - 1; j >= 1 && arr[j] > t; j--) arr[j + 1] = arr[j]
        arr[j + 1] = t
    }
    return n % 2 ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
}
{ v[$1, $2, $3] = $4; names[$3] = 1 }
END {
    printf "%-24s %12s %12s %8s %8s %8s\n", "workload", "A median", "B median", "B/A", "min", "max"
    for (k in names) {
        n = 0
        for (r = 1; r <= rounds; r++) {
            if (!(("A", r, k) in v) || !(("B", r, k) in v)) continue
            n++
            av[n] = v["A", r, k]; bv[n] = v["B", r, k]
            # Times (s, us) are better when smaller: the ratio is A / B.
            ratio[n] = (k ~ /_us$|^cpu_/) ? av[n] / bv[n] : bv[n] / av[n]
        }
        if (n == 0) continue
        lo = hi = ratio[1]
        for (i = 2; i <= n; i++) { if (ratio[i] < lo) lo = ratio[i]; if (ratio[i] > hi) hi = ratio[i] }
        ma = median(av, n); mb = median(bv, n); mr = median(ratio, n)
        printf "%-24s %12.4g %12.4g %8.3f %8.3f %8.3f\n", k, ma, mb, mr, lo, hi
    }
}' "$log"
