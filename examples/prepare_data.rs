//! Prepares a training corpus: clean, deduplicate, tokenize, write token shards.
//!
//! ```text
//! cargo run --release --example prepare_data -- --input FILE... --output DIR
//!     [--dedup exact|near|none] [--jaccard 0.8] [--num-perm 256] [--shingle 5]
//!     [--tokenizer PATH | --train-bpe VOCAB | --train-wordpiece VOCAB [--cased]]
//!     [--val-fraction 0.01] [--shard-tokens N] [--batch-docs N] [--strict]
//!     [--lowercase] [--min-words N] [--max-words N] [--no-boilerplate] [--stop-words]
//!     [--seq-len N]
//! cargo run --release --example prepare_data -- --help
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
//! `--jaccard`, `--num-perm` and `--shingle` tune the near dedup and are errors with any other
//! `--dedup`. `--seq-len N` only reports how many training windows of N tokens the shards hold
//! (opening them verifies their checksums).
//!
//! Everything is written into a hidden folder inside DIR and moved into place when the run
//! has succeeded, so a failed run leaves DIR's previous output as it was, and
//! `--input DIR/documents.jsonl --output DIR` reads the old documents whole before replacing
//! them. An input folder that holds DIR is refused. Sizes have ceilings (`--train-bpe` and
//! `--train-wordpiece` up to 2^20 ids, `--num-perm` up to 8,192 and at least the minimum of
//! `DedupConfig::min_num_perm`, 84 at `--jaccard 0.8`, `--shingle` up to 1,024, `--max-words` up
//! to 10^6, `--batch-docs` up to 2^20), raised with `KILN_LIMIT_<NAME>` (docs/data.md). A
//! symlink to a folder already read is skipped, so symlink cycles end.
//!
//! Train on the result with `kiln::data::PackedLmDataset::open(DIR, seq_len)`.

use std::path::PathBuf;

use clap::Parser;
use clap::builder::{PossibleValuesParser, RangedU64ValueParser, TypedValueParser};
use kiln::data::prepare::{PrepareConfig, TokenizerSource, prepare_corpus};
use kiln::data::{CleanConfig, DedupConfig, DedupMode, PackedLmDataset};

/// Prepare a training corpus: clean, deduplicate, tokenize, write token shards.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Text or JSONL files; a directory stands for the files under it.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    input: Vec<PathBuf>,
    /// The output directory (created).
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// Which duplicates to remove: near includes exact.
    #[arg(long, default_value = "near", value_parser = dedup_mode())]
    dedup: DedupMode,
    /// Near dedup: estimated Jaccard similarity at which a document is a duplicate [default: 0.8].
    #[arg(long)]
    jaccard: Option<f64>,
    /// Near dedup: MinHash signature length [default: 256].
    #[arg(long, value_parser = positive())]
    num_perm: Option<usize>,
    /// Near dedup: characters per shingle [default: 5].
    #[arg(long, value_parser = positive())]
    shingle: Option<usize>,
    /// Load a tokenizer (HuggingFace `tokenizer.json`) instead of training byte-level BPE of
    /// 8,192 ids on the kept documents.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["train_bpe", "train_wordpiece"])]
    tokenizer: Option<PathBuf>,
    /// Train byte-level BPE with this many ids on the kept documents.
    #[arg(long, value_name = "VOCAB", value_parser = positive(), conflicts_with = "train_wordpiece")]
    train_bpe: Option<usize>,
    /// Train a BERT WordPiece vocabulary with this many ids (lowercased unless --cased).
    #[arg(long, value_name = "VOCAB", value_parser = positive())]
    train_wordpiece: Option<usize>,
    /// Keep case in the WordPiece vocabulary.
    #[arg(long, requires = "train_wordpiece")]
    cased: bool,
    /// Fraction of documents (chosen by a hash of their text) for the `val` split.
    #[arg(long, default_value_t = defaults().val_fraction)]
    val_fraction: f64,
    /// Tokens per shard file.
    #[arg(long, default_value_t = defaults().shard_tokens,
          value_parser = clap::value_parser!(u64).range(1..))]
    shard_tokens: u64,
    /// Documents per parallel batch.
    #[arg(long, default_value_t = defaults().batch_docs, value_parser = positive())]
    batch_docs: usize,
    /// Make the first bad file or line fatal instead of skipping and counting it.
    #[arg(long)]
    strict: bool,
    /// Lowercase the documents.
    #[arg(long)]
    lowercase: bool,
    /// Drop documents with fewer words (after cleaning).
    #[arg(long, default_value_t = CleanConfig::new().min_words)]
    min_words: usize,
    /// Drop documents with more words.
    #[arg(long, default_value_t = CleanConfig::new().max_words)]
    max_words: usize,
    /// Keep boilerplate: by default short lines such as cookie notices are removed and
    /// documents with placeholder text (`lorem ipsum`) dropped, as C4 does.
    #[arg(long)]
    no_boilerplate: bool,
    /// Remove stop words (a short English list; never for language-model pretraining).
    #[arg(long)]
    stop_words: bool,
    /// Also report how many training windows of this many tokens the shards hold.
    #[arg(long, value_parser = positive())]
    seq_len: Option<usize>,
    /// Write into an output folder that holds files kiln did not write (they are left alone;
    /// same-named ones are replaced). Without it such a folder is refused, naming the files.
    #[arg(long)]
    force: bool,
}

