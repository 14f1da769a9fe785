#!/usr/bin/env bash
# The checks that need NVIDIA GPUs, for a machine that has them (none of kiln's build machines
# does): CUDA training, and NCCL between the GPUs of one machine under mpirun.
#
#   scripts/gpu_check.sh            # uses every GPU nvidia-smi lists
#
# Needs the CUDA toolkit, NCCL (libnccl2), Open MPI (libopenmpi-dev openmpi-bin) and libclang.
set -euo pipefail
cd "$(dirname "$0")/.."
gpus=$(nvidia-smi --list-gpus | wc -l)
[ "$gpus" -ge 1 ] || { echo "no GPU found"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

cargo build --release --features cuda,nccl --example train_gpt --example bench_dist
bin=target/release/examples/train_gpt

echo "== the main job on one GPU"
$bin --device cuda --max-steps 300 --seed 7 --batch 32 --accum 2 | tee /tmp/kiln-gpu-single.log

if [ "$gpus" -ge 2 ]; then
  echo "== 2 ranks, one GPU each (cuda:{local rank}), gradients through MPI"
  mpirun -np 2 --bind-to none $bin --device cuda --max-steps 300 --seed 7 --batch 32 \
    | tee /tmp/kiln-gpu-dp.log
  echo "== the same parameters? (2 ranks x 32 = 1 GPU x 2 x 32)"
  diff <(grep params_sha256 /tmp/kiln-gpu-single.log) <(grep params_sha256 /tmp/kiln-gpu-dp.log) \
    && echo "identical"
  echo "== NCCL collectives against MPI's"
  test_bin=$(cargo test --release -p kiln-dist --features nccl --test nccl --no-run 2>&1 \
    | grep -o 'target/release/deps/nccl-[0-9a-f]*' | head -1)
  mpirun -np 2 --bind-to none "$test_bin" --ignored --nocapture
fi
