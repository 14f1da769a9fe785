//! The whole preparation of a corpus, as `examples/prepare_data.rs` runs it: read → clean →
//! deduplicate → write the kept documents (`documents.jsonl`) → load or train a tokenizer →
//! tokenize into `train`/`val` token shards → `meta.json`, `tokenizer.json`, `stats.json`.
//!
//! Memory stays bounded by the batch size and the deduplication index (hashes and
//! signatures), never by the corpus: documents stream from the inputs to `documents.jsonl`,
//! and from there to the shards.
//!
//! Everything is written into a new hidden folder inside the output folder and moved into
//! place only when the preparation has succeeded, `meta.json` last: a failed or interrupted
//! run leaves the previous output as it was, and an input inside the output folder (such as
//! its own `documents.jsonl`, to train another tokenizer) is read whole before anything of the
//! same name is replaced. An input *folder* that holds the output folder is refused: the
//! output would be read as input while it is written.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_base::OutputDir;
use serde::{Deserialize, Serialize};

use crate::DataError;
use crate::clean::{CleanConfig, CleanReport};
use crate::dedup::{DedupConfig, DedupMode, DedupStats};
use crate::hash::hash64;
use crate::input::{DocumentReader, InputReport};
use crate::limits::{BATCH_DOCS, VOCAB};
use crate::pipeline::CorpusPipeline;
use crate::shards::{META_FILE, ShardMeta, ShardWriter};
use crate::tokenizer::{END_OF_TEXT, Tokenizer};

/// The cleaned, deduplicated documents, one `{"text": ...}` per line.
pub const DOCUMENTS_FILE: &str = "documents.jsonl";
/// The tokenizer, HuggingFace format.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The counts of a preparation.
pub const STATS_FILE: &str = "stats.json";

/// Where the tokenizer comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerSource {
    /// A `tokenizer.json` (HuggingFace) or a kiln character vocabulary.
    Load(PathBuf),
    /// Byte-level BPE trained on the kept documents, with `<|endoftext|>` as separator.
    TrainBpe(usize),
    /// WordPiece trained on the kept documents, with BERT's special tokens.
    TrainWordPiece {
        /// Vocabulary size.
        vocab_size: usize,
        /// Lowercase (uncased BERT).
        lowercase: bool,
    },
}

/// Everything a preparation needs.
#[derive(Clone, Debug)]
pub struct PrepareConfig {
    /// Text or JSONL files.
    pub inputs: Vec<PathBuf>,
    /// The output directory (created).
    pub output: PathBuf,
    /// Cleaning.
    pub clean: CleanConfig,
    /// Deduplication.
    pub dedup: DedupConfig,
    /// The tokenizer.
    pub tokenizer: TokenizerSource,
    /// Fraction of documents (chosen by a hash of their text) for the `val` split.
    pub val_fraction: f64,
    /// Tokens per shard file.
    pub shard_tokens: u64,
    /// Make the first bad file or line fatal instead of skipping and counting it.
    pub strict: bool,
    /// Documents per parallel batch.
    pub batch_docs: usize,
    /// Write into an output folder that holds files kiln did not write (they are left alone;
    /// same-named ones are replaced). Off: such a folder is refused, naming the files.
    pub force: bool,
}

impl PrepareConfig {
    /// Defaults: default cleaning, near dedup at 0.8, byte-level BPE of 8,192, 1% validation,
    /// 100M tokens per shard, skip-and-count bad input.
    pub fn new(inputs: Vec<PathBuf>, output: impl Into<PathBuf>) -> Self {
        Self {
            inputs,
            output: output.into(),
            clean: CleanConfig::new(),
            dedup: DedupConfig::new(),
            tokenizer: TokenizerSource::TrainBpe(8192),
            val_fraction: 0.01,
            shard_tokens: 100_000_000,
            strict: false,
            batch_docs: 4096,
            force: false,
        }
    }

