"""Checks kiln's HuggingFace exports (`kiln_model::hf::save_pretrained`) against transformers.

For each exported folder it loads the model with transformers' `AutoModel*.from_pretrained`
(the class named by `architectures`), requires that no weight is missing or unexpected, runs it
and kiln's `examples/hf_logits.rs` on the same input ids, and prints the max abs difference of
the logits (and of `pooler_output` for a bare `BertModel`). Exits 1 if any exceeds 1e-4.

Run in a venv outside the repo (CI never needs it):

    python3 -m venv /work/venv-hf && /work/venv-hf/bin/pip install torch transformers safetensors numpy
    /work/venv-hf/bin/python scripts/check_hf_export.py --random          # GPT-2, BERT, MLM, classifier,
                                                                          # Llama, Qwen2, Mistral
    /work/venv-hf/bin/python scripts/check_hf_export.py DIR [DIR ...]     # folders exported elsewhere
    /work/venv-hf/bin/python scripts/check_hf_export.py --train DIR       # train_gpt, then check DIR
    /work/venv-hf/bin/python scripts/check_hf_export.py --train DIR --arch llama

`--random` writes jittered random models of each exportable kind with the ignored test
`write_exports_for_transformers` (crates/kiln-model/tests/hf_export.rs). `--train DIR` first runs
`cargo run --release --example train_gpt -- --max-steps 60 --export-hf DIR [--arch llama]`.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSequenceClassification)

TOLERANCE = 1e-4
CLASSES = {
    "GPT2LMHeadModel": AutoModelForCausalLM,
    "BertForMaskedLM": AutoModelForMaskedLM,
    "BertForSequenceClassification": AutoModelForSequenceClassification,
    "BertModel": AutoModel,
    "LlamaForCausalLM": AutoModelForCausalLM,
    "Qwen2ForCausalLM": AutoModelForCausalLM,
    "MistralForCausalLM": AutoModelForCausalLM,
}


def cargo(*args, env=None):
    subprocess.run(["cargo", *args], check=True, env={**os.environ, **(env or {})})


def rows(batch):
    return ";".join(",".join(map(str, row)) for row in batch)


def check(folder, rng):
    """Max abs differences between transformers and kiln on `folder`, by output name."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    architecture = config["architectures"][0]
    kwargs = {}
    if architecture == "BertModel":
        with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
            # transformers adds a pooler unless told otherwise; kiln exports one only if it has one.
            kwargs["add_pooling_layer"] = "pooler.dense.weight" in f.keys()
    model, info = CLASSES[architecture].from_pretrained(folder, output_loading_info=True, **kwargs)
    model = model.float().eval()
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise SystemExit(f"{folder}: transformers did not load every weight: {bad}")

    bert = config["model_type"] == "bert"
    vocab = config["vocab_size"]
    context = config["n_positions"] if config["model_type"] == "gpt2" else config["max_position_embeddings"]
    # Long enough for a Mistral export's window to hide keys.
    seq = min(12, context)
    ids = [[rng.randrange(vocab) for _ in range(seq)] for _ in range(2)]
    cmd = ["run", "--release", "--quiet", "--example", "hf_logits", "--", "--model-dir", folder,
           "--input-ids", rows(ids)]
    inputs = {"input_ids": torch.tensor(ids)}
    if bert:
        types = [[rng.randrange(config["type_vocab_size"]) for _ in range(seq)] for _ in range(2)]
        mask = [[1] * seq, [1] * (seq - 2) + [0, 0]]
        cmd += ["--token-type-ids", rows(types), "--attention-mask", rows(mask)]
        inputs["token_type_ids"] = torch.tensor(types)
        inputs["attention_mask"] = torch.tensor(mask)
    kiln = json.loads(subprocess.run(["cargo", *cmd], check=True, capture_output=True, text=True).stdout)
    with torch.no_grad():
        out = model(**inputs)

    pairs = {}
    if architecture == "BertModel":
        pairs["last_hidden_state"] = (out.last_hidden_state, kiln["last_hidden_state"])
        if out.pooler_output is not None:
            pairs["pooler_output"] = (out.pooler_output, kiln["pooler_output"])
    else:
        pairs["logits"] = (out.logits, kiln["logits"])
    diffs = {}
    for name, (reference, ours) in pairs.items():
        ours = torch.tensor(ours)
        if ours.shape != reference.shape:
            raise SystemExit(f"{folder}: {name} shapes differ: kiln {list(ours.shape)}, "
                             f"transformers {list(reference.shape)}")
        diffs[name] = ((ours - reference).abs().max().item(), reference.abs().max().item())
    return architecture, diffs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", help="exported HuggingFace folders")
    parser.add_argument("--random", action="store_true",
                        help="export jittered random GPT-2, BERT, MLM and classifier models and check them")
    parser.add_argument("--train", metavar="DIR",
                        help="run train_gpt --max-steps 60 --export-hf DIR first, then check DIR")
    parser.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2",
                        help="with --train: the architecture train_gpt trains")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folders = list(args.folders)
    scratch = tempfile.TemporaryDirectory()
    if args.random:
        cargo("test", "--release", "--workspace", "--test", "hf_export", "--",
              "--ignored", "--exact", "write_exports_for_transformers",
              env={"KILN_HF_EXPORT_DIR": scratch.name})
        folders += [os.path.join(scratch.name, d) for d in sorted(os.listdir(scratch.name))]
    if args.train:
        cargo("run", "--release", "--example", "train_gpt", "--", "--max-steps", "60", "--arch", args.arch,
              "--export-hf", args.train)
        folders.append(args.train)
    if not folders:
        parser.error("give exported folders, --random or --train DIR")

    rng = random.Random(args.seed)
    worst = 0.0
    for folder in folders:
        architecture, diffs = check(folder, rng)
        for name, (diff, scale) in diffs.items():
            worst = max(worst, diff)
            print(f"{folder}: {architecture} {name} max|diff|={diff:.2e} (|ref|max={scale:.2f})")
    print(f"worst max abs diff: {worst:.2e} (bar {TOLERANCE:.0e})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
