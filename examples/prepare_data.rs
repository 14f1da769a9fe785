//! Prepares a training corpus: clean, deduplicate, tokenize, write token shards.
//!
//! ```text
//! cargo run --release --example prepare_data -- --input FILE... --output DIR
//!     [--dedup exact|near|none] [--jaccard 0.8]
//!     [--tokenizer PATH | --train-bpe VOCAB | --train-wordpiece VOCAB [--cased]]
//!     [--val-fraction 0.01] [--shard-tokens N] [--batch-docs N] [--strict]
//!     [--lowercase] [--min-words N] [--max-words N] [--no-boilerplate] [--stop-words]
//!     [--num-perm N] [--shingle N] [--seq-len N]
//! ```
//!
//! Inputs are text files (one document per block of lines, blocks separated by blank lines)
//! or JSONL with a `text` field (by extension `.jsonl`/`.json`/`.ndjson`, or by content); a
//! directory stands for the files under it.
//! Writes `DIR/train-*.bin`, `DIR/val-*.bin` (memory-mapped u16/u32 token shards),
//! `DIR/meta.json`, `DIR/tokenizer.json`, `DIR/documents.jsonl` (the kept, cleaned documents)
//! and `DIR/stats.json` (`documents_in`, `exact_duplicates`, `near_duplicates`,
//! `documents_out`, `tokens`, `bytes_in`, and the details). Bad input (unreadable files,
//! invalid UTF-8, malformed JSONL lines) is reported with file and line and counted; with
//! `--strict` the first one is fatal. The default tokenizer is byte-level BPE with 8,192 ids.
//! `--seq-len N` only reports how many training windows of N tokens the shards hold.
//!
//! Train on the result with `kiln::data::PackedLmDataset::open(DIR, seq_len)`.

use std::path::PathBuf;
use std::process::ExitCode;

use kiln::data::prepare::{PrepareConfig, TokenizerSource, prepare_corpus};
use kiln::data::{DedupMode, PackedLmDataset};

fn usage() -> &'static str {
    "usage: prepare_data --input FILE... --output DIR [--dedup exact|near|none] [--jaccard 0.8] \
     [--tokenizer PATH | --train-bpe VOCAB | --train-wordpiece VOCAB [--cased]] \
     [--val-fraction 0.01] [--shard-tokens N] [--batch-docs N] [--strict] [--lowercase] \
     [--min-words N] [--max-words N] [--no-boilerplate] [--stop-words] [--num-perm N] \
     [--shingle N] [--seq-len N]"
}

fn parse() -> Result<(PrepareConfig, Option<usize>), String> {
    let mut inputs = Vec::new();
    let mut output: Option<PathBuf> = None;
    let mut config = PrepareConfig::new(Vec::new(), "");
    let mut tokenizers = 0;
    let mut wordpiece_cased = false;
    let mut seq_len = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
        *i += 1;
        args.get(*i)
            .map(String::as_str)
            .ok_or_else(|| format!("{flag} needs a value"))
    }
    fn number<T: std::str::FromStr>(
        args: &[String],
        i: &mut usize,
        flag: &str,
    ) -> Result<T, String> {
        let v = value(args, i, flag)?;
        v.parse().map_err(|_| format!("{flag}: cannot parse {v:?}"))
    }
    while i < args.len() {
        let flag = args[i].as_str();
        match flag {
            "--input" => {
                while args.get(i + 1).is_some_and(|a| !a.starts_with("--")) {
                    i += 1;
                    inputs.push(PathBuf::from(&args[i]));
                }
            }
            "--output" => output = Some(PathBuf::from(value(&args, &mut i, flag)?)),
            "--dedup" => {
                config.dedup.mode = value(&args, &mut i, flag)?
                    .parse::<DedupMode>()
                    .map_err(|e| e.to_string())?
            }
            "--jaccard" => config.dedup.jaccard_threshold = number(&args, &mut i, flag)?,
            "--num-perm" => config.dedup.num_perm = number(&args, &mut i, flag)?,
            "--shingle" => config.dedup.shingle_chars = number(&args, &mut i, flag)?,
            "--tokenizer" => {
                tokenizers += 1;
                config.tokenizer = TokenizerSource::Load(value(&args, &mut i, flag)?.into());
            }
            "--train-bpe" => {
                tokenizers += 1;
                config.tokenizer = TokenizerSource::TrainBpe(number(&args, &mut i, flag)?);
            }
            "--train-wordpiece" => {
                tokenizers += 1;
                config.tokenizer = TokenizerSource::TrainWordPiece {
                    vocab_size: number(&args, &mut i, flag)?,
                    lowercase: true,
                };
            }
            "--cased" => wordpiece_cased = true,
            "--val-fraction" => config.val_fraction = number(&args, &mut i, flag)?,
            "--shard-tokens" => config.shard_tokens = number(&args, &mut i, flag)?,
            "--batch-docs" => config.batch_docs = number(&args, &mut i, flag)?,
            "--strict" => config.strict = true,
            "--lowercase" => config.clean.lowercase = true,
            "--min-words" => config.clean.min_words = number(&args, &mut i, flag)?,
            "--max-words" => config.clean.max_words = number(&args, &mut i, flag)?,
            "--no-boilerplate" => config.clean.boilerplate_filter = false,
            "--stop-words" => config.clean.remove_stop_words = true,
            "--seq-len" => seq_len = Some(number(&args, &mut i, flag)?),
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
        i += 1;
    }
    if tokenizers > 1 {
        return Err("give at most one of --tokenizer, --train-bpe, --train-wordpiece".into());
    }
    if let TokenizerSource::TrainWordPiece { lowercase, .. } = &mut config.tokenizer {
        *lowercase = !wordpiece_cased;
    }
    if inputs.is_empty() {
        return Err(format!("no --input files\n{}", usage()));
    }
    config.inputs = inputs;
    config.output = output.ok_or_else(|| format!("no --output directory\n{}", usage()))?;
    Ok((config, seq_len))
}

fn main() -> ExitCode {
    let (config, seq_len) = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let stats = match prepare_corpus(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for issue in &stats.input.issues {
        eprintln!("skipped: {issue}");
    }
    let mb = stats.bytes_in as f64 / 1e6;
    println!(
        "read {} documents ({mb:.1} MB) from {} file(s); removed {} in cleaning, {} exact and {} near \
         duplicates; kept {}",
        stats.documents_in,
        stats.input.files,
        stats.removed_by_cleaning,
        stats.exact_duplicates,
        stats.near_duplicates,
        stats.documents_out
    );
    println!(
        "skipped: {} unreadable file(s), {} invalid UTF-8 line(s), {} malformed JSONL line(s)",
        stats.unreadable_files, stats.invalid_utf8_lines, stats.malformed_lines
    );
    println!(
        "tokens: {} ({} train, {} val), vocabulary {}, separator id {}",
        stats.tokens, stats.train_tokens, stats.val_tokens, stats.vocab_size, stats.separator
    );
    println!(
        "clean + dedup: {:.2} s ({:.1} MB/s); total {:.2} s; wrote {}",
        stats.clean_dedup_seconds,
        mb / stats.clean_dedup_seconds.max(1e-9),
        stats.total_seconds,
        config.output.join("stats.json").display()
    );
    if let Some(seq_len) = seq_len {
        match PackedLmDataset::open(&config.output, seq_len) {
            Ok(ds) => println!(
                "train windows of {seq_len} tokens: {}",
                burn::data::dataset::Dataset::len(&ds)
            ),
            Err(e) => println!("train windows of {seq_len} tokens: none ({e})"),
        }
    }
    ExitCode::SUCCESS
}