    /// Checks what can be checked before any input is read: the fractions and counts, the
    /// sizes against their ceilings ([`crate::limits`]), and that no input folder holds the
    /// output folder. Cleaning and dedup settings are checked by [`CorpusPipeline::new`].
    pub fn validate(&self) -> Result<(), DataError> {
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(DataError::InvalidConfig(format!(
                "val_fraction {} must be in [0, 1)",
                self.val_fraction
            )));
        }
        if self.inputs.is_empty() {
            return Err(DataError::InvalidConfig("no input files".into()));
        }
        if self.shard_tokens == 0 || self.batch_docs == 0 {
            return Err(DataError::InvalidConfig(
                "shard_tokens and batch_docs must be positive".into(),
            ));
        }
        BATCH_DOCS.check("documents per batch", self.batch_docs as u64)?;
        match self.tokenizer {
            TokenizerSource::TrainBpe(vocab_size)
            | TokenizerSource::TrainWordPiece { vocab_size, .. } => {
                VOCAB.check("the vocabulary size to train", vocab_size as u64)?;
            }
            TokenizerSource::Load(_) => {}
        }
        // An input folder holding the output folder would read the output while it is
        // written (or the previous output). Paths that do not exist yet hold nothing.
        let output = canonical_or_absolute(&self.output);
        for input in self.inputs.iter().filter(|p| p.is_dir()) {
            let folder = canonical_or_absolute(input);
            if output.starts_with(&folder) {
                return Err(DataError::InvalidConfig(format!(
                    "input folder {} holds the output folder {}: the output would be read as \
                     input; write the output elsewhere",
                    input.display(),
                    self.output.display()
                )));
            }
        }
        Ok(())
    }
}

/// `path` with symlinks resolved, or made absolute when it does not exist (yet).
fn canonical_or_absolute(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// `stats.json`: what was read, removed and written. The counts add up:
/// `documents_in = removed_by_cleaning + exact_duplicates + near_duplicates + documents_out`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepareStats {
    /// Documents read (after skipping bad lines).
    pub documents_in: usize,
    /// Documents dropped by the cleaning filters (see `clean`).
    pub removed_by_cleaning: usize,
    /// Exact duplicates removed.
    pub exact_duplicates: usize,
    /// Near duplicates removed.
    pub near_duplicates: usize,
    /// Documents written.
    pub documents_out: usize,
    /// Tokens written (separators included), both splits.
    pub tokens: u64,
    /// Bytes read from the inputs.
    pub bytes_in: u64,
    /// UTF-8 bytes of the kept, cleaned documents.
    pub bytes_out: u64,
    /// Tokens of the `train` split.
    pub train_tokens: u64,
    /// Tokens of the `val` split.
    pub val_tokens: u64,
    /// Documents in `train`.
    pub train_documents: usize,
    /// Documents in `val`.
    pub val_documents: usize,
    /// Input files that could not be read.
    pub unreadable_files: usize,
    /// Lines that were not UTF-8.
    pub invalid_utf8_lines: usize,
    /// JSONL lines skipped as malformed.
    pub malformed_lines: usize,
    /// The tokenizer's vocabulary size.
    pub vocab_size: usize,
    /// The document separator id.
    pub separator: u32,
    /// `none`, `exact` or `near`.
    pub dedup_mode: DedupMode,
    /// The near-duplicate threshold.
    pub jaccard_threshold: f64,
    /// LSH bands × rows.
    pub lsh_bands: usize,
    /// Rows per band.
    pub lsh_rows: usize,
    /// Wall-clock seconds of reading, cleaning and deduplication.
    pub clean_dedup_seconds: f64,
    /// Wall-clock seconds of the whole preparation.
    pub total_seconds: f64,
    /// Reader details, with the first problems listed by file and line.
    pub input: InputReport,
    /// Cleaning details.
    pub clean: CleanReport,
    /// Deduplication details.
    pub dedup: DedupStats,
}

/// Runs a preparation: [`PrepareConfig::validate`], then everything is written into a new
/// hidden folder inside `config.output` and moved into place at the end (see the module docs).
pub fn prepare_corpus(config: &PrepareConfig) -> Result<PrepareStats, DataError> {
    config.validate()?;
    let out = &config.output;
    let target = if config.force {
        OutputDir::forced(out)
    } else {
        OutputDir::new(out)
    };
    target.claim(&[])?;
    // Removed with everything in it when dropped, so a failed run leaves no trace.
    let work = tempfile::Builder::new()
        .prefix(".kiln-prepare-")
        .tempdir_in(out)
        .map_err(|e| DataError::io(out, e))?;
    let stats = prepare_into(config, work.path())?;
    let written = move_into_place(work.path(), out)?;
    let written: Vec<&str> = written.iter().map(String::as_str).collect();
    target.record(&written)?;
    Ok(stats)
}