/// kiln-data's defaults, which the flags override.
fn defaults() -> PrepareConfig {
    PrepareConfig::new(Vec::new(), "")
}

/// A count of at least 1.
fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// `none`, `exact` or `near`, listed in `--help`.
fn dedup_mode() -> impl TypedValueParser<Value = DedupMode> {
    PossibleValuesParser::new(["none", "exact", "near"]).try_map(|mode| mode.parse::<DedupMode>())
}

impl Args {
    /// The preparation the flags describe.
    fn config(&self) -> kiln::Result<PrepareConfig> {
        let mut config = PrepareConfig::new(self.input.clone(), &self.output);
        config.force = self.force;
        let near = [
            ("--jaccard", self.jaccard.is_some()),
            ("--num-perm", self.num_perm.is_some()),
            ("--shingle", self.shingle.is_some()),
        ];
        if self.dedup != DedupMode::Near
            && let Some((flag, _)) = near.iter().find(|(_, set)| *set)
        {
            return Err(kiln::Error::Usage(format!(
                "{flag} tunes the near dedup; it does not apply to --dedup {}",
                format!("{:?}", self.dedup).to_lowercase()
            )));
        }
        config.dedup = DedupConfig::new().with_mode(self.dedup);
        set(&mut config.dedup.jaccard_threshold, self.jaccard);
        set(&mut config.dedup.num_perm, self.num_perm);
        set(&mut config.dedup.shingle_chars, self.shingle);
        if let Some(path) = &self.tokenizer {
            config.tokenizer = TokenizerSource::Load(path.clone());
        }
        if let Some(vocab) = self.train_bpe {
            config.tokenizer = TokenizerSource::TrainBpe(vocab);
        }
        if let Some(vocab_size) = self.train_wordpiece {
            config.tokenizer = TokenizerSource::TrainWordPiece {
                vocab_size,
                lowercase: !self.cased,
            };
        }
        config.val_fraction = self.val_fraction;
        config.shard_tokens = self.shard_tokens;
        config.batch_docs = self.batch_docs;
        config.strict = self.strict;
        config.clean.lowercase = self.lowercase;
        config.clean.min_words = self.min_words;
        config.clean.max_words = self.max_words;
        config.clean.boilerplate_filter = !self.no_boilerplate;
        config.clean.remove_stop_words = self.stop_words;
        Ok(config)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    let config = args.config()?;
    let stats = prepare_corpus(&config)?;
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
        "skipped: {} unreadable file(s), {} invalid UTF-8 line(s), {} malformed JSONL line(s), \
         {} folder(s) already read",
        stats.unreadable_files,
        stats.invalid_utf8_lines,
        stats.malformed_lines,
        stats.input.repeated_directories
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
    if let Some(seq_len) = args.seq_len {
        match PackedLmDataset::open(&config.output, seq_len) {
            Ok(ds) => println!(
                "train windows of {seq_len} tokens: {}",
                burn::data::dataset::Dataset::len(&ds)
            ),
            Err(e) => println!("train windows of {seq_len} tokens: none ({e})"),
        }
    }
    Ok(())
}
