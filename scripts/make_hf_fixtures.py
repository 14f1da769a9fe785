#!/usr/bin/env python3
"""Generate the tiny HuggingFace GPT-2 / BERT test fixtures under tests/fixtures/.

How to run (from the repository root):

    python3 -m venv /tmp/venv \
        && /tmp/venv/bin/pip install torch transformers safetensors numpy \
        && /tmp/venv/bin/python scripts/make_hf_fixtures.py

Each fixture directory is written exactly as ``model.save_pretrained(dir)``
writes it with safetensors serialization (``config.json`` + ``model.safetensors``,
float32), plus a ``reference.json`` holding the inputs and the outputs that
transformers computes for them (float32, under ``torch.no_grad()``, eager
attention):

    tests/fixtures/gpt2/         GPT2LMHeadModel, tied lm_head       -> logits [2][7][vocab],
                                 plus "generate": greedy, 6 new tokens
    tests/fixtures/gpt2_untied/  GPT2LMHeadModel, separate lm_head   -> logits [2][7][vocab]
    tests/fixtures/bert_mlm/     BertForMaskedLM, tied decoder       -> logits [2][7][vocab]
    tests/fixtures/bert_base/    BertModel with pooler               -> last_hidden_state [2][7][hidden],
                                                                        pooler_output [2][hidden]
    tests/fixtures/bert_cls/     BertForSequenceClassification       -> logits [2][num_labels]

BERT references also carry "token_type_ids" and "attention_mask" (row 0 all
ones, row 1 right-padded: its last two positions are 0).

The default HF init gives near-zero logits, which would hide a wrong weight
mapping, so every parameter is redrawn at a visible scale (see
``redraw_parameters``).  Everything is seeded, so reruns with the same
torch/transformers versions reproduce the same files.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

SEED = 1234
BATCH = 2
SEQ_LEN = 7
PAD_LEN = 2  # right padding on the second BERT row
ATTN_IMPL = "eager"  # reference math; not written to config.json


# --------------------------------------------------------------------------- #
# Parameter redraw
# --------------------------------------------------------------------------- #
def redraw_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Redraw every parameter so that outputs are far from zero.

    LayerNorm weight = 1 + 0.2*randn, LayerNorm bias = 0.1*randn,
    embeddings (word / position / token type) = 0.3*randn,
    every other bias = 0.1*randn, every other weight = 0.15*randn.

    ``named_parameters()`` yields a tied Parameter only once, so tied weights
    stay tied (e.g. GPT-2 wte / lm_head, BERT word embeddings / MLM decoder).
    """
    counts = {"layernorm_weight": 0, "layernorm_bias": 0, "embedding": 0, "bias": 0, "weight": 0}
    with torch.no_grad():
        for name, param in model.named_parameters():
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            if isinstance(owner, torch.nn.LayerNorm):
                if leaf == "weight":
                    param.copy_(1.0 + 0.2 * torch.randn_like(param))
                    counts["layernorm_weight"] += 1
                else:
                    param.copy_(0.1 * torch.randn_like(param))
                    counts["layernorm_bias"] += 1
            elif isinstance(owner, torch.nn.Embedding):
                param.copy_(0.3 * torch.randn_like(param))
                counts["embedding"] += 1
            elif leaf == "bias":
                param.copy_(0.1 * torch.randn_like(param))
                counts["bias"] += 1
            else:
                param.copy_(0.15 * torch.randn_like(param))
                counts["weight"] += 1
    return counts


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def build(model_cls, config):
    """Construct a float32 model with eager attention, seeded and redrawn."""
    try:
        model = model_cls(config, attn_implementation=ATTN_IMPL)
    except TypeError:
        config._attn_implementation = ATTN_IMPL
        model = model_cls(config)
    model = model.to(torch.float32)
    redraw_parameters(model)
    model.eval()
    return model


def save(model, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    # transformers < 5 defaults to safetensors too, but say so explicitly where
    # the argument still exists (it was removed in v5, where safetensors is the only format).
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    model.save_pretrained(out_dir, **kwargs)
    assert (out_dir / "model.safetensors").is_file(), f"no model.safetensors in {out_dir}"


def rand_ids(gen: torch.Generator, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (BATCH, SEQ_LEN), generator=gen, dtype=torch.long)


def bert_inputs(gen: torch.Generator, vocab: int, type_vocab: int) -> dict[str, torch.Tensor]:
    input_ids = rand_ids(gen, vocab)
    if type_vocab >= 3:
        token_type_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 0, 1, 2]])
    else:
        token_type_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0]])
    attention_mask = torch.ones(BATCH, SEQ_LEN, dtype=torch.long)
    attention_mask[1, SEQ_LEN - PAD_LEN :] = 0
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def check_tensor(name: str, t: torch.Tensor) -> None:
    assert t.dtype == torch.float32, f"{name}: dtype {t.dtype}"
    assert torch.isfinite(t).all(), f"{name}: non-finite values"
    absmax = t.abs().max().item()
    std = t.std().item()
    print(f"    {name:18s} shape={list(t.shape)} std={std:.3f} absmax={absmax:.3f}")
    assert absmax > 0.5, f"{name}: outputs too close to zero ({absmax})"
    assert absmax < 100.0, f"{name}: outputs suspiciously large ({absmax})"


def write_reference(out_dir: Path, ref: dict) -> None:
    with open(out_dir / "reference.json", "w") as f:
        json.dump(ref, f)
        f.write("\n")


