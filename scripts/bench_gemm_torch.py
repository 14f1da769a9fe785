"""PyTorch's `F.linear` at the d-512 config's shapes, forward, in GFLOP/s: the other side of
the last table that `bench_fused_linear` prints (x `[8, 256, d_in]` against the block's four
weights, with a bias), on as many threads as kiln's benchmarks give PyTorch. In a venv outside
the repo (CI never needs it):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch
    /tmp/venv/bin/python scripts/bench_gemm_torch.py [--threads 2] [--iterations 30]
"""

import argparse
import time

import torch
import torch.nn.functional as F

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--iterations", type=int, default=30)
args = parser.parse_args()
torch.set_num_threads(args.threads)

print(f"torch {torch.__version__}, {args.threads} threads, median of {args.iterations} runs")
print("weight         ms       GFLOP/s")
with torch.no_grad():
    for d_in, d_out in [(512, 1536), (512, 512), (512, 2048), (2048, 512)]:
        x = torch.rand(8, 256, d_in)
        w = torch.rand(d_out, d_in)
        b = torch.rand(d_out)
        F.linear(x, w, b)  # warm
        times = []
        for _ in range(args.iterations):
            start = time.perf_counter()
            F.linear(x, w, b)
            times.append((time.perf_counter() - start) * 1e3)
        ms = sorted(times)[len(times) // 2]
        gflops = 2 * 8 * 256 * d_in * d_out / (ms * 1e-3) / 1e9
        print(f"[{d_in:>4}, {d_out:>4}]  {ms:8.2f} {gflops:9.0f}")
