//! Everything a run is configured by, with the defaults of common practice.

use burn::config::Config;

use crate::early_stopping::EarlyStoppingConfig;
use crate::error::{Result as TrainResult, TrainError};
use crate::limits;
use crate::loss_scale::LossScaleConfig;
use crate::recompute::Recompute;
use kiln_base::Precision;
use kiln_dist::{DataParallelConfig, ModelParallelConfig};

/// What to do when the loss or the gradient norm is NaN or infinite in an f32 or bf16 run
/// (f16 runs skip the step and back off the loss scale instead).
#[derive(Config, Copy, Debug, PartialEq, Eq)]
pub enum NonFinitePolicy {
    /// Stop with [`TrainError::NonFinite`] naming the step.
    Error,
    /// Skip the optimizer step and go on.
    Skip,
}

/// The settings of a [`Trainer`](crate::Trainer) run.
#[derive(Config, Debug)]
pub struct TrainerConfig {
    /// Optimizer steps to take; with `max_epochs` too, whichever comes first.
    #[config(default = "None")]
    pub max_steps: Option<usize>,
    /// Passes over the training data.
    #[config(default = "None")]
    pub max_epochs: Option<usize>,
    /// Examples per micro-batch.
    #[config(default = 32)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step; their gradients are averaged, weighted by their
    /// loss-carrying units (tokens), so the step equals one on the combined batch.
    #[config(default = 1)]
    pub grad_accumulation: usize,
    /// Global gradient-norm clipping threshold (`clip_grad_norm_`); `None` disables it.
    /// 1.0 is the GPT-3 / HF Trainer value.
    #[config(default = "Some(1.0)")]
    pub clip_grad_norm: Option<f64>,
    /// Compute precision of forward and backward.
    #[config(default = "Precision::F32")]
    pub precision: Precision,
    /// Dynamic loss scaling, used with [`Precision::F16`].
    #[config(default = "LossScaleConfig::new()")]
    pub loss_scale: LossScaleConfig,
    /// Activation recomputation.
    #[config(default = "Recompute::None")]
    pub recompute: Recompute,
    /// Evaluate every this many steps; 0 evaluates at the end of each epoch. The last step is
    /// always evaluated when there is evaluation data.
    #[config(default = 0)]
    pub eval_every: usize,
    /// Evaluate on the first this many items of the evaluation data (all when `None`).
    #[config(default = "None")]
    pub eval_items: Option<usize>,
    /// Examples per evaluation batch.
    #[config(default = 64)]
    pub eval_batch_size: usize,
    /// Early stopping on an evaluation metric; needs evaluation data.
    #[config(default = "None")]
    pub early_stopping: Option<EarlyStoppingConfig>,
    /// Write a checkpoint every this many steps (and at the end); 0 disables checkpoints.
    #[config(default = 0)]
    pub checkpoint_every: usize,
    /// Checkpoint folder; defaults to `run_dir/checkpoints`.
    #[config(default = "None")]
    pub checkpoint_dir: Option<String>,
    /// Checkpoints kept (the newest).
    #[config(default = 3)]
    pub keep_checkpoints: usize,
    /// Continue from the newest usable checkpoint, if there is one.
    #[config(default = false)]
    pub resume: bool,
    /// Start a new run even where the checkpoint folder holds another run's checkpoints (or
    /// the run folder its metrics): they are deleted before the first step. Without it (and
    /// without `resume`), such a folder is refused with [`TrainError::Occupied`].
    #[config(default = false)]
    pub overwrite: bool,
    /// Run folder for `metrics.jsonl` and `plot.svg`; nothing is written without it.
    #[config(default = "None")]
    pub run_dir: Option<String>,
    /// Report progress every this many steps.
    #[config(default = 50)]
    pub log_every: usize,
    /// Seed of the data order and of dropout.
    #[config(default = 42)]
    pub seed: u64,
    /// Reshuffle the training data every epoch.
    #[config(default = true)]
    pub shuffle: bool,
    /// NaN/inf handling in f32 and bf16.
    #[config(default = "NonFinitePolicy::Error")]
    pub non_finite: NonFinitePolicy,
    /// No progress output.
    #[config(default = false)]
    pub quiet: bool,
    /// Resume even though the data's fingerprint differs from the checkpoint's (data fixed or
    /// extended on purpose). Off: such a resume is refused, naming the split.
    #[config(default = false)]
    pub allow_data_change: bool,
    /// Data parallelism across the ranks of a process group (`Trainer::with_process_group`):
    /// gradient buckets, the reduction dtype, ZeRO-1. Ignored by a single process.
    #[config(default = "DataParallelConfig::new()")]
    pub data_parallel: DataParallelConfig,
    /// Tensor and pipeline parallelism (over `Trainer::with_process_group`): how the model is cut
    /// across the process group; the pipeline's micro-batches are `grad_accumulation`.
    #[config(default = "ModelParallelConfig::new()")]
    pub model_parallel: ModelParallelConfig,
}

