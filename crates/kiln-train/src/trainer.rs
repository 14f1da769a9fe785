//! The training loop. It reads top to bottom: build the micro-batches, run forward and
//! backward (in the configured precision, with the configured recomputation), average the
//! gradients, unscale, check, clip, step; then log, evaluate, stop early, checkpoint.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, GradientCheckpointingStrategy, Tensor};
use kiln_base::{Batch, BoxError, TrainModel, seed};
use kiln_dist::{DataParallel, ParallelModel, ProcessGroup, ReduceOp};
use kiln_optim::{OptimizerConfig, ScheduleConfig, grad_norm, scale_grads};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::batch_source::BatchSource;
use crate::checkpoint::{CheckpointDir, Snapshot, TrainerState};
use crate::config::{NonFinitePolicy, TrainerConfig};
use crate::data_order::{DataOrder, DataPosition};
use crate::early_stopping::Verdict;
use crate::error::{Result, TrainError};
use crate::evaluate::{EvalMetrics, EvalRanks, evaluate_on};
use crate::limits;
use crate::metrics_log::{METRICS_FILE, MetricsLog, MetricsRecord};
use crate::model_parallel::{ModelSplit, Parts, PartsOf, all_finite};
use crate::param_ids::stable_param_ids;
use crate::pipeline::{PipelineStage, pipeline_step};
use crate::plot::training_plot;
use crate::progress::Progress;
use crate::recompute::{Recompute, per_block_backward};
use crate::run_config::{RunConfig, first_difference};
use crate::run_lock::{RunIdentity, RunLock, new_run_id};

/// The run's config, beside `metrics.jsonl` in the run folder.
const RUN_FILE: &str = "run.json";

/// Called after every optimizer step with the updated model (gradual pruning re-applies its
/// masks here, for example); an error stops the run. Closures
/// `FnMut(usize, M) -> Result<M, E>` are hooks.
pub trait StepHook<M>: Send {
    /// `step` is the number of optimizer steps taken so far (1 after the first).
    fn after_optimizer_step(&mut self, step: usize, model: M) -> std::result::Result<M, BoxError>;
}

impl<M, E, F> StepHook<M> for F
where
    F: FnMut(usize, M) -> std::result::Result<M, E> + Send,
    E: Into<BoxError>,
{
    fn after_optimizer_step(&mut self, step: usize, model: M) -> std::result::Result<M, BoxError> {
        self(step, model).map_err(Into::into)
    }
}

/// How a run ended.
pub struct TrainOutcome<M> {
    /// The trained model: the best one by the early-stopping metric when early stopping is on.
    pub model: M,
    /// The loop state at the end.
    pub state: TrainerState,
    /// The evaluation of the returned model and the step it was taken at: the best
    /// evaluation when early stopping chose the model, else the last one.
    pub eval: Option<(usize, EvalMetrics)>,
    /// The last evaluation and its step (later than `eval` when early stopping went back to
    /// better weights).
    pub last_eval: Option<(usize, EvalMetrics)>,
    /// The step the run resumed from.
    pub resumed_from: Option<usize>,
    /// The run's id: new for a run started from scratch, the checkpoint's for a resumed one.
    pub run_id: String,
}

/// kiln's training loop, built from a [`RunConfig`]: the optimizer and the schedule are
/// built for the model when [`fit`](Self::fit) starts, the schedule sized to the run.
pub struct Trainer<M, B> {
    config: TrainerConfig,
    optimizer: OptimizerConfig,
    schedule: ScheduleConfig,
    run: serde_json::Value,
    train: BatchSource<B>,
    eval: Option<BatchSource<B>>,
    hooks: Vec<Box<dyn StepHook<M>>>,
    group: ProcessGroup,
    parts: Option<Box<dyn Parts<M>>>,
}

impl<M: TrainModel<B>, B: Batch> Trainer<M, B> {
    /// A trainer for the run `run` on the training data `train`; the config is validated here
    /// (the optimizer's settings when `fit` builds it).
    pub fn new<C, D>(run: &RunConfig<C, D>, train: BatchSource<B>) -> Result<Self>
    where
        C: Serialize + DeserializeOwned,
        D: Serialize + DeserializeOwned,
    {
        run.trainer.validate()?;
        Ok(Self {
            config: run.trainer.clone(),
            optimizer: run.optimizer.clone(),
            schedule: run.schedule.clone(),
            run: run.to_value(),
            train,
            eval: None,
            hooks: Vec::new(),
            group: ProcessGroup::single(),
            parts: None,
        })
    }

