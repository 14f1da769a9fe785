//! The process grid of 3-D parallelism: data × pipeline × tensor.
//!
//! `world = d · p · t` ranks; rank `(stage · d + data) · t + tensor`, tensor-parallel ranks
//! adjacent as in Megatron-LM (they communicate most, twice per block and direction, so they
//! belong on one machine), pipeline stages outermost (they exchange one activation per
//! micro-batch).
//!
//! | group | its ranks share | what travels in it |
//! |---|---|---|
//! | tensor | stage and data index | `f`/`g` all-reduces of every block |
//! | data | stage and tensor index | the gradient all-reduce of data parallelism |
//! | pipeline | data and tensor index | activations and their gradients, between stages |
//! | embedding | the first and last stage of one pipeline | the tied embedding's gradient |

use crate::config::ModelParallelConfig;
use crate::error::{DistError, Result};
use crate::process_group::ProcessGroup;

/// This rank's place in the grid and the groups it belongs to.
#[derive(Clone, Debug)]
pub struct ProcessGrid {
    world: ProcessGroup,
    data: ProcessGroup,
    tensor: ProcessGroup,
    pipeline: ProcessGroup,
    embedding: ProcessGroup,
}

impl ProcessGrid {
    /// Splits `world` into the grid's groups (every rank calls it, with the same config).
    pub fn new(world: ProcessGroup, config: &ModelParallelConfig) -> Result<Self> {
        config.validate()?;
        let (n, t, p) = (
            world.size(),
            config.tensor_parallel,
            config.pipeline_parallel,
        );
        if t == 0 || p == 0 || !n.is_multiple_of(t * p) {
            return Err(DistError::InvalidArgument(format!(
                "{n} ranks do not divide into tensor-parallel {t} × pipeline-parallel {p} (the number of processes must be a multiple of {})",
                t * p
            )));
        }
        world.check_same("the grid shape", format!("{t}x{p}").as_bytes())?;
        let d = n / (t * p);
        let rank = world.rank();
        let (tensor_rank, data_rank, stage) = (rank % t, (rank / t) % d, rank / (t * d));
        // Every rank takes part in every split, in this order.
        let tensor = world.split(stage * d + data_rank, tensor_rank)?;
        let data = world.split(stage * t + tensor_rank, data_rank)?;
        let pipeline = world.split(data_rank * t + tensor_rank, stage)?;
        let ends = stage == 0 || stage == p - 1;
        let embedding = if ends {
            world.split(data_rank * t + tensor_rank, stage)?
        } else {
            // A group of its own (colors past the pipelines' are unique per rank).
            world.split(d * t + rank, 0)?
        };
        Ok(Self {
            world,
            data,
            tensor,
            pipeline,
            embedding,
        })
    }

    /// A grid of one process.
    pub fn single() -> Self {
        let one = ProcessGroup::single();
        Self {
            world: one.clone(),
            data: one.clone(),
            tensor: one.clone(),
            pipeline: one.clone(),
            embedding: one,
        }
    }

    /// Every rank.
    pub fn world(&self) -> &ProcessGroup {
        &self.world
    }

    /// The replicas of this rank's part of the model (data parallelism).
    pub fn data(&self) -> &ProcessGroup {
        &self.data
    }

    /// The ranks splitting this rank's layers.
    pub fn tensor(&self) -> &ProcessGroup {
        &self.tensor
    }

    /// The stages of this rank's pipeline (rank = stage; see
    /// [`PipelineStage`](crate::pipeline::PipelineStage)).
    pub fn pipeline(&self) -> &ProcessGroup {
        &self.pipeline
    }

    /// The first and last stage of this rank's pipeline (a group of one elsewhere, and when
    /// there is one stage).
    pub fn embedding(&self) -> &ProcessGroup {
        &self.embedding
    }
}
