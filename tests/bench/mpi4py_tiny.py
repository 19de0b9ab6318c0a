"""mpi4py.futures beside bench_mpi: tiny records (a pair of integers in, their
sum out) through MPIPoolExecutor.map, in order, with chunksize 1 and 1024.

    mpirun -np 3 /usr/bin/python3 -m mpi4py.futures mpi4py_tiny.py [n1024 [n1]]

Prints "name value unit" lines, as the C benchmarks do.
"""
import sys
import time

from mpi4py.futures import MPIPoolExecutor


def add(pair):
    return pair[0] + pair[1]


def rate(ex, n, chunksize):
    params = ((i & 0xFFFF, i >> 16) for i in range(n))
    t0 = time.perf_counter()
    got = 0
    for i, r in enumerate(ex.map(add, params, chunksize=chunksize)):
        if r != (i & 0xFFFF) + (i >> 16):
            raise SystemExit("wrong result at %d" % i)
        got += 1
    if got != n:
        raise SystemExit("%d results of %d" % (got, n))
    return n / (time.perf_counter() - t0)


def main():
    n1024 = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
    n1 = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    with MPIPoolExecutor() as ex:
        print("mpi4py_tiny_chunk1024 %.0f records/s" % rate(ex, n1024, 1024), flush=True)
        print("mpi4py_tiny_chunk1 %.0f records/s" % rate(ex, n1, 1), flush=True)


if __name__ == "__main__":
    main()
