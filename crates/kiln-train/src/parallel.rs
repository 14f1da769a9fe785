//! The loop's side of parallelism, data and model alike: every call the loop makes to
//! kiln-dist goes through [`Parallelism`], so that the loop itself reads the same on one
//! process and on a 3-D grid.
//!
//! - At the start: the model cut into this rank's part ([`ModelSplit`], when
//!   `TrainerConfig::model_parallel` asks for it), every replica checked and given the
//!   weights of its data group's rank 0 ([`DataParallel`]).
//! - After the backward passes: [`finalize_grads`](Parallelism::finalize_grads), every
//!   gradient synchronisation in one place (Megatron's `finalize_model_grads`).
//! - The optimizer step: under ZeRO-1 each rank steps the parameters it owns and shares them.
//! - Checkpoints and the returned model: the whole model gathered on world rank 0.

use burn::module::{ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use kiln_dist::{
    DataParallel, ModelSplit, ParallelModel, PipelineSchedule, PipelineStage, ProcessGrid,
    ProcessGroup, ReduceOp,
};
use kiln_optim::{grad_norm, grad_squares, scale_grads};

use crate::config::TrainerConfig;
use crate::error::{Result, TrainError};
use crate::recompute::Recompute;

/// How a run is spread over its processes: the data-parallel replicas and, under tensor or
/// pipeline parallelism, the model's split.
pub(crate) struct Parallelism<M> {
    world: ProcessGroup,
    dp: DataParallel,
    split: Option<ModelSplit>,
    /// A whole model to gather the parts into, on world rank 0 of a split model.
    template: Option<M>,
}

impl<M: ParallelModel + Clone> Parallelism<M> {
    /// Cuts `model` (whole, the same on every rank of `world`) as `config` asks, and gives
    /// every replica its data group's rank-0 weights. Returns this rank's part.
    pub fn new(world: ProcessGroup, config: &TrainerConfig, model: M) -> Result<(Self, M)> {
        if config.data_parallel.zero_stage == 2 && config.model_parallel.is_model_parallel() {
            return Err(TrainError::InvalidConfig(
                "ZeRO-2 does not combine with tensor or pipeline parallelism yet (their gradient \
                 norm needs every gradient of a rank's part); use zero_stage 1"
                    .into(),
            ));
        }
        let (split, template, model) = if config.model_parallel.is_model_parallel() {
            if config.model_parallel.pipeline_parallel > 1
                && config.recompute == Recompute::PerBlock
            {
                return Err(TrainError::InvalidConfig(
                    "per-block recomputation does not combine with pipeline parallelism (the pipeline drives the blocks' backward passes itself); use Recompute::Balanced".into(),
                ));
            }
            let grid = ProcessGrid::new(world.clone(), &config.model_parallel)?;
            let split = ModelSplit::new(grid, model.num_blocks())?;
            let template = world.is_main().then(|| model.clone());
            let part = split.partition(model)?;
            (Some(split), template, part)
        } else {
            (None, None, model)
        };
        let data = split
            .as_ref()
            .map_or_else(|| world.clone(), |s| s.grid().data().clone());
        let dp = DataParallel::new(data, config.data_parallel.clone(), &model)?;
        let model = dp.check_and_broadcast(model)?;
        let parallelism = Self {
            world,
            dp,
            split,
            template,
        };
        Ok((parallelism, model))
    }

    /// Every rank of the run.
    pub fn world(&self) -> &ProcessGroup {
        &self.world
    }

    /// The replicas of this rank's part, which share each step's micro-batches.
    pub fn data(&self) -> &ProcessGroup {
        self.dp.group()
    }

    /// This rank's pipeline stage, when the blocks are cut into stages.
    pub fn stage(&self) -> Option<&PipelineStage> {
        self.split.as_ref().and_then(ModelSplit::pipeline_stage)
    }

    /// Whether this rank's loss and evaluation sums count: one rank per replica.
    pub fn reports_loss(&self) -> bool {
        self.split.as_ref().is_none_or(ModelSplit::reports_loss)
    }

    /// Whether each rank keeps its own optimizer state (ZeRO-1, or a part of the model).
    pub fn shards_optimizer(&self) -> bool {
        self.dp.shards_optimizer() || self.split.is_some()
    }

    /// The ZeRO owner map (parameter id → the rank whose optimizer file holds its state) when
    /// the data-parallel ranks of an unsplit model shard the optimizer state.
    pub fn owner_map(&self) -> Option<Vec<(u64, usize)>> {
        (self.dp.shards_optimizer() && self.split.is_none()).then(|| self.dp.owner_map())
    }

    /// Whether the model is cut across ranks (tensor or pipeline parallelism).
    pub fn is_split(&self) -> bool {
        self.split.is_some()
    }

    /// Whether this rank steps the parameter `id` of its part (keeps its optimizer state).
    pub fn steps(&self, id: burn::module::ParamId) -> bool {
        self.dp.steps(id)
    }

    /// This rank's part of a whole model (the model itself when it is not split).
    pub fn partition(&self, whole: M) -> Result<M> {
        match &self.split {
            Some(split) => Ok(split.partition(whole)?),
            None => Ok(whole),
        }
    }

    /// The step's mean loss from this rank's share (one rank per replica reports it).
    pub fn reduce_loss(&self, share: f64) -> Result<f64> {
        let mut loss = [if self.reports_loss() { share } else { 0.0 }];
        self.world.all_reduce_f64(&mut loss, ReduceOp::Sum)?;
        Ok(loss[0])
    }

    /// Whether the backward passes hand each micro-batch's gradients over apart (exact
    /// accumulation across data-parallel ranks, outside a pipeline).
    pub fn keeps_micro_batches(&self) -> bool {
        self.dp.keeps_micro_batches() && self.stage().is_none()
    }

    /// Every gradient synchronisation after the backward passes, in one place: the replicas'
    /// gradients (summed per rank, or each micro-batch's: [`keeps_micro_batches`](Self::keeps_micro_batches))
    /// summed, the tied embedding's parts summed between the first and last stage,
    /// the loss scale divided out, and the whole model's gradient norm (the same on every
    /// rank, so every rank makes the same decisions with it).
    pub fn finalize_grads(
        &self,
        model: &M,
        micro_batches: Vec<GradientsParams>,
        loss_scale: f64,
    ) -> Result<(GradientsParams, f64)> {
        let mut grads = self.dp.all_reduce_micro_batches(model, micro_batches)?;
        if let Some(split) = &self.split {
            grads = split.sync_tied(model, grads)?;
        }
        if loss_scale != 1.0 {
            grads = scale_grads(model, grads, 1.0 / loss_scale);
        }
        let norm = match &self.split {
            Some(split) => {
                let squares = grad_squares(model, &grads, split.counts_in_norm(model));
                split.global_norm(squares)?
            }
            None if self.dp.shards_gradients() => self.sharded_norm(model, &grads)?,
            None => grad_norm(model, &grads),
        };
        Ok((grads, norm))
    }

    /// The whole model's gradient norm under ZeRO-2, where each rank holds its own parameters'
    /// gradients only: every parameter's sum of squares from its owner, added up in visiting
    /// order on every rank as [`grad_norm`] adds them in one process, so clipping, the loss
    /// scaler and the non-finite check decide on the same bits as ZeRO-1 and one process. (An
    /// all-reduce of one owner's value and zeros is exact whatever its order.)
    fn sharded_norm(&self, model: &M, grads: &GradientsParams) -> Result<f64> {
        /// Each float parameter's `sum(grad²)` (what `grad_squares` adds), in visiting order.
        struct Squares<'a> {
            grads: &'a GradientsParams,
            found: Vec<Option<Tensor<1>>>,
        }
        impl ModuleVisitor for Squares<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let squares = self.grads.get::<D>(param.id).map(|g| g.square().sum());
                self.found.push(squares);
            }
        }
        let mut visitor = Squares {
            grads,
            found: Vec::new(),
        };
        model.visit(&mut visitor);
        // One read back for all of them.
        let present: Vec<Tensor<1>> = visitor.found.iter().flatten().cloned().collect();
        let mut values = if present.is_empty() {
            Vec::new()
        } else {
            kiln_dist::tensor::to_host(Tensor::cat(present, 0))?
        }
        .into_iter();
        let mut squares: Vec<f32> = visitor
            .found
            .iter()
            .map(|s| s.as_ref().and_then(|_| values.next()).unwrap_or(0.0))
            .collect();
        self.dp
            .group()
            .all_reduce_f32(&mut squares, ReduceOp::Sum)?;
        let total = squares.iter().fold(0.0f32, |total, &s| total + s);
        Ok((total as f64).sqrt())
    }

    /// The optimizer's step at `lr`: under ZeRO-1 each rank steps the parameters it owns, then
    /// every owner shares what it updated.
    pub fn optimizer_step(
        &self,
        optimizer: &mut ModuleOptimizer,
        lr: f64,
        model: M,
        grads: GradientsParams,
    ) -> Result<M> {
        let grads = self.dp.owned_gradients(&model, grads)?;
        let model = optimizer.step(lr, model, grads);
        Ok(self.dp.share_updated(model)?)
    }

    /// The whole model's optimizer state on world rank 0 from every rank's `state` of its part
    /// (every rank calls it; [`crate::reshard`]); `None` elsewhere.
    pub fn gather_optimizer_state(&self, part: &M, state: Vec<u8>) -> Result<Option<Vec<u8>>> {
        match &self.split {
            Some(split) => crate::reshard::gather_state(
                &self.world,
                self.dp.group(),
                split,
                part,
                self.template.as_ref(),
                state,
            ),
            None => Ok(self.world.is_main().then_some(state)),
        }
    }

    /// This rank's part of the whole model's optimizer state (`whole` is the whole model
    /// `part` was cut from), keeping what this rank steps.
    pub fn partition_optimizer_state(
        &self,
        whole: &M,
        part: &M,
        state: Vec<u8>,
    ) -> Result<Vec<u8>> {
        match &self.split {
            Some(split) => crate::reshard::partition_state(split, whole, part, state, &|id| {
                self.steps(id.into())
            }),
            None => Ok(state),
        }
    }

    /// The whole model on world rank 0 (every rank calls it); `None` elsewhere, and when the
    /// model is not split (each rank then holds it whole).
    pub fn gather(&self, part: &M) -> Result<Option<M>> {
        match &self.split {
            Some(split) => Ok(split.gather(part, self.template.clone())?),
            None => Ok(None),
        }
    }

    /// Whether `mine` holds on every rank (every rank calls it): a part whose parameters are
    /// not finite must stop every rank, not only its own.
    pub fn all(&self, mine: bool) -> Result<bool> {
        let mut bad = [f64::from(u8::from(!mine))];
        self.world.all_reduce_f64(&mut bad, ReduceOp::Max)?;
        Ok(bad[0] == 0.0)
    }

    /// Prints, once, the parameters and the optimizer state each rank keeps (all of them, its
    /// part of the model, or its ZeRO-1 shard).
    pub fn report_memory(&self, model: &M, optimizer: &ModuleOptimizer) -> Result<String> {
        let state = optimizer
            .into_bytes()
            .map_err(|e| TrainError::Serialize {
                what: "the optimizer state",
                reason: format!("{e:?}"),
            })?
            .len() as u64;
        let params = model.num_params() as u64 * 4;
        let mine = [params.to_le_bytes(), state.to_le_bytes()].concat();
        let all = self.world.all_gather_vec(&mine)?;
        let mib = |bytes: &[u8]| {
            let value = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
            format!("{:.2}", value as f64 / (1 << 20) as f64)
        };
        let column = |at: usize| {
            all.iter()
                .map(|b| b.get(at..at + 8).map_or("?".into(), mib))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let gradients = if self.dp.shards_gradients() {
            format!(
                "\ngradients kept after the reduction per rank (MiB, ZeRO-2): {:.2} of {:.2}",
                self.dp.owned_elements() as f64 * 4.0 / (1 << 20) as f64,
                self.dp.total_elements() as f64 * 4.0 / (1 << 20) as f64
            )
        } else {
            String::new()
        };
        Ok(format!(
            "parameters per rank (MiB, f32): {}\noptimizer state per rank (MiB): {} ({} of {} parameters of this rank's part stepped here){gradients}{}",
            column(0),
            column(8),
            self.dp.owned_elements(),
            self.dp.total_elements(),
            if self.dp.total_elements() < self.dp.model_elements() {
                format!(
                    "; {} of its {} parameters train, and only their gradients are all-reduced",
                    self.dp.total_elements(),
                    self.dp.model_elements()
                )
            } else {
                String::new()
            }
        ))
    }

    /// The pipeline's shape, once: each stage's blocks, the schedule, the bubble (`None` off
    /// world rank 0 and without a pipeline; every rank calls it).
    pub fn describe_pipeline(
        &self,
        schedule: PipelineSchedule,
        micro_batches: usize,
    ) -> Result<Option<String>> {
        let Some(stage) = self.stage() else {
            return Ok(None);
        };
        let blocks = stage
            .group
            .all_gather_vec(&(stage.blocks.len() as u64).to_le_bytes())?;
        if !self.world.is_main() {
            return Ok(None);
        }
        let (p, m) = (stage.stages(), micro_batches);
        let blocks: Vec<String> = blocks
            .iter()
            .map(|b| u64::from_le_bytes(b.as_slice().try_into().unwrap_or([0; 8])).to_string())
            .collect();
        Ok(Some(format!(
            "pipeline: {p} stages of {} blocks, {m} micro-batches, {schedule:?}: bubble {:.1}% of the step, at most {} micro-batches in flight on stage 0",
            blocks.join(", "),
            100.0 * kiln_dist::schedule::bubble_fraction(p, m),
            schedule.peak_in_flight(p, 0, m)
        )))
    }
}