    /// Data parallelism over `group` (PyTorch DDP's semantics): every rank trains the same
    /// model on its own micro-batches of each step (`batch_size` is per rank), gradients and
    /// metrics are summed across ranks, rank 0 prints, logs and writes checkpoints. With `N`
    /// ranks and accumulation `a`, a step is the step of one process accumulating `N·a`
    /// micro-batches. `TrainerConfig::data_parallel` sets buckets, the reduction dtype and
    /// ZeRO-1.
    pub fn with_process_group(mut self, group: ProcessGroup) -> Self {
        self.group = group;
        self
    }

    /// The run's model split, when `TrainerConfig::model_parallel` asks for one.
    fn model_split(&mut self, world: &ProcessGroup, model: &M) -> Result<Option<ModelSplit<M>>> {
        let config = &self.config.model_parallel;
        if !config.is_model_parallel() {
            return Ok(None);
        }
        let Some(parts) = self.parts.take() else {
            return Err(TrainError::InvalidConfig(
                "tensor or pipeline parallelism needs a model that is a ParallelModel: build the trainer with `with_model_parallel`".into(),
            ));
        };
        if config.pipeline_parallel > 1 && self.config.recompute == Recompute::PerBlock {
            return Err(TrainError::InvalidConfig(
                "per-block recomputation does not combine with pipeline parallelism (the pipeline drives the blocks' backward passes itself); use Recompute::Balanced".into(),
            ));
        }
        if matches!(self.optimizer, OptimizerConfig::Lamb(_)) {
            // LAMB's trust ratios are per whole tensor, and a part holds slices of them.
            return Err(TrainError::InvalidConfig(
                "LAMB does not combine with tensor or pipeline parallelism (its trust ratio needs each whole tensor); use AdamW".into(),
            ));
        }
        ModelSplit::new(world, config, parts, model).map(Some)
    }

    /// Evaluation data: loss, perplexity and accuracy every `eval_every` steps.
    pub fn with_eval(mut self, eval: BatchSource<B>) -> Self {
        self.eval = Some(eval);
        self
    }

