#!/usr/bin/env python3
"""Generate the tiny HuggingFace Llama-family test fixtures under tests/fixtures/.

How to run (from the repository root; a venv outside the repository, CI needs no Python):

    python3 -m venv /tmp/venv \\
        && /tmp/venv/bin/pip install torch transformers safetensors numpy \\
        && /tmp/venv/bin/python scripts/make_llama_fixtures.py

Each fixture folder is what ``save_pretrained`` writes (``config.json`` and safetensors weights),
plus:

- ``reference.json``: the inputs (``input_ids`` [2][9]) and a greedy ``generate`` (prompt and
  result) that transformers computes;
- ``reference.safetensors``: ``logits`` [2, 9, vocab] of the inputs, ``loss`` (the causal-LM loss
  of ``labels = input_ids``, shifted as transformers shifts them) and ``grad.<name>``, the
  gradient of that loss for every parameter under transformers' name (float32, eager attention,
  no dropout).

The fixtures cover what the Llama family varies on:

    llama3_gqa/      LlamaForCausalLM: grouped-query attention (4 heads, 2 kv heads), an explicit
                     head_dim (16) wider than hidden/heads (8), "llama3" rope scaling with all
                     three frequency bands, untied head; config.json in the transformers 4.x
                     layout (rope_theta and rope_scaling at the top level), and a tokenizer.json
                     (word-level) with a text prompt's greedy generation
    llama_mqa_tied/  LlamaForCausalLM: multi-query attention (1 kv head), tied embeddings,
                     "linear" rope scaling, attention_bias and mlp_bias; the 5.x layout
                     (rope_parameters)
    qwen2/           Qwen2ForCausalLM: q/k/v biases (o_proj none), GQA, tied; sharded
                     safetensors (model.safetensors.index.json); the 4.x layout
    mistral_window/  MistralForCausalLM: GQA and a sliding window of 4, shorter than the
                     9-token inputs; the 5.x layout
    llama_bf16/      LlamaForCausalLM saved in bfloat16; the references are computed in float32
                     from the bf16 weights

Parameters are redrawn at a visible scale (RMSNorm weights 1 + 0.2·N(0, 1), embeddings
0.3·N(0, 1), biases 0.1·N(0, 1), other weights 0.15·N(0, 1)) so that a wrong mapping shows. Seeded:
reruns with the same torch and transformers reproduce the same files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

SEED = 4321
BATCH = 2
SEQ_LEN = 9
NEW_TOKENS = 6
ATTN_IMPL = "eager"


def redraw_parameters(model: torch.nn.Module) -> None:
    """Redraw every parameter at a visible scale; tied parameters are yielded once and stay tied."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            if type(owner).__name__.endswith("RMSNorm"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif isinstance(owner, torch.nn.Embedding):
                param.copy_(0.3 * torch.randn_like(param))
            elif leaf == "bias":
                param.copy_(0.1 * torch.randn_like(param))
            else:
                param.copy_(0.15 * torch.randn_like(param))


def build(model_cls, config):
    config._attn_implementation = ATTN_IMPL
    model = model_cls(config).to(torch.float32)
    redraw_parameters(model)
    model.eval()
    return model


def greedy(model, prompt: torch.Tensor) -> torch.Tensor:
    """transformers' greedy generate, cross-checked against an argmax loop over full forwards."""
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            pad_token_id=0,
        )
        seq = prompt.clone()
        for _ in range(NEW_TOKENS):
            nxt = model(input_ids=seq).logits[:, -1, :].argmax(dim=-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq), f"generate {out.tolist()} != argmax loop {seq.tolist()}"
    return out


