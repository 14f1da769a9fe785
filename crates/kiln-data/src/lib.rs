//! kiln-data: turning text into training batches.
//!
//! - [`batch`]: the batch types kiln's models train on ([`LmBatch`]).
//! - [`addition`]: the 3-digit addition task of the main job, as a Burn `Dataset` and `Batcher`.
//! - [`CharTokenizer`]: a character-level vocabulary built from a corpus.

#![warn(missing_docs)]

pub mod addition;
pub mod batch;
mod char_tokenizer;

pub use batch::{IGNORE_INDEX, LmBatch};
pub use char_tokenizer::{CharTokenizer, DataError};