    /// A hook called after every optimizer step.
    pub fn with_hook(mut self, hook: impl StepHook<M> + 'static) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Trains `model` (built on `device`, with or without autodiff) and returns it with the
    /// run's outcome.
    ///
    /// Before anything else, the folders the run writes to (the checkpoint folder, the run
    /// folder) are checked to be writable and locked for the run's duration
    /// ([`TrainError::NotWritable`], [`TrainError::Locked`]); a run that does not resume
    /// refuses folders holding another run's checkpoints or metrics ([`TrainError::Occupied`])
    /// unless `overwrite` is set.
    pub fn fit(mut self, model: M, device: &Device) -> Result<TrainOutcome<M>> {
        let config = self.config.clone();
        if config.early_stopping.is_some() && self.eval.is_none() {
            return Err(TrainError::InvalidConfig(
                "early stopping needs evaluation data (with_eval)".into(),
            ));
        }
        let device = config.recompute.training_device(device);
        let group = self.group.clone();
        let mut model = prepare(model, config.recompute);
        // Every rank runs the same config on the same data.
        group.check_same("the run config", self.run.to_string().as_bytes())?;
        group.check_same(
            "the number of training items",
            self.train.len().to_string().as_bytes(),
        )?;
        // Tensor and pipeline parallelism: every rank keeps its part of the model (the whole
        // one stays until a checkpoint is restored into it); the data-parallel replicas of
        // each part are the ranks of the grid's data group.
        let split = self.model_split(&group, &model)?;
        let whole = split.as_ref().map(|_| model.clone());
        if let Some(split) = &split {
            model = split.partition(model)?;
        }
        let data_group = split
            .as_ref()
            .map_or_else(|| group.clone(), |s| s.grid().data().clone());
        let (rank, ranks) = (data_group.rank(), data_group.size());
        // Every replica starts from the weights of the data group's rank 0.
        let dp = DataParallel::new(data_group.clone(), config.data_parallel.clone(), &model)?;
        model = dp.check_and_broadcast(model)?;
        // Under model parallelism each rank's optimizer state is its own.
        let shard_optimizer = dp.shards_optimizer() || split.is_some();
        let stage = split.as_ref().and_then(|s| s.pipeline_stage());
        let reports = split.as_ref().is_none_or(|s| s.reports_loss());
        if let Some(stage) = &stage {
            report_pipeline(stage, &config, &group)?;
        }
        let mut order = DataOrder::new(
            self.train.len(),
            config.batch_size,
            config.seed,
            config.shuffle,
        )
        .ok_or_else(|| {
            TrainError::InvalidConfig(format!(
                "the training data has {} items, fewer than one batch of {}",
                self.train.len(),
                config.batch_size
            ))
        })?;
        let total = total_steps(&config, self.train.len(), ranks)?;
        // The folders, once the settings are known to make a run (`overwrite` deletes); the
        // locks are held until `fit` returns.
        let (mut locks, mut run_id) = claim_folders(&config, &group)?;
        let mut optimizer = self.optimizer.init(&model)?;
        let mut scheduler = self.schedule.init_for_run(total)?;
        let checkpoints = config
            .checkpoint_path()
            .map(|dir| CheckpointDir::new(dir, config.keep_checkpoints));

        let mut state = TrainerState {
            step: 0,
            position: DataPosition::default(),
            units_seen: 0,
            skipped_steps: 0,
            scaler: config
                .precision
                .needs_loss_scaling()
                .then(|| config.loss_scale.init()),
            early_stopping: config.early_stopping.as_ref().map(|c| c.init()),
            stopped_early: false,
            best_eval: None,
            world_size: group.size(),
            train_items: self.train.len(),
        };
        let quiet = config.quiet || !group.is_main();
        let mut progress = Progress::new(0, total, B::UNITS, quiet);
        let mut resumed_from = None;
        let mut best_model: Option<M> = None;
        if let Some(dir) = checkpoints.as_ref().filter(|_| config.resume)
            && let Some(restored) = self.restore(
                whole.clone().unwrap_or_else(|| model.clone()),
                split.as_ref(),
                &mut optimizer,
                scheduler.as_mut(),
                dir,
                &group,
                shard_optimizer,
                ranks,
                &order,
                total,
                &progress,
            )?
        {
            (model, state, best_model, run_id) = restored;
            resumed_from = Some(state.step);
            progress = Progress::new(state.step, total, B::UNITS, quiet);
        }
        drop(whole);
        let identity = RunIdentity::of_this_process(&run_id);
        for lock in &mut locks {
            lock.record(&identity)?;
        }
        let log = match config.run_dir.as_ref().filter(|_| group.is_main()) {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                let log = MetricsLog::open(&dir, resumed_from)?;
                let run = serde_json::to_vec_pretty(&self.run).expect("JSON values serialize");
                kiln_base::store::write_atomic(&dir.join(RUN_FILE), &run)?;
                Some(log)
            }
            None => None,
        };

        let mut last_eval = None;
        let mut loss_since_log = (0.0, 0usize);
        let mut reported_memory = false;
        while state.step < total && !state.stopped_early {
            // Dropout draws from the device generator: seeding it per step (and per
            // micro-batch) makes a resumed run draw what the uninterrupted one drew.
            let step_seed = seed::mix(config.seed, state.step as u64);
            let epoch_before = state.position.epoch;

            // 1. The step's micro-batches: `grad_accumulation` on each rank, this rank's in
            //    one run of the shared order. Their weights are summed over every rank.
            let per_rank = config.grad_accumulation;
            let mut batches = Vec::with_capacity(per_rank);
            for index in 0..per_rank * ranks {
                let indices = order.next_batch(&mut state.position)?;
                if index / per_rank == rank {
                    batches.push((index, self.train.batch(&indices, &device)?));
                }
            }
            let mut units = [batches.iter().map(|(_, b)| b.weight() as f64).sum::<f64>()];
            data_group.all_reduce_f64(&mut units, ReduceOp::Sum)?;
            let units = units[0] as usize;

            // 2. Forward and backward of each, gradients averaged by weight, then summed over
            //    the ranks.
            let loss_scale = state.scaler.as_ref().map_or(1.0, |s| s.scale());
            let (loss, grads) = match &stage {
                Some(stage) => pipeline_step(
                    &model,
                    stage,
                    config.model_parallel.schedule,
                    &batches,
                    units,
                    loss_scale,
                    step_seed,
                    config.precision,
                    &device,
                )?,
                None => accumulate_gradients(
                    &model, &batches, units, loss_scale, step_seed, &config, &device,
                )?,
            };
            // One rank per replica reports the loss (the parts of one replica share it).
            let mut loss = [if reports { loss } else { 0.0 }];
            group.all_reduce_f64(&mut loss, ReduceOp::Sum)?;
            let loss = loss[0];
            let mut grads = dp.all_reduce_gradients(&model, grads)?;
            if let Some(split) = &split {
                grads = split.sync_tied(&model, grads)?;
            }

            // 3. Unscale, check, clip (every rank holds the same gradients: same decisions).
            if loss_scale != 1.0 {
                grads = scale_grads(&model, grads, 1.0 / loss_scale);
            }
            let norm = match &split {
                Some(split) => split.grad_norm(&model, &grads)?,
                None => grad_norm(&model, &grads),
            };
            let lr = scheduler.step();
            state.step += 1;
            state.units_seen = state.units_seen.saturating_add(units as u64);
            let finite = loss.is_finite() && norm.is_finite();
            if let Some(scaler) = &mut state.scaler {
                scaler.update(!finite);
            }
            if finite {
                if let Some(max) = config.clip_grad_norm
                    && norm > max
                {
                    grads = scale_grads(&model, grads, max / (norm + 1e-6));
                }
                // 4. The optimizer's own preparation (LAMB's global clipping), the step (under
                //    ZeRO-1 each rank steps its own parameters and shares them), the hooks.
                let (grads, _) = self.optimizer.prepare_gradients(&model, grads)?;
                let grads = dp.owned_gradients(&model, grads)?;
                model = optimizer.step(lr, model, grads);
                model = dp.share_updated(model)?;
                if !reported_memory && group.size() > 1 {
                    reported_memory = true;
                    report_memory(&model, &optimizer, &group, &dp, &progress)?;
                }
                if !self.hooks.is_empty() {
                    for hook in &mut self.hooks {
                        model = hook
                            .after_optimizer_step(state.step, model)
                            .map_err(|source| TrainError::Hook {
                                step: state.step,
                                source,
                            })?;
                    }
                    // Whatever a hook computed, parameters enter the next step as leaves.
                    model = model.map(&mut AsLeaves);
                }
                loss_since_log = (loss_since_log.0 + loss, loss_since_log.1 + 1);
            } else {
                state.skipped_steps += 1;
                if state.scaler.is_none() && config.non_finite == NonFinitePolicy::Error {
                    return Err(TrainError::NonFinite {
                        step: state.step,
                        loss,
                        grad_norm: norm,
                    });
                }
                progress.println(&format!(
                    "step {}: skipped (loss {loss}, gradient norm {norm})",
                    state.step
                ));
            }

            // 5. Log.
            let last_step = state.step == total;
            if state.step.is_multiple_of(config.log_every) || last_step {
                let mean = loss_since_log.0 / loss_since_log.1.max(1) as f64;
                loss_since_log = (0.0, 0);
                let rate = progress.update(state.step, mean, lr, state.units_seen);
                if let Some(log) = &log {
                    log.append(&MetricsRecord {
                        step: state.step,
                        split: "train".into(),
                        loss: mean,
                        lr: Some(lr),
                        grad_norm: Some(norm),
                        loss_scale: state.scaler.as_ref().map(|s| s.scale()),
                        units_per_s: rate,
                        perplexity: None,
                        accuracy: None,
                    })?;
                }
            }

            // 6. Evaluate, stop early.
            let epoch_ended = state.position.epoch != epoch_before;
            let due = match config.eval_every {
                0 => epoch_ended,
                every => state.step.is_multiple_of(every),
            };
            if let Some(eval) = self.eval.as_ref().filter(|_| due || last_step) {
                let ranks = EvalRanks {
                    replicas: &data_group,
                    all: &group,
                    stage: stage.as_ref(),
                    reports,
                };
                let metrics = evaluate_on(
                    &model,
                    eval,
                    config.eval_batch_size,
                    config.eval_items,
                    &device,
                    &ranks,
                )?;
                progress.println(&format!("step {}: held-out {metrics}", state.step));
                if let Some(log) = &log {
                    log.append(&MetricsRecord {
                        step: state.step,
                        split: "eval".into(),
                        loss: metrics.loss,
                        lr: None,
                        grad_norm: None,
                        loss_scale: None,
                        units_per_s: None,
                        perplexity: Some(metrics.perplexity),
                        accuracy: metrics.accuracy,
                    })?;
                }
                if let Some(es) = &mut state.early_stopping {
                    let metric = es.metric();
                    let value = metric.of(&metrics).ok_or_else(|| {
                        TrainError::InvalidConfig(format!(
                            "early stopping on {}, which this model does not report",
                            metric.name()
                        ))
                    })?;
                    match es.update(state.step, value) {
                        Verdict::Improved => {
                            best_model = Some(model.clone());
                            state.best_eval = Some((state.step, metrics.clone()));
                        }
                        Verdict::NoImprovement => {}
                        Verdict::Stop => {
                            state.stopped_early = true;
                            let best = es.best().map_or(String::new(), |(step, value)| {
                                format!(
                                    "; keeping the weights of step {step} ({} {value:.4})",
                                    metric.name()
                                )
                            });
                            progress.println(&format!(
                                "step {}: stopping early, the held-out {} has not improved for {} evaluations{best}",
                                state.step,
                                metric.name(),
                                es.patience(),
                            ));
                        }
                    }
                }
                last_eval = Some((state.step, metrics));
            }

            // 7. Checkpoint.
            let checkpoint_due = config.checkpoint_every > 0
                && (state.step.is_multiple_of(config.checkpoint_every)
                    || last_step
                    || state.stopped_early);
            if let Some(dir) = checkpoints.as_ref().filter(|_| checkpoint_due) {
                if !all_finite(&group, params_finite(&model))? {
                    return Err(TrainError::NonFiniteWeights { step: state.step });
                }
                // Checkpoints hold the whole model, gathered on rank 0.
                let (whole, whole_best) = match &split {
                    Some(split) => (
                        split.gather(&model)?,
                        best_model
                            .as_ref()
                            .map(|b| split.gather(b))
                            .transpose()?
                            .flatten(),
                    ),
                    None => (None, None),
                };
                let snapshot = Snapshot {
                    model: whole.as_ref().unwrap_or(&model),
                    best: whole_best.as_ref().or(best_model.as_ref()),
                    optimizer: &optimizer,
                    scheduler: scheduler.as_ref(),
                    state: &state,
                    run: &self.run,
                    run_id: &run_id,
                };
                dir.save(snapshot, &group, shard_optimizer)?;
            }
        }
        progress.finish();

        if let Some(dir) = &config.run_dir
            && let Some(log) = &log
        {
            let svg = training_plot(&log.records()?);
            kiln_base::store::write_atomic(&PathBuf::from(dir).join("plot.svg"), svg.as_bytes())?;
        }
        let eval = match (best_model, &state.best_eval) {
            (Some(best), Some(best_eval)) => {
                model = best;
                Some(best_eval.clone())
            }
            _ => last_eval.clone(),
        };
        // Rank 0 returns the whole model; the others their part.
        if let Some(split) = &split
            && let Some(whole) = split.gather(&model)?
        {
            model = whole;
        }
        Ok(TrainOutcome {
            model,
            state,
            eval,
            last_eval,
            resumed_from,
            run_id,
        })
    }
}