def check_saved(model_cls, model, out_dir: Path, inputs: dict[str, torch.Tensor], outputs: dict) -> None:
    """Safetensors content is float32, and reloading reproduces the reference outputs."""
    with safe_open(str(out_dir / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            assert t.dtype == torch.float32, f"{out_dir.name}: {key} is {t.dtype}"
    reloaded = model_cls.from_pretrained(out_dir, attn_implementation=ATTN_IMPL).eval()
    with torch.no_grad():
        out = reloaded(**inputs)
    for k, ref in outputs.items():
        got = getattr(out, k)
        assert torch.equal(got, ref), f"{out_dir.name}: reloaded {k} differs"


def run_and_record(model_cls, model, out_dir: Path, inputs: dict[str, torch.Tensor], keys: list[str]) -> dict:
    with torch.no_grad():
        out = model(**inputs)
    outputs = {k: getattr(out, k).detach().clone() for k in keys}
    print(f"  {out_dir.name}:")
    for k, v in outputs.items():
        check_tensor(k, v)
    save(model, out_dir)
    check_saved(model_cls, model, out_dir, inputs, outputs)
    ref = {k: v.tolist() for k, v in inputs.items()}
    ref.update({k: v.tolist() for k, v in outputs.items()})
    return ref


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #
def greedy_reference(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Plain argmax loop over full forward passes (no KV cache), to cross-check generate()."""
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=seq).logits
            nxt = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    return seq


def make_gpt2(gen: torch.Generator) -> None:
    config = GPT2Config(
        vocab_size=61,
        n_positions=24,
        n_embd=48,
        n_layer=2,
        n_head=4,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
    )
    model = build(GPT2LMHeadModel, config)
    assert model.lm_head.weight is model.transformer.wte.weight, "gpt2: lm_head not tied"
    out_dir = FIXTURES / "gpt2"
    inputs = {"input_ids": rand_ids(gen, config.vocab_size)}
    ref = run_and_record(GPT2LMHeadModel, model, out_dir, inputs, ["logits"])

    prompt = torch.tensor([[5, 17, 3]])
    with torch.no_grad():
        greedy = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=6,
            pad_token_id=0,
        )
    manual = greedy_reference(model, prompt, 6)
    assert torch.equal(greedy, manual), f"generate {greedy.tolist()} != argmax loop {manual.tolist()}"
    assert greedy.shape == (1, 9), greedy.shape
    print(f"    greedy             {greedy.tolist()}")
    ref["generate"] = {"prompt": prompt.tolist(), "greedy": greedy.tolist()}
    write_reference(out_dir, ref)


def make_gpt2_untied(gen: torch.Generator) -> None:
    config = GPT2Config(
        vocab_size=37,
        n_positions=24,
        n_embd=40,
        n_layer=3,
        n_head=5,
        n_inner=100,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
    )
    model = build(GPT2LMHeadModel, config)
    assert model.lm_head.weight is not model.transformer.wte.weight, "gpt2_untied: lm_head is tied"
    out_dir = FIXTURES / "gpt2_untied"
    inputs = {"input_ids": rand_ids(gen, config.vocab_size)}
    ref = run_and_record(GPT2LMHeadModel, model, out_dir, inputs, ["logits"])
    with safe_open(str(out_dir / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" in f.keys(), "gpt2_untied: lm_head.weight missing from safetensors"
    write_reference(out_dir, ref)


def bert_config(**kw) -> BertConfig:
    base = dict(hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
    base.update(kw)
    return BertConfig(**base)


def make_bert_mlm(gen: torch.Generator) -> None:
    config = bert_config(
        vocab_size=53,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=32,
        type_vocab_size=2,
    )
    model = build(BertForMaskedLM, config)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight, "bert_mlm: decoder not tied"
    out_dir = FIXTURES / "bert_mlm"
    inputs = bert_inputs(gen, config.vocab_size, config.type_vocab_size)
    ref = run_and_record(BertForMaskedLM, model, out_dir, inputs, ["logits"])
    write_reference(out_dir, ref)


def make_bert_base(gen: torch.Generator) -> None:
    config = bert_config(
        vocab_size=45,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=72,
        max_position_embeddings=20,
        type_vocab_size=3,
    )
    model = build(BertModel, config)
    assert model.pooler is not None, "bert_base: no pooler"
    out_dir = FIXTURES / "bert_base"
    inputs = bert_inputs(gen, config.vocab_size, config.type_vocab_size)
    ref = run_and_record(BertModel, model, out_dir, inputs, ["last_hidden_state", "pooler_output"])
    write_reference(out_dir, ref)


def make_bert_cls(gen: torch.Generator) -> None:
    config = bert_config(
        vocab_size=41,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        type_vocab_size=2,
        num_labels=3,
    )
    model = build(BertForSequenceClassification, config)
    out_dir = FIXTURES / "bert_cls"
    inputs = bert_inputs(gen, config.vocab_size, config.type_vocab_size)
    ref = run_and_record(BertForSequenceClassification, model, out_dir, inputs, ["logits"])
    write_reference(out_dir, ref)


def print_keys(out_dir: Path) -> None:
    print(f"\n{out_dir.relative_to(REPO_ROOT)}/model.safetensors")
    with safe_open(str(out_dir / "model.safetensors"), framework="pt") as f:
        for key in sorted(f.keys()):
            sl = f.get_slice(key)
            print(f"  {key:60s} {sl.get_dtype()} {sl.get_shape()}")


def main() -> int:
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)
    FIXTURES.mkdir(parents=True, exist_ok=True)

    make_gpt2(gen)
    make_gpt2_untied(gen)
    make_bert_mlm(gen)
    make_bert_base(gen)
    make_bert_cls(gen)

    for name in ["gpt2", "gpt2_untied", "bert_mlm", "bert_base", "bert_cls"]:
        print_keys(FIXTURES / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
