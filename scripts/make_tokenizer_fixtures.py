"""Fixtures for kiln-data's tokenizer test: a byte-level BPE and a WordPiece tokenizer trained
with HuggingFace's Python `tokenizers` on a small fixed corpus, saved as tokenizer.json, plus
the ids Python gives for a few texts. The Rust test loads the same files with
`kiln_data::Tokenizer::from_file` and must give the same ids and decodings.

    /work/venv/bin/python scripts/make_tokenizer_fixtures.py
"""
import json
import pathlib

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates" / "kiln-data" / "tests" / "fixtures"
OUT.mkdir(parents=True, exist_ok=True)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Byte-level BPE learns merges from pairs of bytes; WordPiece learns word pieces.",
    "Tokenizers turn text into ids, and ids back into text.",
    "Large language models are trained on large, clean, deduplicated corpora.",
    "Ünïcödé text, emoji 🦀 and numbers 12345 appear here too.",
    "Packing documents with separators avoids padding in causal language modeling.",
] * 20

TEXTS = [
    "The quick brown fox.",
    "tokenizers turn ids back into text",
    "Ünïcödé 🦀 12345!",
    "  leading spaces and\nnew lines\t",
    "unseen wordsxyz qqq",
]

# GPT-2 style byte-level BPE.
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.post_processor = processors.ByteLevel(trim_offsets=True)
bpe.train_from_iterator(
    CORPUS,
    trainers.BpeTrainer(
        vocab_size=500,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    ),
)
bpe.save(str(OUT / "bpe_tokenizer.json"))

# BERT style WordPiece.
wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
wp.normalizer = normalizers.BertNormalizer(lowercase=True)
wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
wp.decoder = decoders.WordPiece()
wp.train_from_iterator(
    CORPUS,
    trainers.WordPieceTrainer(
        vocab_size=300,
        min_frequency=2,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False,
    ),
)
wp.post_processor = processors.BertProcessing(("[SEP]", wp.token_to_id("[SEP]")), ("[CLS]", wp.token_to_id("[CLS]")))
wp.save(str(OUT / "wordpiece_tokenizer.json"))

cases = {
    "tokenizers_version": tokenizers.__version__,
    "bpe": [
        {"text": t, "ids": bpe.encode(t, add_special_tokens=False).ids, "decoded": bpe.decode(bpe.encode(t, add_special_tokens=False).ids, skip_special_tokens=False)}
        for t in TEXTS
    ],
    "wordpiece": [
        {
            "text": t,
            "ids": wp.encode(t, add_special_tokens=False).ids,
            "ids_with_special_tokens": wp.encode(t).ids,
            "decoded": wp.decode(wp.encode(t, add_special_tokens=False).ids, skip_special_tokens=False),
        }
        for t in TEXTS
    ],
}
(OUT / "tokenizer_cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1))
print("wrote", OUT)