impl<M: TrainModel<B> + ParallelModel, B: Batch> Trainer<M, B> {
    /// Lets `TrainerConfig::model_parallel` cut the model: each layer across
    /// `tensor_parallel` ranks (Megatron-LM), the blocks into `pipeline_parallel` stages, the
    /// rest of the process group (`with_process_group`) training data-parallel. Gradient
    /// accumulation (the pipeline's micro-batches), mixed precision, clipping on the whole
    /// model's norm and exact resume work as in one process; checkpoints hold the whole model,
    /// gathered on rank 0, which `fit` also returns there (the other ranks return their part).
    pub fn with_model_parallel(mut self) -> Self {
        self.parts = Some(Box::new(PartsOf));
        self
    }
}

/// What [`Trainer::restore`] gives back: the model, the loop state, the best weights and the
/// run id.
type Restored<M> = (M, TrainerState, Option<M>, String);

impl<M: TrainModel<B>, B: Batch> Trainer<M, B> {
    /// Restores model, optimizer, schedule and loop state from the newest usable checkpoint in
    /// `dir`, with the best weights early stopping kept; reports the checkpoints it skipped.
    /// `None` when `dir` holds no checkpoint; an error when the checkpoint was written with
    /// another config or on other data, or holds a loop state this run cannot reach.
    #[allow(clippy::too_many_arguments)]
    fn restore(
        &self,
        model: M,
        split: Option<&ModelSplit<M>>,
        optimizer: &mut ModuleOptimizer,
        scheduler: &mut dyn LrScheduler,
        dir: &CheckpointDir,
        world: &ProcessGroup,
        shard_optimizer: bool,
        data_ranks: usize,
        order: &DataOrder,
        total: usize,
        progress: &Progress,
    ) -> Result<Option<Restored<M>>> {
        let Some((checkpoint, skipped)) = dir.latest()? else {
            progress.println("no checkpoint to resume from: starting at step 0");
            return Ok(None);
        };
        for reason in skipped {
            progress.println(&format!("skipping checkpoint: {reason}"));
        }
        if let Some((field, saved, current)) = first_difference(&checkpoint.run, &self.run) {
            return Err(TrainError::ConfigChanged {
                checkpoint: checkpoint.path.clone(),
                field,
                saved,
                current,
            });
        }
        let ranks = world.size();
        let shards = if shard_optimizer { ranks } else { 1 };
        if checkpoint.state.world_size != ranks || checkpoint.optimizer_shards != shards {
            return Err(TrainError::InvalidConfig(format!(
                "{} was written by {} rank(s) with {} optimizer shard(s); this run has {ranks} rank(s) and {shards}: resume with the same number of processes (and ZeRO setting)",
                checkpoint.path.display(),
                checkpoint.state.world_size,
                checkpoint.optimizer_shards
            )));
        }
        if checkpoint.state.train_items != self.train.len() {
            return Err(TrainError::ConfigChanged {
                checkpoint: checkpoint.path.clone(),
                field: "the number of training items".into(),
                saved: checkpoint.state.train_items.to_string(),
                current: self.train.len().to_string(),
            });
        }
        self.check_state(&checkpoint.state, data_ranks, order, total)
            .map_err(|reason| TrainError::corrupt(checkpoint.path.join("trainer.json"), reason))?;
        // The checkpoint holds the whole model: loaded whole, then cut into this rank's part.
        let part = |whole: M| match split {
            Some(split) => split.partition(whole),
            None => Ok(whole),
        };
        let best = checkpoint.load_best(model.clone())?.map(part).transpose()?;
        if best.is_some() != checkpoint.state.best_eval.is_some() {
            return Err(TrainError::corrupt(
                &checkpoint.path,
                "best weights and the best evaluation must come together",
            ));
        }
        let model = part(checkpoint.load_model(model)?)?;
        *optimizer = checkpoint.load_optimizer(optimizer.clone(), world.rank(), &model)?;
        checkpoint.load_scheduler(scheduler)?;
        progress.println(&format!(
            "resumed run {} from {} (step {})",
            checkpoint.run_id,
            checkpoint.path.display(),
            checkpoint.state.step
        ));
        Ok(Some((model, checkpoint.state, best, checkpoint.run_id)))
    }

