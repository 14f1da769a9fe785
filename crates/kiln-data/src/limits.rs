//! kiln-data's ceilings on sizes read from files (`meta.json`, labels) and from configs and
//! flags, checked with kiln-base's [`Limit`] before anything is allocated or mapped. Each is
//! raised with `KILN_LIMIT_<NAME>=N` when a real corpus needs more.

use kiln_base::limits::Limit;
/// The ceilings kiln-data shares with the other crates: [`VOCAB`] (`vocab_size` in
/// `meta.json`, a BPE or WordPiece vocabulary to train: HuggingFace's trainers reserve it up
/// front), [`CONTEXT`] (the window of `PackedLmDataset`) and [`TEXT_FILE_BYTES`] (`meta.json`).
pub use kiln_base::limits::{CONTEXT, TEXT_FILE_BYTES, VOCAB};

/// Tokens in one split of a shard folder (and so in each shard file): 2^40, a trillion tokens,
/// 2 to 4 TB of shards.
pub const SPLIT_TOKENS: Limit = Limit::new("SPLIT_TOKENS", 1 << 40);

/// Classes of a classification file. Integer labels make `0..=max` classes, one name string
/// each, so a label of 10^12 would otherwise allocate 10^12 strings; 2^20 covers extreme
/// multi-label benchmarks (about 670K classes).
pub const CLASSES: Limit = Limit::new("CLASSES", 1 << 20);

/// MinHash signature length (`num_perm`): each slot costs 4 bytes per kept document and a
/// multiply-add per shingle. 8,192 is 32 times the default of 256, whose standard error is
/// already 0.025.
pub const NUM_PERM: Limit = Limit::new("NUM_PERM", 1 << 13);

/// Characters per MinHash shingle: near-dedup uses 5 to 9; each document's shingle ring holds
/// this many characters.
pub const SHINGLE: Limit = Limit::new("SHINGLE", 1 << 10);

/// The `max_words` cleaning filter: documents with more words are dropped. A document is
/// tokenized whole, with a few hundred bytes of tokenizer state per token (a 50 MB document
/// took 13 GB), so 10 times Gopher's 100,000 keeps one document near a gigabyte.
pub const MAX_WORDS: Limit = Limit::new("MAX_WORDS", 1_000_000);

/// Bytes of one document (a text block or a JSONL line) as read, before cleaning: longer ones
/// are skipped unread and counted. A document is tokenized whole, with a few hundred bytes of
/// tokenizer state per token (a 50 MB document took 13 GB); 16 MiB is some 50 novels.
pub const DOCUMENT_BYTES: Limit = Limit::new("DOCUMENT_BYTES", 1 << 24);

/// Documents per parallel batch of a preparation, held in memory together: 2^20 documents is
/// a few GB of text at web-page sizes.
pub const BATCH_DOCS: Limit = Limit::new("BATCH_DOCS", 1 << 20);
