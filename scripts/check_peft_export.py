#!/usr/bin/env python3
"""Check that a LoRA adapter written by kiln loads in HF peft and computes kiln's logits.

    cargo build --release --example finetune --example hf_logits
    /path/to/venv/bin/python scripts/check_peft_export.py            # every case below

For each base fixture (tests/fixtures/gpt2, llama3_gqa, qwen2) it trains adapters with
`finetune` for a few steps (the loss on random words of the fixture's vocabulary; GPT-2's
`c_attn` adapters are trained apart, so they are written block-diagonally), then:

- loads the adapter with `PeftModel.from_pretrained(base, dir)`, requiring no missing and no
  unexpected keys (peft warns about both: such a warning fails the check);
- compares peft's logits on fixed ids with `hf_logits --model-dir BASE --lora DIR` (1e-4);
- loads `--merge-export`'s folder with transformers and compares its logits with peft's
  `merge_and_unload()` (1e-4).

Needs torch, transformers and peft (a venv outside the repository; CI needs no Python).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "examples"
FIXTURES = ROOT / "tests" / "fixtures"

CASES = [
    # (base fixture, finetune flags)
    ("gpt2", ["--target", "c_attn,c_proj,c_fc", "--lora-r", "4", "--lora-alpha", "8"]),
    ("llama3_gqa", ["--target", "all-linear", "--rslora", "--modules-to-save", "lm_head"]),
    ("qwen2", ["--target", "q_proj,v_proj,o_proj", "--lora-r", "2", "--lora-alpha", "5"]),
    ("llama3_gqa", ["--target", "q_proj,v_proj", "--int8-base"]),
]


def words(base: Path, n: int) -> str:
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    tok = json.loads((base / "tokenizer.json").read_text()) if (base / "tokenizer.json").exists() else None
    if tok is not None and tok["model"]["type"] == "WordLevel":
        names = list(tok["model"]["vocab"].keys())
        return "\n".join(" ".join(names[(i * 7 + j * 3) % len(names)] for j in range(16)) for i in range(n))
    return "\n".join("".join(chr(97 + (i + j) % 26) for j in range(40)) for i in range(n))


def main() -> None:
    worst = 0.0
    for base_name, flags in CASES:
        base = FIXTURES / base_name
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            model_dir = base
            if not (base / "tokenizer.json").exists():
                # A word-level tokenizer over the fixture's vocabulary (`w0` ... `wN`), as
                # llama3_gqa's: what finetune needs to read text.
                model_dir = tmp / "base"
                model_dir.mkdir()
                for f in base.iterdir():
                    (model_dir / f.name).symlink_to(f)
                vocab = json.loads((base / "config.json").read_text())["vocab_size"]
                tok = json.loads((FIXTURES / "llama3_gqa" / "tokenizer.json").read_text())
                tok["model"]["vocab"] = {f"w{i}": i for i in range(vocab)}
                tok["added_tokens"] = tok["added_tokens"][:1]
                (model_dir / "tokenizer.json").write_text(json.dumps(tok))
            data = tmp / "data.txt"
            data.write_text(words(model_dir, 64))
            adapter, merged = tmp / "adapter", tmp / "merged"
            subprocess.run(
                [str(BIN / "finetune"), "--model-dir", str(model_dir), "--data", str(data),
                 "--max-steps", "8", "--lr", "1e-2", "--block", "16", "--save-adapter", str(adapter),
                 "--merge-export", str(merged), *flags],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            ids = [[1, 5, 9, 3, 7, 2, 11, 4], [6, 2, 8, 10, 3, 12, 5, 1]]
            out = subprocess.run(
                [str(BIN / "hf_logits"), "--model-dir", str(model_dir), "--lora", str(adapter),
                 "--input-ids", ";".join(",".join(map(str, r)) for r in ids)],
                check=True, capture_output=True, text=True,
            )
            kiln = torch.tensor(json.loads(out.stdout)["logits"])
            hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                peft_model = PeftModel.from_pretrained(hf, adapter)
            keys = [str(w.message) for w in caught if "keys" in str(w.message).lower()]
            if keys:
                sys.exit(f"{base_name}: peft reports {keys}")
            peft_model.eval()
            with torch.no_grad():
                theirs = peft_model(torch.tensor(ids)).logits
                diff = (kiln - theirs).abs().max().item()
                merged_hf = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, attn_implementation="eager")
                merged_diff = (merged_hf(torch.tensor(ids)).logits - peft_model.merge_and_unload()(torch.tensor(ids)).logits).abs().max().item()
            base_diff = (kiln - AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)(torch.tensor(ids)).logits).abs().max().item()
            print(f"{base_name} {' '.join(flags)}: kiln vs peft {diff:.2e}, merged export vs peft merged {merged_diff:.2e} (the adapter moved the logits by {base_diff:.2e})")
            int8 = "--int8-base" in flags
            # With an int8 base kiln trained over int8 weights, but the adapter applies to the f32
            # base in peft and in hf_logits alike: the comparison is still exact.
            if diff > 1e-4 or (merged_diff > 1e-4 and not int8) or base_diff < 1e-3:
                sys.exit("FAILED")
            worst = max(worst, diff)
    print(f"all cases pass; worst logit difference {worst:.2e}")


if __name__ == "__main__":
    main()
