#!/bin/sh
# pmap_mpi's figures, in one run: bench_mpi over the default transport and
# over TCP, each beside the local pool, and mpi4py.futures (when Debian's
# python3-mpi4py is installed) between them, all with 3 ranks.
#   tests/bench/mpi.sh BUILD_DIR [tiny_records [ms_tasks]]
set -eu
build=${1:?usage: mpi.sh BUILD_DIR [tiny_records [ms_tasks]]}
tiny=${2:-1000000}
ms=${3:-2000}
here=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
run() { mpirun -np 3 --oversubscribe "$@"; }
py=/usr/bin/python3   # Debian's mpi4py serves the system Python only
have_py=0
"$py" -c 'import mpi4py.futures' 2>/dev/null && have_py=1
echo "# default transport"
run "$build/tests/bench/bench_mpi" "$tiny" "$ms"
if [ $have_py = 1 ]; then
  echo "# mpi4py.futures, default transport"
  run "$py" -m mpi4py.futures "$here/mpi4py_tiny.py" "$tiny" 20000
fi
echo "# TCP (--mca btl tcp,self)"
BENCH_RSS_RECORDS=0 run --mca btl tcp,self "$build/tests/bench/bench_mpi" "$tiny" "$ms"
if [ $have_py = 1 ]; then
  echo "# mpi4py.futures, TCP"
  run --mca btl tcp,self "$py" -m mpi4py.futures "$here/mpi4py_tiny.py" "$tiny" 20000
fi
