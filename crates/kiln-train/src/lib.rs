//! kiln-train: the training loop and its tricks.
//!
//! For now: [`RunningMean`], the smoothed loss a training loop prints. The `Trainer` with
//! accumulation, mixed precision, early stopping, recomputation and resume comes with the
//! training issue.

#![warn(missing_docs)]

mod running_mean;

pub use running_mean::RunningMean;
