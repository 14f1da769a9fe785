//! kiln-data: turning text into training batches.
//!
//! For now: [`CharTokenizer`], a character-level vocabulary built from a corpus. Cleaning,
//! deduplication, BPE/WordPiece and the datasets come with the data issue.

#![warn(missing_docs)]

mod char_tokenizer;

pub use char_tokenizer::{CharTokenizer, DataError};
