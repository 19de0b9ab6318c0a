#!/usr/bin/env python3
"""The Python original on the workloads of libpmap's benchmarks.

Runs multiprocessing.Pool.imap (and imap_unordered) with chunksize 1 (its
default) and 1024 (hand-tuned) on the same workloads as tests/bench/bench_*
and prints one "name value unit" line per figure, names prefixed "py_", in
the format compare.sh reads. Standard library only.

    python3 py_baseline.py [workload ...]   tiny cpu large latency create rss
                                            (default: all)
    env BENCH_REPEAT   runs per figure, the best is printed (default 3)
"""
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

NCPU = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
REPEAT = max(1, int(os.environ.get("BENCH_REPEAT", "3")))


def figure(name, value, unit):
    print(f"py_{name} {value:.6g} {unit}", flush=True)


# ---- tasks (module level, so that workers can unpickle them) -------------

def add(pair):
    """The tiny record: two ints in, their sum out."""
    return pair[0] + pair[1]


def echo(data):
    return data


SPIN_STEPS = 1


def spin(seed):
    """About 1 ms of pure-Python work (SPIN_STEPS is calibrated in the
    parent before the pool forks, so workers inherit it)."""
    x = seed | 1
    for _ in range(SPIN_STEPS):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return x


def pairs(n):
    for i in range(n):
        yield (i & 0xFFFF, i >> 16)


# ---- workloads ------------------------------------------------------------

def tiny():
    cases = [("ordered", 1, 100_000), ("ordered", 1024, 2_000_000),
             ("unordered", 1, 100_000), ("unordered", 1024, 2_000_000)]
    with mp.Pool(NCPU) as pool:
        list(pool.imap(add, pairs(1000), chunksize=64))  # warm-up
        for order, cs, n in cases:
            best = 0.0
            for _ in range(REPEAT):
                imap = pool.imap if order == "ordered" else pool.imap_unordered
                t0 = time.perf_counter()
                total = 0
                for r in imap(add, pairs(n), chunksize=cs):
                    total += r
                dt = time.perf_counter() - t0
                best = max(best, n / dt)
            figure(f"tiny_{order}_cs{cs}", best, "records/s")


def calibrate_spin(seconds):
    global SPIN_STEPS
    SPIN_STEPS = 1000
    while True:
        t0 = time.perf_counter()
        spin(1)
        if time.perf_counter() - t0 > 0.005:
            break
        SPIN_STEPS *= 2
    best = min(timed(lambda: spin(1)) for _ in range(5))
    SPIN_STEPS = max(1, int(SPIN_STEPS * seconds / best))


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu():
    calibrate_spin(1e-3)
    n = 500
    serial = min(timed(lambda: [spin(i + 1) for i in range(n)]) for _ in range(REPEAT))
    figure("cpu_1ms_tasks", n, "tasks")
    figure("cpu_1ms_serial", serial, "s")
    for w in range(1, NCPU + 1):
        with mp.Pool(w) as pool:
            list(pool.imap(spin, range(w * 2)))  # warm-up
            wall = min(timed(lambda: list(pool.imap(spin, range(1, n + 1)))) for _ in range(REPEAT))
        figure(f"cpu_1ms_w{w}", wall, "s")
        figure(f"cpu_1ms_w{w}_speedup", serial / wall, "x")
        figure(f"cpu_1ms_w{w}_eff", 100.0 * serial / (w * wall), "%")


def large():
    total = 256 << 20
    with mp.Pool(NCPU) as pool:
        for mib in (1, 8, 64):
            size = mib << 20
            n = max(4, total // size)
            payload = bytes(size)
            best = 0.0
            for _ in range(REPEAT):
                t0 = time.perf_counter()
                for r in pool.imap(echo, (payload for _ in range(n))):
                    if len(r) != size:
                        raise SystemExit("echo returned a wrong size")
                dt = time.perf_counter() - t0
                best = max(best, size * n / dt / 1e6)
            figure(f"large_{mib}MiB_echo", best, "MB/s")


def latency():
    with mp.Pool(NCPU) as pool:
        for _ in range(20):
            list(pool.imap(echo, [b"x" * 8]))
        v = []
        for _ in range(300):
            time.sleep(0.002)
            t0 = time.perf_counter()
            list(pool.imap(echo, [b"x" * 8]))
            v.append(time.perf_counter() - t0)
    v.sort()
    figure("latency_idle_us", 1e6 * statistics.median(v), "us")
    figure("latency_idle_p90_us", 1e6 * v[len(v) * 9 // 10], "us")


def create():
    for w in (2, 8):
        v = []
        for _ in range(15):
            t0 = time.perf_counter()
            pool = mp.Pool(w)
            pool.close()
            pool.join()
            v.append(time.perf_counter() - t0)
        figure(f"create_destroy_w{w}_us", 1e6 * statistics.median(v), "us")


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


def rss_case(n, stall):
    """One case in a process of its own (see rss())."""
    with mp.Pool(NCPU) as pool:
        list(pool.imap(add, pairs(1000), chunksize=64))
        base = status_kib("VmRSS:")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak to the current RSS
        except OSError:
            pass
        it = pool.imap(add, pairs(n), chunksize=1024)
        next(it)
        if stall:
            time.sleep(stall)
        for _ in it:
            pass
        peak = status_kib("VmHWM:")
    return (peak - base) / 1024.0


def rss():
    n = int(os.environ.get("BENCH_PY_RSS_RECORDS", "2000000"))
    figure("rss_records", n, "records")
    for name, stall in (("fast", 0), ("stalled", 2.0)):
        out = subprocess.run([sys.executable, __file__, "--rss-case", str(n), str(stall)],
                             check=True, capture_output=True, text=True).stdout
        figure(f"rss_growth_{name}_MiB", float(out.strip()), "MiB")


WORKLOADS = {"tiny": tiny, "cpu": cpu, "large": large, "latency": latency,
             "create": create, "rss": rss}


def main(argv):
    if len(argv) == 4 and argv[1] == "--rss-case":
        print(rss_case(int(argv[2]), float(argv[3])))
        return 0
    names = argv[1:] or list(WORKLOADS)
    for name in names:
        if name not in WORKLOADS:
            print(f"unknown workload {name}; known: {' '.join(WORKLOADS)}", file=sys.stderr)
            return 2
    mp.set_start_method("fork")
    for name in names:
        WORKLOADS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
