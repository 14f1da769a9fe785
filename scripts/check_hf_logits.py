"""Checks `examples/hf_logits.rs` against transformers on freshly drawn tiny models.

Run once in a venv outside the repo (CI never needs it):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers safetensors numpy
    cargo build --release --example hf_logits
    /tmp/venv/bin/python scripts/check_hf_logits.py [--cases 6]

For each case it draws a GPT-2 or BERT config (sizes, heads, vocabularies, epsilons, untied
heads), redraws every parameter at a visible scale, saves the model, runs the kiln binary on a
padded batch and prints the max abs difference of the logits. Exits 1 if any exceeds 1e-4.
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile

import torch
from transformers import (BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel,
                          GPT2Config, GPT2LMHeadModel)


def redraw(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or ".ln_" in name or name.endswith("ln_f.weight") or name.endswith("ln_f.bias"):
                p.copy_((1.0 if name.endswith(("weight", "gamma")) else 0.0) + 0.2 * torch.randn_like(p))
            elif "embeddings" in name or name.endswith(("wte.weight", "wpe.weight")):
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.eval()


def draw_case(rng):
    heads = rng.choice([1, 2, 3, 4, 6])
    hidden = heads * rng.choice([4, 8, 10, 16])
    vocab = rng.randint(20, 300)
    layers = rng.randint(1, 3)
    kind = rng.choice(["gpt2", "gpt2_untied", "bert_mlm", "bert", "bert_cls"])
    if kind.startswith("gpt2"):
        config = GPT2Config(vocab_size=vocab, n_positions=rng.randint(12, 40), n_embd=hidden, n_layer=layers,
                            n_head=heads, n_inner=rng.choice([None, hidden * 3]),
                            layer_norm_epsilon=rng.choice([1e-5, 1e-6]), resid_pdrop=0, embd_pdrop=0,
                            attn_pdrop=0, tie_word_embeddings=(kind == "gpt2"))
        return kind, redraw(GPT2LMHeadModel(config))
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=hidden * rng.choice([2, 4]), max_position_embeddings=rng.randint(12, 40),
                        type_vocab_size=rng.choice([1, 2, 3]), hidden_dropout_prob=0,
                        attention_probs_dropout_prob=0, layer_norm_eps=rng.choice([1e-12, 1e-5]),
                        num_labels=rng.randint(2, 5))
    cls = {"bert_mlm": BertForMaskedLM, "bert": BertModel, "bert_cls": BertForSequenceClassification}[kind]
    return kind, redraw(cls(config))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--binary", default="target/release/examples/hf_logits")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    worst = 0.0
    for case in range(args.cases):
        kind, model = draw_case(rng)
        cfg = model.config
        vocab, seq, batch = cfg.vocab_size, rng.randint(2, 10), 2
        ids = [[rng.randrange(vocab) for _ in range(seq)] for _ in range(batch)]
        mask = [[1] * seq, [1] * (seq - 1) + [0]]
        types = [[rng.randrange(getattr(cfg, "type_vocab_size", 1)) for _ in range(seq)] for _ in range(batch)]
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            cmd = [args.binary, "--model-dir", d, "--input-ids", ";".join(",".join(map(str, r)) for r in ids)]
            kw = {"input_ids": torch.tensor(ids)}
            if kind.startswith("bert"):
                cmd += ["--token-type-ids", ";".join(",".join(map(str, r)) for r in types),
                        "--attention-mask", ";".join(",".join(map(str, r)) for r in mask)]
                kw["token_type_ids"] = torch.tensor(types)
                kw["attention_mask"] = torch.tensor(mask)
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        with torch.no_grad():
            ref = model(**kw)
        ref = ref.logits if hasattr(ref, "logits") else ref.last_hidden_state
        diff = (torch.tensor(out["logits"]) - ref).abs().max().item()
        worst = max(worst, diff)
        print(f"case {case}: {kind:12s} hidden={getattr(cfg, 'hidden_size', getattr(cfg, 'n_embd', 0))} "
              f"heads={getattr(cfg, 'num_attention_heads', getattr(cfg, 'n_head', 0))} vocab={vocab} seq={seq} "
              f"max|diff|={diff:.2e} (|ref|max={ref.abs().max().item():.2f})")
    print(f"worst max abs diff: {worst:.2e}")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
