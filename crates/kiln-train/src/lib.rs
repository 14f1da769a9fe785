//! kiln-train: the training loop and its tricks. It knows no model: a model implements
//! kiln-base's [`TrainModel`] for its batch type (kiln's GPT and BERTs do, in kiln-model), and
//! a [`RunConfig`] describes the run.
//!
//! [`Trainer`] runs the loop; each trick is a small piece it composes, in its own file:
//!
//! - [`run_config`]: one serializable description of a run (model, data, optimizer, schedule,
//!   loop), JSON or TOML, recorded in every checkpoint.
//! - [`batch_source`]: Burn `Dataset` + `Batcher` behind one indexable source.
//! - [`data_order`]: seeded per-epoch shuffles; the data position is two numbers.
//! - accumulation: inside the loop, micro-batch gradients averaged by their
//!   [`Batch::weight`] (tokens).
//! - [`Precision`] (kiln-base): f16/bf16 forward and backward with f32 master weights.
//! - [`loss_scale`]: dynamic loss scaling with torch `GradScaler` semantics.
//! - [`recompute`]: activation recomputation, Burn's balanced checkpointing or per block (for
//!   any [`BlockStack`]).
//! - [`evaluate`]: loss, perplexity and accuracy on held-out data.
//! - [`pipeline`]: pipeline parallelism, a [`BlockStack`] cut into stages over a process group,
//!   GPipe and 1F1B schedules.
//! - [`early_stopping`]: patience on any metric, best weights restored.
//! - [`checkpoint`]: atomic checkpoints, exact resume, corrupt files named and skipped; each
//!   carries its run's id, and a run folder is locked while a run uses it.
//! - [`limits`]: ceilings on the sizes read from configs, flags and checkpoints.
//! - model parallelism (`model_parallel.rs`): tensor and pipeline parallelism through
//!   kiln-dist's `ModelParallel`, for a model that is a `ParallelModel`
//!   ([`Trainer::with_model_parallel`]); checkpoints hold the whole model.
//! - [`param_ids`]: parameter ids stable across processes, so optimizer state resumes.
//! - [`metrics_log`], [`plot`], [`progress`]: JSON lines, an SVG plot, a progress display.

#![warn(missing_docs)]

pub mod batch_source;
pub mod checkpoint;
mod config;
pub mod data_order;
pub mod early_stopping;
mod error;
pub mod evaluate;
pub mod limits;
pub mod loss_scale;
pub mod metrics_log;
mod model_parallel;
pub mod param_ids;
pub mod pipeline;
pub mod plot;
pub mod progress;
pub mod recompute;
pub mod run_config;
mod run_lock;
mod trainer;

pub use batch_source::BatchSource;
pub use config::{NonFinitePolicy, TrainerConfig};
pub use early_stopping::{EarlyStoppingConfig, Metric};
pub use error::{Result, TrainError};
pub use evaluate::EvalMetrics;
pub use kiln_base::{Batch, BlockStack, Precision, StepOutput, TrainModel};
pub use loss_scale::LossScaleConfig;
pub use pipeline::PipelineStage;
pub use recompute::Recompute;
pub use run_config::RunConfig;
pub use trainer::{StepHook, TrainOutcome, Trainer, params_finite};