    /// Whether a loop state read from a checkpoint is one this run reaches: a step within the
    /// run, the data position that step is at, the loss scaler and early stopping of this
    /// config in a reachable state.
    fn check_state(
        &self,
        state: &TrainerState,
        ranks: usize,
        order: &DataOrder,
        total: usize,
    ) -> std::result::Result<(), String> {
        let config = &self.config;
        if state.step > total {
            return Err(format!(
                "step {} is past the run's {total} steps",
                state.step
            ));
        }
        // Bounded by `limits::MICRO_BATCHES` in `total_steps`, so the product fits.
        let expected = order.position_after(state.step * config.grad_accumulation * ranks);
        if state.position != expected {
            return Err(format!(
                "data position {:?}, but step {} is at {expected:?}",
                state.position, state.step
            ));
        }
        if state.skipped_steps > state.step {
            return Err(format!(
                "{} skipped steps in {}",
                state.skipped_steps, state.step
            ));
        }
        match (&state.scaler, config.precision.needs_loss_scaling()) {
            (Some(scaler), true) => scaler.check(&config.loss_scale)?,
            (None, false) => {}
            (found, _) => return Err(format!("loss scaler {found:?} in this precision")),
        }
        match (&state.early_stopping, &config.early_stopping) {
            (Some(tracker), Some(es)) => tracker.check(es, state.step)?,
            (None, None) => {}
            _ => return Err("early stopping state does not match the config".into()),
        }
        if state.stopped_early && state.early_stopping.is_none() {
            return Err("stopped early without early stopping".into());
        }
        if let Some((at, _)) = &state.best_eval
            && (*at > state.step || state.early_stopping.is_none())
        {
            return Err(format!(
                "a best evaluation at step {at} (the checkpoint is at step {})",
                state.step
            ));
        }
        Ok(())
    }
}

