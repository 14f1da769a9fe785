#!/usr/bin/env python3
"""Generate the peft LoRA adapter fixtures under tests/fixtures/lora_*/.

How to run (from the repository root; a venv outside the repository, CI needs no Python):

    python3 -m venv /tmp/venv \\
        && /tmp/venv/bin/pip install torch transformers peft safetensors numpy \\
        && /tmp/venv/bin/python scripts/make_lora_fixtures.py

Each fixture is an adapter folder as ``PeftModel.save_pretrained`` writes it
(``adapter_config.json``, ``adapter_model.safetensors``) over one of the committed base models
(``tests/fixtures/gpt2``, ``llama3_gqa``, ``qwen2``), plus ``reference.safetensors``:

- ``logits``: the base with the adapter on the base fixture's ``input_ids`` (reference.json),
  float32, dropout off;
- ``merged_logits``: the same after ``merge_and_unload()``;
- ``loss``: the causal-LM loss of ``labels = input_ids``;
- ``grad.<key>``: that loss's gradient for every tensor of the adapter file, under the file's
  key (``base_model.model.<module>.lora_A.weight``, ...; a module of ``modules_to_save`` under
  ``base_model.model.<module>.weight``).

The adapters have a non-zero ``lora_B`` (``init_lora_weights=False``, then every adapter weight
redrawn at 0.2·N(0, 1) so that the update is as large as the base's contribution) and
``lora_alpha`` ≠ ``r``, so that a wrong scaling or a transposed matrix shows:

    lora_gpt2/          GPT-2 (Conv1D, fan_in_fan_out): c_attn (one adapter over the fused
                        q|k|v), c_proj (attention's and the MLP's), c_fc; r 4, alpha 8
    lora_llama/         Llama 3 with GQA: all seven projections, rsLoRA (alpha/sqrt(r)), r 4,
                        alpha 6, the output layer in modules_to_save
    lora_qwen2_pattern/ Qwen2 (q/k/v biases): target_modules as a regular expression
                        (q_proj and v_proj of layer 1, o_proj of both), rank_pattern and
                        alpha_pattern giving v_proj r 2 alpha 5; layers_to_transform [1] is
                        not used (it cannot be combined with a regular expression in peft)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def make(name: str, base: str, config: LoraConfig, seed: int) -> None:
    torch.manual_seed(seed)
    base_dir = FIXTURES / base
    ids = torch.tensor(json.loads((base_dir / "reference.json").read_text())["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    model = get_peft_model(model, config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(0.2 * torch.randn_like(p))
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    # peft's model card: nothing kiln reads.
    (out / "README.md").unlink(missing_ok=True)
    # The adapter file's keys, and the parameter each comes from.
    keys = list(load_file(out / "adapter_model.safetensors").keys())
    params = dict(model.named_parameters())

    def param_of(key: str) -> torch.nn.Parameter:
        stem = key[: -len(".weight")] if key.endswith(".weight") else key
        for cand in (
            stem.replace(".lora_A", ".lora_A.default").replace(".lora_B", ".lora_B.default") + ".weight",
            stem + ".modules_to_save.default.weight",
        ):
            if cand in params:
                return params[cand]
        sys.exit(f"no parameter for adapter key {key}")

    model.zero_grad()
    output = model(input_ids=ids, labels=ids)
    output.loss.backward()
    tensors = {"logits": output.logits.detach().contiguous(), "loss": output.loss.detach().reshape(1)}
    for key in keys:
        grad = param_of(key).grad
        if grad is None:
            sys.exit(f"no gradient for {key}")
        tensors[f"grad.{key}"] = grad.detach().contiguous()
    with torch.no_grad():
        merged = model.merge_and_unload()
        tensors["merged_logits"] = merged(input_ids=ids).logits.contiguous()
    save_file(tensors, out / "reference.safetensors", metadata={
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "peft": peft.__version__,
        "base": base,
    })
    print(f"{name}: {len(keys)} adapter tensors, loss {output.loss.item():.4f}")


def main() -> None:
    make(
        "lora_gpt2",
        "gpt2",
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["c_attn", "c_proj", "c_fc"],
            fan_in_fan_out=True,
            lora_dropout=0.0,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        ),
        seed=1,
    )
    make(
        "lora_llama",
        "llama3_gqa",
        LoraConfig(
            r=4,
            lora_alpha=6,
            use_rslora=True,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            modules_to_save=["lm_head"],
            lora_dropout=0.0,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        ),
        seed=2,
    )
    make(
        "lora_qwen2_pattern",
        "qwen2",
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=r".*layers\.1\.self_attn\.(q|v)_proj|.*o_proj",
            rank_pattern={"v_proj": 2},
            alpha_pattern={"v_proj": 5},
            lora_dropout=0.0,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        ),
        seed=3,
    )


if __name__ == "__main__":
    main()
