//! kiln-train: the training loop and its tricks. It knows no model: a model implements
//! kiln-base's [`TrainModel`] for its batch type (kiln's GPT and BERTs do, in kiln-model), and
//! a [`RunConfig`] describes the run.
//!
//! [`Trainer`] runs the loop (`trainer.rs`, in one sitting): a run's setup builds what it holds
//! (`run.rs`), each optimizer step (`step.rs`) is followed by whatever is due. Each trick is a
//! small piece it composes, in its own file:
//!
//! - [`run_config`]: one serializable description of a run (model, data, optimizer, schedule,
//!   loop), JSON or TOML, recorded in every checkpoint.
//! - [`batch_source`]: Burn `Dataset` + `Batcher` behind one indexable source.
//! - [`data_order`]: seeded per-epoch shuffles; the data position is two numbers.
//! - accumulation (`step.rs`): a step's [`MicroBatches`], their gradients averaged by their
//!   [`Batch::weight`] (tokens).
//! - [`Precision`] (kiln-base): f16/bf16 forward and backward with f32 master weights.
//! - [`loss_scale`]: dynamic loss scaling with torch `GradScaler` semantics.
//! - [`recompute`]: activation recomputation, Burn's balanced checkpointing or per block (for
//!   any [`BlockStack`]).
//! - [`evaluate`]: loss, perplexity and accuracy on held-out data, and when they are due.
//! - parallelism (`parallel.rs`): every call the loop makes to kiln-dist (data parallelism,
//!   ZeRO-1, tensor and pipeline parallelism of a model that is a `ParallelModel`), the
//!   gradients synchronised after the backward passes in one place.
//! - [`pipeline`]: the model run through a pipeline stage's plan (GPipe, 1F1B); the plan and
//!   the transfers between stages are kiln-dist's.
//! - [`early_stopping`]: patience on any metric, best weights restored.
//! - [`checkpoint`]: atomic checkpoints, exact resume, corrupt files named and skipped; each
//!   carries its run's id, and a run folder is locked while a run uses it. When they are due,
//!   and resuming with its checks: `checkpointer.rs`; a split model's optimizer state gathered
//!   whole and cut again for any grid: `reshard.rs`.
//! - [`limits`]: ceilings on the sizes read from configs, flags and checkpoints.
//! - [`param_ids`]: parameter ids stable across processes, so optimizer state resumes.
//! - [`metrics_log`], [`plot`], [`progress`]: JSON lines, an SVG plot, a progress display;
//!   `logger.rs` writes them for a run.

#![warn(missing_docs)]

pub mod batch_source;
pub mod checkpoint;
mod checkpointer;
mod config;
pub mod data_order;
pub mod early_stopping;
mod error;
pub mod evaluate;
pub mod limits;
mod logger;
pub mod loss_scale;
pub mod metrics_log;
mod parallel;
pub mod param_ids;
pub mod pipeline;
pub mod plot;
pub mod progress;
pub mod recompute;
mod reshard;
mod run;
pub mod run_config;
mod run_lock;
mod step;
mod trainer;

pub use batch_source::BatchSource;
pub use config::{NonFinitePolicy, TrainerConfig};
pub use early_stopping::{EarlyStoppingConfig, Metric};
pub use error::{Result, TrainError};
pub use evaluate::EvalMetrics;
pub use kiln_base::{Batch, BlockStack, Precision, StepOutput, TrainModel};
pub use kiln_dist::PipelineStage;
pub use loss_scale::LossScaleConfig;
pub use recompute::Recompute;
pub use run_config::RunConfig;
pub use step::MicroBatches;
pub use trainer::{StepHook, TrainOutcome, Trainer, params_finite};
