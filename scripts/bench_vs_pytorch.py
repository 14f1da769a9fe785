"""kiln's GPT training step against the same model in PyTorch eager, alternating in one run.

Run once in a venv outside the repo (CI never needs it):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch numpy
    cargo build --release --example bench_gpt
    /tmp/venv/bin/python scripts/bench_vs_pytorch.py [--rounds 3] [--baseline]

Both sides: vocab 256, d_model 256, 4 pre-norm layers, 4 heads, seq 128, batch 16, learned
positions, tanh GELU, tied embeddings, AdamW; with `--arch llama`, transformers'
`LlamaForCausalLM` (its default SDPA attention) against kiln's `recipe::llama_model` of the same
sizes (RMSNorm, rotary, SwiGLU of width 8/3·d rounded up to 8, `--kv-heads` key/value heads
(default half the heads), no biases, untied); a step is forward + backward + optimizer update,
timed as the median of `--steps` steps after 2 warm-up steps. `--precision bf16`: kiln's
`--precision bf16` (f32 master weights, bf16 activations through its fused kernels) against
`torch.autocast("cpu", dtype=torch.bfloat16)` around PyTorch's forward (the loss in f32 on both). kiln runs as a separate process
(`target/release/examples/bench_gpt`); the two alternate `--rounds` times so that drift of the
machine hits both. Prints each measurement, the medians and kiln/PyTorch.

Peak memory: each side runs in its own process (PyTorch in a child of this script, `--worker`)
and reports its resident-set high-water mark (`VmHWM` in `/proc/self/status`; not `ru_maxrss`,
which Linux carries across `execve` from this script), printed beside its speed, with PyTorch's
right after `import torch` (the library's own share of its peak). With `--baseline` kiln's
process also holds the burn-nn model.
"""

import argparse
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, seq, d, layers, heads):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


def llama(a):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=a.vocab, hidden_size=a.d_model,
                         intermediate_size=((8 * a.d_model + 2) // 3 + 7) // 8 * 8,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads,
                         num_key_value_heads=kv_heads(a), max_position_embeddings=a.seq,
                         rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    return lambda ids: model(input_ids=ids).logits, model


def kv_heads(a):
    return a.kv_heads or max(a.heads // 2, 1)


def torch_tokens_per_s(a):
    torch.manual_seed(0)
    if a.arch == "llama":
        forward, model = llama(a)
    else:
        model = Gpt(a.vocab, a.seq, a.d_model, a.layers, a.heads)
        forward = model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    times = []
    for step in range(2 + a.steps):
        data = torch.randint(0, a.vocab, (a.batch, a.seq + 1))
        start = time.perf_counter()
        # `--precision bf16`: PyTorch's CPU autocast (f32 master weights, bf16 matmuls and the
        # ops autocast lists), against kiln's `--precision bf16`.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            logits = forward(data[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, a.vocab), data[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return a.batch * a.seq / statistics.median(times)


def peak_rss_mib():
    """This process's resident-set high-water mark in MiB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024


def run(cmd):
    """Runs `cmd`; returns its stdout and the peak RSS it reports (`peak_rss_mib: X`), or None
    (a binary built before it reported one)."""
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    peak = re.search(r"^peak_rss_mib: ([0-9.]+)", out, re.M)
    return out, peak and float(peak.group(1))


def model_args(a):
    args = ["--d-model", str(a.d_model), "--layers", str(a.layers), "--heads", str(a.heads),
            "--seq", str(a.seq), "--batch", str(a.batch), "--steps", str(a.steps), "--vocab", str(a.vocab),
            "--arch", a.arch, "--precision", a.precision]
    if a.kv_heads:
        args += ["--kv-heads", str(a.kv_heads)]
    return args


def torch_worker(a):
    print(f"rss_after_import_mib: {peak_rss_mib():.0f}")
    print(f"tokens_per_s: {torch_tokens_per_s(a)}")
    print(f"peak_rss_mib: {peak_rss_mib():.0f}")


def torch_measured(a):
    out, rss = run([sys.executable, __file__, "--worker"] + model_args(a))
    tps = float(re.search(r"^tokens_per_s: ([0-9.]+)", out, re.M).group(1))
    base = float(re.search(r"^rss_after_import_mib: ([0-9.]+)", out, re.M).group(1))
    return tps, rss, base


def kiln_tokens_per_s(a):
    cmd = [a.binary] + model_args(a)
    if a.baseline:
        cmd.append("--baseline")
    out, rss = run(cmd)
    burn = re.search(r"burn_nn_tokens_per_s: ([0-9.]+)", out)
    tps = float(re.search(r"^tokens_per_s: ([0-9.]+)", out, re.M).group(1))
    return tps, burn and float(burn.group(1)), rss


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--baseline", action="store_true", help="also time burn-nn's TransformerEncoder GPT")
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="bf16: kiln --precision bf16 against torch.autocast('cpu', bfloat16)")
    p.add_argument("--binary", default="target/release/examples/bench_gpt")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return torch_worker(a)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, precision {a.precision}")
    kiln, burn, pt, kiln_rss, pt_rss = [], [], [], [], []
    for r in range(a.rounds):
        k, b, krss = kiln_tokens_per_s(a)
        t, trss, tbase = torch_measured(a)
        kiln.append(k)
        pt.append(t)
        if krss:
            kiln_rss.append(krss)
        pt_rss.append(trss)
        if b:
            burn.append(b)
        kmem = f" (peak RSS {krss:,.0f} MiB)" if krss else ""
        print(f"round {r + 1}: kiln {k:,.0f} tokens/s{kmem}"
              + (f" | burn-nn {b:,.0f}" if b else "")
              + f" | pytorch {t:,.0f} (peak RSS {trss:,.0f} MiB, {tbase:,.0f} after import)")
    km, tm = statistics.median(kiln), statistics.median(pt)
    print(f"median: kiln {km:,.0f} tokens/s, pytorch {tm:,.0f} tokens/s, kiln/pytorch {km / tm:.2f}x")
    if kiln_rss:
        print(f"peak RSS: kiln {max(kiln_rss):,.0f} MiB, pytorch {max(pt_rss):,.0f} MiB")
    if burn:
        bm = statistics.median(burn)
        print(f"median: burn-nn {bm:,.0f} tokens/s, kiln/burn-nn {km / bm:.2f}x")


if __name__ == "__main__":
    main()