impl TrainerConfig {
    /// Checks every setting and their combinations.
    pub fn validate(&self) -> TrainResult<()> {
        let bad = |m: String| Err(TrainError::InvalidConfig(m));
        if self.max_steps.is_none() && self.max_epochs.is_none() {
            return bad("set max_steps or max_epochs".into());
        }
        if self.max_steps == Some(0) || self.max_epochs == Some(0) {
            return bad("max_steps and max_epochs must be > 0".into());
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch sizes must be > 0".into());
        }
        if self.grad_accumulation == 0 {
            return bad("grad_accumulation must be > 0".into());
        }
        // Sizes that allocate or are multiplied, before any of that happens.
        limits::BATCH_SIZE.check("batch_size", self.batch_size as u64)?;
        limits::BATCH_SIZE.check("eval_batch_size", self.eval_batch_size as u64)?;
        limits::GRAD_ACCUMULATION.check("grad_accumulation", self.grad_accumulation as u64)?;
        limits::EXAMPLES_PER_STEP.check_product(
            "batch_size × grad_accumulation",
            &[self.batch_size as u64, self.grad_accumulation as u64],
        )?;
        if let Some(steps) = self.max_steps {
            limits::STEPS.check("max_steps", steps as u64)?;
        }
        if let Some(epochs) = self.max_epochs {
            // An epoch is at least one step.
            limits::STEPS.check("max_epochs", epochs as u64)?;
        }
        if let Some(max) = self.clip_grad_norm
            && !(max.is_finite() && max > 0.0)
        {
            return bad(format!("clip_grad_norm must be > 0, got {max}"));
        }
        if self.eval_items == Some(0) {
            return bad(
                "eval_items = 0 evaluates nothing (a NaN loss): leave it unset for the whole \
                 held-out split, or give a positive count"
                    .into(),
            );
        }
        if self.log_every == 0 {
            return bad("log_every must be > 0".into());
        }
        self.loss_scale.validate().or_else(bad)?;
        self.data_parallel
            .validate()
            .map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
        self.model_parallel
            .validate()
            .map_err(|e| TrainError::InvalidConfig(e.to_string()))?;
        if let Some(es) = &self.early_stopping {
            es.validate().or_else(bad)?;
        }
        if self.resume && self.overwrite {
            return bad(
                "resume and overwrite contradict each other: resume continues the run in the folder, overwrite replaces it".into(),
            );
        }
        if self.resume && self.checkpoint_dir.is_none() && self.run_dir.is_none() {
            return bad("resume needs checkpoint_dir or run_dir".into());
        }
        if self.checkpoint_every > 0 && self.checkpoint_dir.is_none() && self.run_dir.is_none() {
            return bad("checkpoint_every needs checkpoint_dir or run_dir".into());
        }
        Ok(())
    }

    /// The checkpoint folder, if checkpoints are written or read.
    pub fn checkpoint_path(&self) -> Option<std::path::PathBuf> {
        self.checkpoint_dir.as_ref().map(Into::into).or_else(|| {
            self.run_dir
                .as_ref()
                .map(|d| std::path::Path::new(d).join("checkpoints"))
        })
    }
}
