//! kiln-data: turning raw text into training batches, at scales larger than memory.
//!
//! From raw files to batches:
//!
//! 1. [`input`]: read text (blank-line-separated documents) or JSONL files as a stream of
//!    documents; bad files and lines are reported with file and line, counted, and skipped
//!    (or fatal in strict mode).
//! 2. [`clean`]: NFKC, control/invisible characters, whitespace, lowercasing, length limits,
//!    repetition and boilerplate filters, stop words ([`CleanConfig`], [`Cleaner`]).
//! 3. [`dedup`]: exact and MinHash-LSH near-duplicate removal, streaming
//!    ([`DedupConfig`], [`Deduplicator`]); [`minhash`] holds the signatures and banding.
//!    [`pipeline`] runs cleaning and dedup on all cores ([`CorpusPipeline`]).
//! 4. [`tokenizer`]: one [`Tokenizer`] over HuggingFace `tokenizers` (load `tokenizer.json`,
//!    train byte-level BPE or WordPiece) and the character-level [`CharTokenizer`].
//! 5. [`shards`]: token shards, memory-mapped `u16`/`u32` files with a `meta.json` that
//!    records their SHA-256 checksums, verified with every id's range when opened
//!    ([`ShardCheck`]).
//! 6. Datasets (Burn `Dataset`) and batchers (Burn `Batcher`):
//!    - [`packed_lm`]: packed causal LM windows ([`PackedLmDataset`], [`LmBatcher`] → [`LmBatch`]);
//!    - [`mlm`]: BERT masked LM, masking fixed by `(seed, index)` ([`MlmDataset`],
//!      [`MlmBatcher`] → [`MlmBatch`]);
//!    - [`completion`]: prompt–completion pairs for supervised fine-tuning, the loss on the
//!      completion only ([`CompletionDataset`], [`CompletionBatcher`] → [`LmBatch`]);
//!    - [`classification`]: text classification from JSONL/CSV ([`ClassificationDataset`],
//!      [`ClassificationBatcher`] → [`ClassificationBatch`]);
//!    - [`addition`]: the 3-digit addition task of the main job.
//!
//! Every size read from a file or a flag passes a ceiling from [`limits`] before anything is
//! allocated (raised with `KILN_LIMIT_<NAME>`); bad input is a [`DataError`], never a panic
//! (`tests/fuzz.rs` keeps it so).
//!
//! Also: [`batch`] (the batch types, defined in kiln-base), [`synthetic`] (corpora with
//! planted duplicates for tests and benchmarks), [`prepare`] (the whole preparation of a corpus
//! into a shard directory), [`DataError`]. Dedup keys, MinHash and masking share one small
//! stable hash (the crate-private `hash` module). `examples/prepare_data.rs`
//! runs steps 1-5 from the command line; `docs/data.md` is the guide.
//!
//! ```
//! use burn::data::dataloader::DataLoaderBuilder;
//! use burn::tensor::Device;
//! use kiln_data::{LmBatcher, PackedLmDataset};
//!
//! // Two tokenized documents, separator id 0, windows of 3 inputs (+1 target).
//! let dataset = PackedLmDataset::from_documents(&[vec![5, 6, 7, 8], vec![9, 10, 11]], 0, 3)?;
//! let loader = DataLoaderBuilder::new(LmBatcher)
//!     .batch_size(2)
//!     .shuffle(42)
//!     .set_device(Device::flex())
//!     .build(dataset);
//! for batch in loader.iter() {
//!     let batch = batch?;
//!     assert_eq!(batch.inputs.dims()[1], 3);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod addition;
mod char_tokenizer;
pub mod classification;
pub mod clean;
pub mod completion;
pub mod dedup;
mod error;
mod hash;
pub mod input;
pub mod limits;
pub mod minhash;
pub mod mlm;
pub mod packed_lm;
pub mod pipeline;
pub mod prepare;
pub mod shards;
pub mod synthetic;
pub mod tokenizer;

pub use char_tokenizer::CharTokenizer;
pub use classification::{
    ClassificationBatcher, ClassificationData, ClassificationDataset, ClassificationExample,
    ClassificationItem,
};
pub use clean::{CleanConfig, CleanReport, Cleaner};
pub use completion::{CompletionBatcher, CompletionDataset, CompletionItem, CompletionReport};
pub use dedup::{DedupConfig, DedupMode, DedupStats, Deduplicator, Verdict};
pub use error::DataError;
pub use input::{DocumentReader, InputFormat, InputReport, read_text_file};
/// The batch types (kiln-base's: the models and the training loop share them).
pub use kiln_base::batch;
pub use kiln_base::batch::{Batch, ClassificationBatch, IGNORE_INDEX, LmBatch, MlmBatch};
pub use mlm::{MlmBatcher, MlmConfig, MlmDataset, MlmItem, WithSpecialTokens};
pub use packed_lm::{LmBatcher, PackedLmDataset};
pub use pipeline::{CorpusPipeline, PipelineReport};
pub use shards::{ShardCheck, ShardMeta, ShardWriter, TokenDtype, TokenShards};
pub use tokenizer::{BertSpecialTokens, Tokenizer};