/// Rank 0 locks the folders the run writes to (checked writable first) and, for a run that
/// does not resume, makes sure they hold no other run's results (or clears them with
/// `overwrite`); every rank learns the outcome and the id a new run takes. Returns the locks
/// (rank 0's) and that id.
fn claim_folders(config: &TrainerConfig, group: &ProcessGroup) -> Result<(Vec<RunLock>, String)> {
    let mine = if group.is_main() {
        claim(config).map(|locks| (locks, new_run_id()))
    } else {
        Ok((Vec::new(), String::new()))
    };
    let mut word = match &mine {
        Ok((_, id)) => format!("ok {id}"),
        Err(e) => format!("error {e}"),
    }
    .into_bytes();
    if group.size() > 1 {
        group.broadcast_vec(&mut word, 0)?;
    }
    let word = String::from_utf8_lossy(&word).into_owned();
    match (mine, word.split_once(' ')) {
        (Err(e), _) => Err(e),
        (Ok((locks, _)), Some(("ok", id))) => Ok((locks, id.to_string())),
        (Ok(_), _) => Err(TrainError::MainRankFailed(
            word.strip_prefix("error ").unwrap_or(&word).to_string(),
        )),
    }
}

/// Rank 0's part of [`claim_folders`].
fn claim(config: &TrainerConfig) -> Result<Vec<RunLock>> {
    let checkpoints = config
        .checkpoint_path()
        .filter(|_| config.checkpoint_every > 0 || config.resume);
    let run_dir = config.run_dir.as_ref().map(PathBuf::from);
    let mut dirs: Vec<&PathBuf> = checkpoints.iter().chain(run_dir.iter()).collect();
    dirs.dedup();
    let locks = dirs
        .into_iter()
        .map(|dir| RunLock::acquire(dir))
        .collect::<Result<Vec<_>>>()?;
    if config.resume {
        return Ok(locks);
    }
    let checkpoints = checkpoints.map(|dir| CheckpointDir::new(dir, config.keep_checkpoints));
    if config.overwrite {
        if let Some(dir) = &checkpoints {
            dir.clear()?;
        }
        return Ok(locks);
    }
    if let Some(dir) = &checkpoints
        && let Some(found) = dir.occupants()?
    {
        return Err(TrainError::Occupied {
            dir: dir.path().to_path_buf(),
            found,
        });
    }
    if let Some(dir) = &run_dir
        && has_metrics(dir)
    {
        return Err(TrainError::Occupied {
            dir: dir.clone(),
            found: format!("the {METRICS_FILE} of an earlier run"),
        });
    }
    Ok(locks)
}

