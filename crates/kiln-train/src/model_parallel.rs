//! The loop's side of tensor and pipeline parallelism: the model cut into this rank's part at
//! the start, and at the points where a part is not the whole model (the loss, the tied
//! embedding's gradient, the gradient norm, checkpoints, the returned model) the one call
//! kiln-dist's [`ModelParallel`] makes of it.
//!
//! The Trainer knows no model, so a model's [`ParallelModel`] methods reach it as the
//! object-safe [`Parts`], set by [`Trainer::with_model_parallel`](crate::Trainer).

use burn::optim::GradientsParams;
use kiln_dist::{
    ModelParallel, ModelParallelConfig, ParallelModel, ProcessGrid, ProcessGroup, ReduceOp,
};

use crate::error::{Result, TrainError};
use crate::pipeline::PipelineStage;

/// A model's [`ParallelModel`] methods, for a loop generic over any model.
pub(crate) trait Parts<M>: Send {
    fn num_blocks(&self, model: &M) -> usize;
    fn partition(&self, mp: &ModelParallel, model: M) -> kiln_dist::Result<M>;
    fn gather(
        &self,
        mp: &ModelParallel,
        part: &M,
        template: Option<M>,
    ) -> kiln_dist::Result<Option<M>>;
    fn sync_tied(
        &self,
        mp: &ModelParallel,
        part: &M,
        grads: GradientsParams,
    ) -> kiln_dist::Result<GradientsParams>;
    fn squares(&self, mp: &ModelParallel, part: &M, grads: &GradientsParams) -> f64;
}

/// [`Parts`] of a [`ParallelModel`].
pub(crate) struct PartsOf;

impl<M: ParallelModel> Parts<M> for PartsOf {
    fn num_blocks(&self, model: &M) -> usize {
        model.num_blocks()
    }

    fn partition(&self, mp: &ModelParallel, model: M) -> kiln_dist::Result<M> {
        mp.partition(model)
    }

    fn gather(
        &self,
        mp: &ModelParallel,
        part: &M,
        template: Option<M>,
    ) -> kiln_dist::Result<Option<M>> {
        mp.gather(part, template)
    }

    fn sync_tied(
        &self,
        mp: &ModelParallel,
        part: &M,
        grads: GradientsParams,
    ) -> kiln_dist::Result<GradientsParams> {
        mp.sync_tied(part, grads)
    }

    fn squares(&self, mp: &ModelParallel, part: &M, grads: &GradientsParams) -> f64 {
        kiln_optim::grad_squares(part, grads, mp.counts_in_norm(part))
    }
}

/// A run's model split over the grid: the grid's groups, this rank's part, and (on world rank
/// 0) a whole model to gather the parts into.
pub(crate) struct ModelSplit<M> {
    mp: ModelParallel,
    parts: Box<dyn Parts<M>>,
    template: Option<M>,
}

impl<M: Clone> ModelSplit<M> {
    /// The grid of `config` over `world`, for `model` (whole, the same on every rank).
    pub fn new(
        world: &ProcessGroup,
        config: &ModelParallelConfig,
        parts: Box<dyn Parts<M>>,
        model: &M,
    ) -> Result<Self> {
        let grid = ProcessGrid::new(world.clone(), config)?;
        let mp = ModelParallel::new(grid, parts.num_blocks(model))?;
        let template = world.is_main().then(|| model.clone());
        Ok(Self {
            mp,
            parts,
            template,
        })
    }

    /// The grid.
    pub fn grid(&self) -> &ProcessGrid {
        self.mp.grid()
    }

    /// This rank's part of the whole `model`.
    pub fn partition(&self, model: M) -> Result<M> {
        Ok(self.parts.partition(&self.mp, model)?)
    }

    /// This rank's stage, when the blocks are cut into more than one (the part holds only its
    /// own blocks, so the stage runs all of them).
    pub fn pipeline_stage(&self) -> Option<PipelineStage> {
        let grid = self.mp.grid();
        (grid.pipeline().size() > 1).then(|| PipelineStage {
            group: grid.pipeline().clone(),
            blocks: 0..self.mp.part().blocks.len(),
        })
    }

    /// Whether this rank reports the loss: one rank per data-parallel replica (the last
    /// stage's tensor-parallel rank 0), so a sum over the world counts each replica once.
    pub fn reports_loss(&self) -> bool {
        let grid = self.mp.grid();
        grid.is_last_stage() && grid.tensor().rank() == 0
    }

    /// The tied embedding's gradient summed between the first and last stage.
    pub fn sync_tied(&self, part: &M, grads: GradientsParams) -> Result<GradientsParams> {
        Ok(self.parts.sync_tied(&self.mp, part, grads)?)
    }

    /// The whole model's gradient norm (the same on every rank).
    pub fn grad_norm(&self, part: &M, grads: &GradientsParams) -> Result<f64> {
        let squares = self.parts.squares(&self.mp, part, grads);
        Ok(self.mp.global_norm(squares)?)
    }

    /// The whole model on world rank 0 (every rank calls it); `None` elsewhere.
    pub fn gather(&self, part: &M) -> Result<Option<M>> {
        Ok(self.parts.gather(&self.mp, part, self.template.clone())?)
    }
}

/// Whether every rank's parameters are finite (every rank calls it): a part that is not must
/// stop every rank, not only its own.
pub(crate) fn all_finite(world: &ProcessGroup, finite: bool) -> Result<bool> {
    let mut bad = [f64::from(u8::from(!finite))];
    world
        .all_reduce_f64(&mut bad, ReduceOp::Max)
        .map_err(TrainError::from)?;
    Ok(bad[0] == 0.0)
}
