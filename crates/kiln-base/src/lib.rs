//! kiln-base: the vocabulary kiln's crates share, so that none of them needs to know another.
//!
//! The training loop (kiln-train) knows no model and the models (kiln-model) know no training
//! loop: they meet here, as burn-train's `TrainStep` lets a model meet Burn's learner.
//!
//! - [`batch`]: the batch types kiln's batchers produce ([`LmBatch`], [`MlmBatch`],
//!   [`ClassificationBatch`]) and the [`Batch`] trait (how much a batch weighs).
//! - [`train_model`]: the model side of a training step ([`TrainModel`], [`StepOutput`]).
//! - [`block_stack`]: a model seen as embedding, blocks and head ([`BlockStack`]), which is what
//!   per-block activation recomputation needs.
//! - [`precision`]: the compute dtype of forward and backward ([`Precision`]).
//! - [`seed`]: one seed mixer and one version-stable generator for everything seeded.
//! - [`files`]: no writes through links, no reads of devices, output folders that hold only
//!   kiln's files ([`FileError`], [`OutputDir`]).
//! - [`store`]: atomic file writes and model weights as bytes ([`StoreError`]).
//! - [`limits`]: ceilings on sizes read from files and flags ([`Limit`], [`LimitError`]).
//! - [`memory`]: the process's peak resident memory, as the benchmarks report it.
//! - `fuzz` (feature `fuzz`): the stable fuzz harness behind every crate's `tests/fuzz.rs`.

#![warn(missing_docs)]

pub mod batch;
pub mod block_stack;
pub mod files;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod limits;
pub mod memory;
pub mod precision;
pub mod seed;
pub mod store;
pub mod train_model;

pub use batch::{Batch, ClassificationBatch, IGNORE_INDEX, LmBatch, MlmBatch};
pub use block_stack::BlockStack;
pub use files::{FileError, OutputDir};
pub use limits::{Limit, LimitError};
pub use precision::Precision;
pub use store::StoreError;
pub use train_model::{BoxError, StepOutput, TrainModel, correct_tokens};