/// Whether a run folder holds a non-empty metrics log.
fn has_metrics(dir: &Path) -> bool {
    std::fs::metadata(dir.join(METRICS_FILE)).is_ok_and(|m| m.len() > 0)
}

/// Optimizer steps of a run over `items` training items, each step taking
/// `grad_accumulation` micro-batches on each of `ranks` ranks; within
/// [`STEPS`](limits::STEPS), and the run's micro-batches within
/// [`MICRO_BATCHES`](limits::MICRO_BATCHES).
fn total_steps(config: &TrainerConfig, items: usize, ranks: usize) -> Result<usize> {
    let (accumulation, ranks) = (config.grad_accumulation.max(1) as u64, ranks.max(1) as u64);
    let micro = limits::MICRO_BATCHES.check_product(
        "micro-batches per step (grad_accumulation × ranks)",
        &[accumulation, ranks],
    )?;
    let per_epoch = (items / config.batch_size.max(1)) / micro;
    if per_epoch == 0 {
        return Err(TrainError::InvalidConfig(format!(
            "{items} training items make no full step of {ranks} rank(s) x {} x {} examples",
            config.grad_accumulation, config.batch_size
        )));
    }
    // In u128: epochs × steps per epoch cannot wrap.
    let of_epochs = |epochs: usize| epochs as u128 * per_epoch as u128;
    let total = match (config.max_steps, config.max_epochs) {
        (Some(steps), Some(epochs)) => of_epochs(epochs).min(steps as u128),
        (Some(steps), None) => steps as u128,
        (None, Some(epochs)) => of_epochs(epochs),
        (None, None) => {
            return Err(TrainError::InvalidConfig(
                "set max_steps or max_epochs".into(),
            ));
        }
    };
    let total = limits::STEPS.check("the run's optimizer steps", total)?;
    limits::MICRO_BATCHES.check_product(
        "the run's micro-batches (steps × grad_accumulation × ranks)",
        &[total as u64, accumulation, ranks],
    )?;
    Ok(total)
}

/// One step's micro-batches on this rank: `(index among the step's micro-batches on every
/// rank, batch)`.
type MicroBatches<B> = Vec<(usize, B)>;

/// Forward and backward of each micro-batch in the configured precision and recomputation,
/// its loss weighted by its share of the step's loss-carrying units on every rank (`units`),
/// so that the gradients summed over micro-batches and ranks are the average over the whole
/// step. Each micro-batch reseeds the device from `(step_seed, its index)`: dropout draws the
/// same masks whichever rank computes it. Returns this rank's share of the mean loss and its
/// gradients (still multiplied by `loss_scale`).
fn accumulate_gradients<M: TrainModel<B>, B: Batch>(
    model: &M,
    batches: &MicroBatches<B>,
    units: usize,
    loss_scale: f64,
    step_seed: u64,
    config: &TrainerConfig,
    device: &Device,
) -> Result<(f64, GradientsParams)> {
    let mut accumulated = GradientsAccumulator::<M>::new();
    let mut loss = 0.0;
    for (index, batch) in batches {
        device.seed(seed::mix(step_seed, *index as u64));
        let share = batch.weight() as f64 / units.max(1) as f64;
        let (out, grads) = match config.recompute {
            Recompute::PerBlock => {
                per_block_backward(model, batch, loss_scale * share, config.precision, device)?
            }
            _ => {
                // Cast per micro-batch: a backward pass consumes the cast's graph.
                let compute = config.precision.compute_model(model);
                let out = compute.forward_step(batch).map_err(TrainError::Model)?;
                let backward = (out.loss.clone() * (loss_scale * share)).backward();
                (out, GradientsParams::from_grads(backward, model))
            }
        };
        loss += out.loss.into_scalar::<f64>() * share;
        accumulated.accumulate(model, grads);
    }
    Ok((loss, accumulated.grads()))
}

