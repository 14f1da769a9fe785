//! kiln-train: the training loop and its tricks.
//!
//! [`Trainer`] runs the loop; each trick is a small piece it composes, in its own file:
//!
//! - [`train_model`]: the model side, a forward pass to a loss ([`TrainModel`], [`Batch`]).
//! - [`batch_source`]: Burn `Dataset` + `Batcher` behind one indexable source.
//! - [`data_order`]: seeded per-epoch shuffles; the data position is two numbers.
//! - accumulation: inside the loop, micro-batch gradients averaged by token count.
//! - [`precision`]: f16/bf16 forward and backward with f32 master weights.
//! - [`loss_scale`]: dynamic loss scaling with torch `GradScaler` semantics.
//! - [`recompute`]: activation recomputation, Burn's balanced checkpointing or per block.
//! - [`evaluate`]: loss, perplexity and accuracy on held-out data.
//! - [`early_stopping`]: patience on any metric, best weights restored.
//! - [`checkpoint`]: atomic checkpoints, exact resume, corrupt files named and skipped.
//! - [`param_ids`]: parameter ids stable across processes, so optimizer state resumes.
//! - [`metrics_log`], [`plot`], [`progress`]: JSON lines, an SVG plot, a progress bar.
//! - [`RunningMean`]: a smoothed loss for hand-written loops.

#![warn(missing_docs)]

pub mod batch_source;
pub mod checkpoint;
mod config;
pub mod data_order;
pub mod early_stopping;
mod error;
pub mod evaluate;
pub mod loss_scale;
pub mod metrics_log;
pub mod param_ids;
pub mod plot;
pub mod precision;
pub mod progress;
pub mod recompute;
mod running_mean;
pub mod train_model;
mod trainer;

pub use batch_source::BatchSource;
pub use config::{NonFinitePolicy, TrainerConfig};
pub use early_stopping::{EarlyStoppingConfig, Metric};
pub use error::{Result, TrainError};
pub use evaluate::EvalMetrics;
pub use loss_scale::LossScaleConfig;
pub use precision::Precision;
pub use recompute::Recompute;
pub use running_mean::RunningMean;
pub use train_model::{Batch, StepOutput, TrainModel};
pub use trainer::{StepHook, TrainOutcome, Trainer, params_finite};