def references(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits, the causal-LM loss and every parameter's gradient of it."""
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    tensors = {"logits": out.logits.detach().clone(), "loss": out.loss.detach().reshape(1).clone()}
    absmax = tensors["logits"].abs().max().item()
    assert 0.5 < absmax < 100.0, f"logits absmax {absmax}"
    for name, param in model.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        tensors[f"grad.{name}"] = param.grad.detach().clone().contiguous()
    model.zero_grad()
    return tensors


def to_4x_layout(out_dir: Path) -> None:
    """Rewrite config.json as transformers 4.x writes it (every Llama 3 on the hub): rope_theta
    and rope_scaling at the top level instead of 5.x's rope_parameters."""
    path = out_dir / "config.json"
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    if rope.get("rope_type", "default") != "default":
        config["rope_scaling"] = rope
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write(name: str, model, model_cls, ids, prompt, layout: str, **save_kwargs) -> dict:
    out_dir = FIXTURES / name
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, **save_kwargs)
    if layout == "4.x":
        to_4x_layout(out_dir)
    # What kiln reads is what transformers reads back: reload and compute from the folder.
    reloaded = model_cls.from_pretrained(out_dir, attn_implementation=ATTN_IMPL, dtype=torch.float32).eval()
    tensors = references(reloaded, ids)
    generated = greedy(reloaded, prompt)
    save_file(tensors, str(out_dir / "reference.safetensors"), metadata={"format": "pt"})
    ref = {
        "input_ids": ids.tolist(),
        "generate": {"prompt": prompt.tolist(), "greedy": generated.tolist()},
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (out_dir / "reference.json").write_text(json.dumps(ref) + "\n")
    print(f"  {name}: loss {tensors['loss'].item():.4f}, greedy {generated.tolist()}")
    return ref


def word_tokenizer(vocab: int, out_dir: Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `w0`..`w{vocab-1}` (whitespace-separated), as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = {f"w{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0")
    fast.save_pretrained(out_dir)
    return fast


def rand_ids(gen: torch.Generator, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (BATCH, SEQ_LEN), generator=gen, dtype=torch.long)


def main() -> int:
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)

    # Llama 3 style: GQA, explicit head_dim, llama3 rope scaling; the 4.x config layout.
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        bos_token_id=1,
        eos_token_id=2,
    )
    model = build(LlamaForCausalLM, config)
    out_dir = FIXTURES / "llama3_gqa"
    tokenizer = word_tokenizer(config.vocab_size, out_dir)
    prompt_text = "w5 w17 w3 w40"
    prompt = tokenizer(prompt_text, return_tensors="pt").input_ids
    ref = write("llama3_gqa", model, LlamaForCausalLM, rand_ids(gen, 64), prompt, "4.x")
    ref["generate"]["prompt_text"] = prompt_text
    ref["generate"]["text"] = tokenizer.decode(ref["generate"]["greedy"][0])
    (out_dir / "reference.json").write_text(json.dumps(ref) + "\n")
    print(f"    text: {ref['generate']['text']!r}")

    # Multi-query attention, tied embeddings, linear rope scaling, biases everywhere; 5.x.
    config = LlamaConfig(
        vocab_size=48,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0},
    )
    model = build(LlamaForCausalLM, config)
    assert model.lm_head.weight is model.model.embed_tokens.weight, "llama_mqa_tied: not tied"
    write("llama_mqa_tied", model, LlamaForCausalLM, rand_ids(gen, 48), torch.tensor([[3, 9, 27]]), "5.x")

    # Qwen2: q/k/v biases, GQA, tied; sharded; 4.x layout.
    config = Qwen2Config(
        vocab_size=56,
        hidden_size=32,
        intermediate_size=44,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    model = build(Qwen2ForCausalLM, config)
    write("qwen2", model, Qwen2ForCausalLM, rand_ids(gen, 56), torch.tensor([[7, 1, 30, 12]]), "4.x",
          max_shard_size="20KB")
    assert (FIXTURES / "qwen2" / "model.safetensors.index.json").is_file(), "qwen2 is not sharded"

    # Mistral: a sliding window shorter than the inputs; 5.x layout.
    config = MistralConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=36,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=4,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = build(MistralForCausalLM, config)
    write("mistral_window", model, MistralForCausalLM, rand_ids(gen, 40), torch.tensor([[2, 8, 33, 5, 21, 9]]), "5.x")

    # A bf16 checkpoint: the weights rounded to bf16; references in f32 from those weights.
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = build(LlamaForCausalLM, config).to(torch.bfloat16)
    write("llama_bf16", model, LlamaForCausalLM, rand_ids(gen, 40), torch.tensor([[4, 11]]), "5.x")
    with safe_open(str(FIXTURES / "llama_bf16" / "model.safetensors"), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys()), "llama_bf16 is not bf16"
    return 0


if __name__ == "__main__":
    sys.exit(main())