/// Moves the files of a finished preparation from `work` into `out`: the old `meta.json`
/// first (a reader sees no folder rather than a mix), then the new files, then shards of the
/// old preparation that the new one does not have, then the new `meta.json`. Returns the names
/// of the files now in `out`.
fn move_into_place(work: &Path, out: &Path) -> Result<Vec<String>, DataError> {
    let old = ShardMeta::load(out).ok();
    let old_meta = out.join(META_FILE);
    if old_meta.exists() {
        std::fs::remove_file(&old_meta).map_err(|e| DataError::io(&old_meta, e))?;
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(work).map_err(|e| DataError::io(work, e))? {
        let name = entry.map_err(|e| DataError::io(work, e))?.file_name();
        if name != META_FILE {
            names.push(name);
        }
    }
    for name in &names {
        let (from, to) = (work.join(name), out.join(name));
        std::fs::rename(&from, &to).map_err(|e| DataError::io(&to, e))?;
    }
    // Only names the old meta.json listed (plain names inside the folder: `load` checked).
    for info in old.iter().flat_map(|m| m.splits.values().flatten()) {
        if !names.iter().any(|n| *n == *info.file) {
            let stale = out.join(&info.file);
            std::fs::remove_file(&stale)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .map_err(|e| DataError::io(&stale, e))?;
        }
    }
    std::fs::rename(work.join(META_FILE), &old_meta).map_err(|e| DataError::io(&old_meta, e))?;
    kiln_base::store::sync_dir(out);
    Ok(names
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .chain([META_FILE.to_string()])
        .collect())
}

/// The preparation itself, writing every output file into `out`.
fn prepare_into(config: &PrepareConfig, out: &Path) -> Result<PrepareStats, DataError> {
    let start = Instant::now();

    // Pass 1: read, clean, dedup, write the kept documents.
    let mut pipeline = CorpusPipeline::new(config.clean.clone(), config.dedup.clone())?;
    let docs_path = out.join(DOCUMENTS_FILE);
    let mut docs_out = BufWriter::new(kiln_base::files::create(&docs_path)?);
    let mut reader = DocumentReader::new(config.inputs.iter().cloned(), config.strict);
    let mut batch = Vec::with_capacity(config.batch_docs);
    loop {
        let next = reader.next().transpose()?;
        let done = next.is_none();
        batch.extend(next);
        if batch.len() >= config.batch_docs.max(1) || (done && !batch.is_empty()) {
            for doc in pipeline.process(std::mem::take(&mut batch)) {
                let line = serde_json::json!({ "text": doc }).to_string();
                writeln!(docs_out, "{line}").map_err(|e| DataError::io(&docs_path, e))?;
            }
        }
        if done {
            break;
        }
    }
    docs_out.flush().map_err(|e| DataError::io(&docs_path, e))?;
    drop(docs_out);
    let clean_dedup_seconds = start.elapsed().as_secs_f64();
    let report = pipeline.report();
    let input = reader.report().clone();

    // The tokenizer.
    let mut tokenizer = match &config.tokenizer {
        TokenizerSource::Load(path) => Tokenizer::from_file(path)?,
        TokenizerSource::TrainBpe(vocab) => {
            let (texts, error) = KeptTexts::open(&docs_path)?;
            let tokenizer = Tokenizer::train_byte_level_bpe(texts, *vocab, &[END_OF_TEXT])?;
            check(&error)?;
            tokenizer
        }
        TokenizerSource::TrainWordPiece {
            vocab_size,
            lowercase,
        } => {
            let (texts, error) = KeptTexts::open(&docs_path)?;
            let tokenizer = Tokenizer::train_wordpiece(texts, *vocab_size, *lowercase)?;
            check(&error)?;
            tokenizer
        }
    };
    let separator = tokenizer.ensure_document_separator()?;
    let vocab_size = tokenizer.vocab_size();
    tokenizer.save(out.join(TOKENIZER_FILE))?;

    // Pass 2: tokenize into shards.
    let mut train = ShardWriter::new(out, "train", vocab_size, config.shard_tokens)?;
    let mut val = ShardWriter::new(out, "val", vocab_size, config.shard_tokens)?;
    let (mut train_documents, mut val_documents) = (0usize, 0usize);
    let (texts, texts_error) = KeptTexts::open(&docs_path)?;
    let mut texts = texts.peekable();
    while texts.peek().is_some() {
        let chunk: Vec<String> = texts.by_ref().take(config.batch_docs.max(1)).collect();
        let encoded = tokenizer.encode_batch(&chunk)?;
        for (text, mut ids) in chunk.iter().zip(encoded) {
            ids.push(separator);
            // A fixed hash of the text picks the split, so it never depends on order.
            let u = (hash64(text.as_bytes(), 0x0076_616c) >> 11) as f64 / (1u64 << 53) as f64;
            if u < config.val_fraction {
                val.write(&ids)?;
                val_documents += 1;
            } else {
                train.write(&ids)?;
                train_documents += 1;
            }
        }
    }
    check(&texts_error)?;
    let mut meta = ShardMeta::new(vocab_size, Some(separator));
    meta.splits.insert("train".into(), train.finish()?);
    meta.splits.insert("val".into(), val.finish()?);
    meta.save(out)?;

    let (train_tokens, val_tokens) = (meta.tokens("train"), meta.tokens("val"));
    let bands = pipeline.deduplicator().bands();
    let stats = PrepareStats {
        documents_in: report.clean.documents_in,
        removed_by_cleaning: report.clean.dropped(),
        exact_duplicates: report.dedup.exact_duplicates,
        near_duplicates: report.dedup.near_duplicates,
        documents_out: report.dedup.documents_out,
        tokens: train_tokens + val_tokens,
        bytes_in: input.bytes_in,
        bytes_out: report.clean.bytes_out as u64,
        train_tokens,
        val_tokens,
        train_documents,
        val_documents,
        unreadable_files: input.unreadable_files,
        invalid_utf8_lines: input.invalid_utf8_lines,
        malformed_lines: input.malformed_json_lines,
        vocab_size,
        separator,
        dedup_mode: config.dedup.mode,
        jaccard_threshold: config.dedup.jaccard_threshold,
        lsh_bands: bands.bands,
        lsh_rows: bands.rows,
        clean_dedup_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
        input,
        clean: report.clean,
        dedup: report.dedup,
    };
    let stats_path = out.join(STATS_FILE);
    let json = serde_json::to_string_pretty(&stats).map_err(|e| DataError::io(&stats_path, e))?;
    kiln_base::store::write_atomic(&stats_path, json.as_bytes())?;
    Ok(stats)
}

/// Where a [`KeptTexts`] stream leaves the error that ended it.
type ErrorSlot = Arc<Mutex<Option<DataError>>>;

/// The texts of a `documents.jsonl`, streamed. A read or parse failure ends the stream and is
/// left in the [`ErrorSlot`] for the caller to check afterwards (the tokenizer trainers take
/// plain iterators of strings).
struct KeptTexts {
    lines: std::io::Lines<BufReader<File>>,
    path: PathBuf,
    line: usize,
    error: ErrorSlot,
}

impl Iterator for KeptTexts {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let fail = |this: &Self, err: DataError| {
            if let Ok(mut slot) = this.error.lock() {
                slot.get_or_insert(err);
            }
            None
        };
        self.line += 1;
        let line = match self.lines.next()? {
            Ok(l) => l,
            Err(e) => return fail(self, DataError::io(&self.path, e)),
        };
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(serde_json::Value::Object(mut o)) => match o.remove("text") {
                Some(serde_json::Value::String(s)) => Some(s),
                _ => fail(self, self.malformed("no string \"text\" field")),
            },
            Ok(_) => fail(self, self.malformed("not a JSON object")),
            Err(e) => fail(self, self.malformed(&e.to_string())),
        }
    }
}

impl KeptTexts {
    fn open(path: &Path) -> Result<(Self, ErrorSlot), DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let error = ErrorSlot::default();
        let texts = Self {
            lines: BufReader::new(file).lines(),
            path: path.to_path_buf(),
            line: 0,
            error: error.clone(),
        };
        Ok((texts, error))
    }

    fn malformed(&self, message: &str) -> DataError {
        DataError::MalformedJson {
            path: self.path.display().to_string(),
            line: self.line,
            message: message.into(),
        }
    }
}

/// The error a [`KeptTexts`] stream ended with, if any.
fn check(slot: &ErrorSlot) -> Result<(), DataError> {
    match slot.lock().ok().and_then(|mut s| s.take()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
