"""kiln's KV-cache generation (f32, bf16 and int8) against HF transformers' `generate` (f32 and
bf16), alternating in one run.

Run once in a venv outside the repo (CI never needs it):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers
    cargo build --release --example bench_generate
    /tmp/venv/bin/python scripts/bench_generate.py [--rounds 3] [--batch 1,8]

Both sides: GPT-2 small's shape (vocab 50257, 12 layers, 12 heads, d_model 768, context 1024,
tanh GELU, tied embeddings) with random weights, greedy decoding with a KV cache, a random prompt
of `--prompt` tokens per sequence. Each side times `generate` for one new token (the prefill)
and for `--new-tokens`; decoding tokens/s is `batch · (new_tokens − 1)` over the difference.
HF runs `GPT2LMHeadModel.generate(do_sample=False, min_new_tokens=max_new_tokens)` under
`torch.no_grad()` in f32, and the same model cast with `.to(torch.bfloat16)`, on
`torch.get_num_threads()` threads; kiln runs `target/release/examples/bench_generate` (f32 and
bf16 `Gpt::generate`, int8 `QuantizedGpt::generate`) as a separate process. The two alternate `--rounds` times, so drift of the machine hits both.

`--arch llama [--kv-heads 4]`: transformers' `LlamaForCausalLM` (its default SDPA attention)
and kiln's `recipe::llama_model` of the same sizes (vocab 50257, 12 layers, 12 heads over
`--kv-heads` key/value heads, d_model 768, SwiGLU of width 2048, rotary, RMSNorm, untied).
"""

import argparse
import re
import statistics
import subprocess
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def hf_decode_tokens_per_s(model, batch, prompt, new_tokens):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=g)
    mask = torch.ones_like(ids)

    def timed(n):
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                           min_new_tokens=n, pad_token_id=0)
        return time.perf_counter() - start

    timed(2)  # warm-up, as kiln's untimed first call
    prefill = timed(1)
    full = timed(new_tokens)
    return batch * (new_tokens - 1) / (full - prefill)


def kiln_decode_tokens_per_s(a, batch):
    cmd = [a.binary, "--batch", str(batch), "--prompt", str(a.prompt), "--new-tokens",
           str(a.new_tokens), "--rounds", "1", "--arch", a.arch, "--kv-heads", str(a.kv_heads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [float(re.search(rf"^{v}_decode_tokens_per_s_b{batch}: ([0-9.]+)", out, re.M).group(1))
            for v in ("f32", "bf16", "int8")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", default="1,8")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--binary", default="target/release/examples/bench_generate")
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    p.add_argument("--kv-heads", type=int, default=4)
    a = p.parse_args()
    torch.manual_seed(0)
    if a.arch == "llama":
        config = LlamaConfig(vocab_size=50257, hidden_size=768, intermediate_size=2048,
                             num_hidden_layers=12, num_attention_heads=12,
                             num_key_value_heads=a.kv_heads, max_position_embeddings=1024,
                             rms_norm_eps=1e-5, tie_word_embeddings=False)
        model = LlamaForCausalLM(config).eval()
    else:
        model = GPT2LMHeadModel(GPT2Config()).eval()
    import copy
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {a.arch}, GPT-2 small's sizes, "
          f"prompt {a.prompt}, {a.new_tokens} new tokens; decoding tokens/s")
    names = ["kiln f32", "kiln bf16", "kiln int8", "HF f32", "HF bf16"]
    for batch in (int(b) for b in a.batch.split(",")):
        runs = [[] for _ in names]
        for r in range(a.rounds):
            figures = kiln_decode_tokens_per_s(a, batch) + [
                hf_decode_tokens_per_s(m, batch, a.prompt, a.new_tokens) for m in (model, model_bf16)]
            for run, f in zip(runs, figures):
                run.append(f)
            print(f"batch {batch} round {r + 1}: " + " | ".join(f"{n} {f:.1f}" for n, f in zip(names, figures)))
        med = dict(zip(names, (statistics.median(run) for run in runs)))
        print(f"batch {batch} median tokens/s: " + ", ".join(f"{n} {v:.1f}" for n, v in med.items()))
        print(f"batch {batch}: kiln f32/HF f32 {med['kiln f32'] / med['HF f32']:.2f}x, "
              f"kiln bf16/HF bf16 {med['kiln bf16'] / med['HF bf16']:.2f}x, "
              f"kiln bf16/kiln f32 {med['kiln bf16'] / med['kiln f32']:.2f}x, "
              f"kiln int8/HF f32 {med['kiln int8'] / med['HF f32']:.2f}x")


if __name__ == "__main__":
    main()