/// Stable parameter ids (so optimizer state survives a restart) and the autodiff strategy of
/// the recomputation mode on every parameter.
fn prepare<M: Module>(model: M, recompute: Recompute) -> M {
    let strategy = match recompute {
        Recompute::Balanced => GradientCheckpointingStrategy::Balanced,
        _ => GradientCheckpointingStrategy::Disabled,
    };
    stable_param_ids(model.map(&mut WithStrategy(strategy)))
}

struct WithStrategy(GradientCheckpointingStrategy);

impl ModuleMapper for WithStrategy {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let strategy = self.0;
        param.map(|t| {
            // A model built on a plain device is lifted onto autodiff to be trained.
            let t = if t.is_autodiff() {
                t
            } else {
                t.autodiff().require_grad()
            };
            t.with_gradient_checkpointing_strategy(strategy)
        })
    }
}

struct AsLeaves;

impl ModuleMapper for AsLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            if t.is_tracked() && !t.is_require_grad() {
                t.detach().require_grad()
            } else {
                t
            }
        })
    }
}

/// Prints, once, the parameters and the optimizer state each rank keeps (all of them, its
/// part of the model, or its ZeRO-1 shard).
fn report_memory<M: Module>(
    model: &M,
    optimizer: &ModuleOptimizer,
    world: &ProcessGroup,
    dp: &DataParallel,
    progress: &Progress,
) -> Result<()> {
    let state = optimizer
        .into_bytes()
        .map_err(|e| TrainError::Data(format!("serializing the optimizer: {e:?}")))?
        .len() as u64;
    let params = model.num_params() as u64 * 4;
    let mine = [params.to_le_bytes(), state.to_le_bytes()].concat();
    let all = world.all_gather_vec(&mine)?;
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
    progress.println(&format!(
        "parameters per rank (MiB, f32): {}\noptimizer state per rank (MiB): {} ({} of {} parameters of this rank's part stepped here)",
        column(0),
        column(8),
        dp.owned_elements(),
        dp.total_elements()
    ));
    Ok(())
}

/// Prints the pipeline's shape once: each stage's blocks, the schedule, the bubble.
fn report_pipeline(
    stage: &PipelineStage,
    config: &TrainerConfig,
    world: &ProcessGroup,
) -> Result<()> {
    let blocks = stage
        .group
        .all_gather_vec(&(stage.blocks.len() as u64).to_le_bytes())?;
    if world.is_main() && !config.quiet {
        let (p, m) = (stage.group.size(), config.grad_accumulation);
        let schedule = config.model_parallel.schedule;
        let blocks: Vec<String> = blocks
            .iter()
            .map(|b| u64::from_le_bytes(b.as_slice().try_into().unwrap_or([0; 8])).to_string())
            .collect();
        eprintln!(
            "pipeline: {p} stages of {} blocks, {m} micro-batches, {schedule:?}: bubble {:.1}% of the step, at most {} micro-batches in flight on stage 0",
            blocks.join(", "),
            100.0 * kiln_dist::schedule::bubble_fraction(p, m),
            schedule.peak_in_flight(p, 0, m)
        );
    }
    Ok(())
}

/// Whether every parameter is finite (one value read back).
pub fn params_finite<M: Module>(model: &M) -> bool {
    struct Poison(Option<Tensor<1>>);
    impl ModuleVisitor for Poison {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // inf·0 and NaN·0 are NaN: one NaN anywhere poisons the sum.
            let t = param.val().detach().mul_scalar(0.0).sum();
            self.0 = Some(match self.0.take() {
                Some(acc) => acc + t,
                None => t,
            });
        }
    }
    let mut poison = Poison(None);
    model.visit(&mut poison);
    poison.0.is_none_or(|t| t.into_scalar::<f64>().is_finite())
}
