#!/usr/bin/env bash
# The distributed benchmarks of docs/benchmarks.md: all-reduce bandwidth (shared memory and
# TCP) against the raw mpi crate, step time of 2 ranks against 1 process, bucket sizes, and
# half-precision traffic. Needs Open MPI (apt-get install libopenmpi-dev openmpi-bin
# libclang-dev pkg-config).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features mpi --example bench_dist
bin=target/release/examples/bench_dist
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi="mpirun --oversubscribe --bind-to none"

echo "## all-reduce, 2 ranks, shared memory"
$mpi -np 2 $bin collectives
echo
echo "## all-reduce, 2 ranks, TCP (--mca btl tcp,self: the transport between machines)"
$mpi -np 2 --mca btl tcp,self $bin collectives
echo
echo "## step time: 1 process against 2 ranks with the same per-rank batch"
$mpi -np 1 $bin step
$mpi -np 2 $bin step
echo
echo "## bucket size (2 ranks)"
for mb in 0.25 1 4 25; do $mpi -np 2 $bin step --bucket-mb $mb; done
echo
echo "## gradient traffic in f16 and bf16 (2 ranks)"
for dtype in f16 bf16; do $mpi -np 2 $bin step --reduce-dtype $dtype; done
