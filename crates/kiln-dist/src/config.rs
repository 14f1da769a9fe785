//! The data- and model-parallel settings of a run (part of kiln-train's `TrainerConfig`).

use burn::config::Config;

use crate::error::{DistError, Result};
use crate::schedule::PipelineSchedule;

/// The dtype gradients travel in.
#[derive(Config, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ReduceDtype {
    /// Full precision: the sum of the ranks' f32 gradients.
    F32,
    /// f16 on the wire, f32 accumulation (half the traffic; 10-bit mantissa, small range).
    F16,
    /// bf16 on the wire, f32 accumulation (half the traffic; f32's range, 7-bit mantissa).
    Bf16,
}

/// How gradients are reduced and optimizer state is kept across the ranks of a data-parallel
/// run; defaults from PyTorch DDP (25 MB buckets) and ZeRO off.
#[derive(Config, Debug, PartialEq)]
pub struct DataParallelConfig {
    /// Gradients are all-reduced in buckets of about this many megabytes (DDP's
    /// `bucket_cap_mb`).
    #[config(default = 25.0)]
    pub bucket_mb: f64,
    /// The dtype gradients travel in.
    #[config(default = "ReduceDtype::F32")]
    pub reduce_dtype: ReduceDtype,
    /// ZeRO stage: 0 keeps the whole optimizer state on every rank; 1 shards it by parameter
    /// (Rajbhandari et al. 2020): each rank updates the parameters it owns and broadcasts them;
    /// 2 shards the reduced gradients too: each owner receives and sums only its parameters'
    /// gradients, and the other ranks drop theirs.
    #[config(default = 0)]
    pub zero_stage: usize,
    /// With several micro-batches per rank (gradient accumulation) and f32 reduction: keep each
    /// micro-batch's gradients apart and let every owner add all of them in (rank, micro-batch)
    /// order, as one process accumulating adds them, so that any number of ranks × any
    /// accumulation with the same global batch gives the same bits (and a run resumes on any
    /// such layout exactly). Costs `grad_accumulation` gradient copies per rank until the
    /// reduction and as many times the traffic; off, each rank sums its micro-batches first
    /// (the same sum within rounding).
    #[config(default = false)]
    pub exact_accumulation: bool,
}

impl DataParallelConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.bucket_mb.is_finite() && self.bucket_mb > 0.0) {
            return Err(DistError::InvalidArgument(format!(
                "bucket_mb must be > 0, got {}",
                self.bucket_mb
            )));
        }
        if self.zero_stage > 2 {
            return Err(DistError::InvalidArgument(format!(
                "ZeRO stage {} is not implemented (0, 1 or 2)",
                self.zero_stage
            )));
        }
        Ok(())
    }

    /// Elements of f32 per bucket (at least one).
    pub fn bucket_elements(&self) -> usize {
        ((self.bucket_mb * 1e6 / 4.0) as usize).max(1)
    }
}

/// How the model is cut: each layer across `tensor_parallel` ranks (Megatron-LM), the blocks
/// into `pipeline_parallel` stages; the world's remaining factor trains data-parallel.
#[derive(Config, Debug, PartialEq)]
pub struct ModelParallelConfig {
    /// Ranks each block's matrices are split across; must divide the number of heads and the
    /// MLP width.
    #[config(default = 1)]
    pub tensor_parallel: usize,
    /// Pipeline stages the blocks are cut into (at most the number of blocks).
    #[config(default = 1)]
    pub pipeline_parallel: usize,
    /// The pipeline's schedule; the step's micro-batches are its gradient accumulation.
    #[config(default = "PipelineSchedule::OneFOneB")]
    pub schedule: PipelineSchedule,
}

impl ModelParallelConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.tensor_parallel == 0 || self.pipeline_parallel == 0 {
            return Err(DistError::InvalidArgument(
                "tensor_parallel and pipeline_parallel must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Whether the model is split at all.
    pub fn is_model_parallel(&self) -> bool {
        self.tensor_parallel * self.pipeline_parallel > 1
    }
}
