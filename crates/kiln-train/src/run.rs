//! What a run holds, built once by [`Run::start`]: the model's part on this rank and the
//! parallelism around it, the optimizer and the schedule, the data order, the loop state, the
//! evaluator, the checkpointer and the log. [`Trainer::fit`](crate::Trainer::fit) drives it:
//! [`train_step`](Run::train_step) (`step.rs`), then [`after_step`](Run::after_step).

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::ModuleOptimizer;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::{Device, GradientCheckpointingStrategy, Tensor};
use kiln_base::{Batch, TrainModel};
use kiln_dist::{ParallelModel, ProcessGroup};
use kiln_optim::OptimizerConfig;

use crate::batch_source::BatchSource;
use crate::checkpoint::{CheckpointDir, TrainerState};
use crate::checkpointer::Checkpointer;
use crate::config::TrainerConfig;
use crate::data_order::{DataOrder, DataPosition};
use crate::early_stopping::Verdict;
use crate::error::{Result, TrainError};
use crate::evaluate::{EvalMetrics, Evaluator};
use crate::limits;
use crate::logger::Logger;
use crate::metrics_log::METRICS_FILE;
use crate::parallel::Parallelism;
use crate::param_ids::stable_param_ids;
use crate::recompute::Recompute;
use crate::run_lock::{RunIdentity, RunLock, new_run_id};
use crate::step::StepReport;
use crate::trainer::{StepHook, TrainOutcome, Trainer};

/// Everything one run of [`Trainer::fit`](crate::Trainer::fit) holds.
pub(crate) struct Run<M, B> {
    // What the trainer was given.
    pub config: TrainerConfig,
    pub optimizer_config: OptimizerConfig,
    /// The run config, as JSON (compared with a checkpoint's on resume, written into each).
    pub run: serde_json::Value,
    pub train: BatchSource<B>,
    pub evaluator: Option<Evaluator<B>>,
    pub hooks: Vec<Box<dyn StepHook<M>>>,
    // What the run built.
    pub device: Device,
    pub parallel: Parallelism<M>,
    /// This rank's part of the model (the whole model without model parallelism).
    pub model: M,
    pub optimizer: ModuleOptimizer,
    pub scheduler: Box<dyn LrScheduler>,
    pub order: DataOrder,
    /// The run's optimizer steps.
    pub total: usize,
    pub state: TrainerState,
    pub checkpointer: Option<Checkpointer>,
    /// The best weights early stopping has kept.
    pub best: Option<M>,
    pub last_eval: Option<(usize, EvalMetrics)>,
    pub logger: Logger,
    /// The folders the run writes to, locked until it ends.
    pub locks: Vec<RunLock>,
    pub run_id: String,
    pub resumed_from: Option<usize>,
}

impl<M: TrainModel<B> + ParallelModel, B: Batch> Run<M, B> {
    /// Builds the run: checks the settings, cuts the model, claims and locks the folders,
    /// builds the optimizer and the schedule, and resumes from the newest checkpoint when
    /// asked to.
    pub fn start(trainer: Trainer<M, B>, model: M, device: &Device) -> Result<Self> {
        let Trainer {
            config,
            optimizer: optimizer_config,
            schedule,
            run,
            train,
            eval,
            hooks,
            group: world,
        } = trainer;
        if config.early_stopping.is_some() && eval.is_none() {
            return Err(TrainError::InvalidConfig(
                "early stopping needs evaluation data (with_eval)".into(),
            ));
        }
        let device = config.recompute.training_device(device);
        let model = prepare(model, config.recompute);
        // Every rank runs the same config on the same data.
        world.check_same("the run config", run.to_string().as_bytes())?;
        world.check_same(
            "the number of training items",
            train.len().to_string().as_bytes(),
        )?;
        // Checkpoints hold the whole model: a resumed run loads it whole, then cuts it.
        let whole = model.clone();
        let (parallel, model) = Parallelism::new(world.clone(), &config, model)?;
        let schedule_of_stages = config.model_parallel.schedule;
        if let Some(line) =
            parallel.describe_pipeline(schedule_of_stages, config.grad_accumulation)?
            && !config.quiet
        {
            eprintln!("{line}");
        }
        let order = DataOrder::new(train.len(), config.batch_size, config.seed, config.shuffle)
            .ok_or_else(|| {
                TrainError::InvalidConfig(format!(
                    "the training data has {} items, fewer than one batch of {}",
                    train.len(),
                    config.batch_size
                ))
            })?;
        let total = total_steps(&config, train.len(), parallel.data().size())?;
        // The folders, once the settings are known to make a run (`overwrite` deletes); the
        // locks are held until the run ends.
        let (locks, run_id) = claim_folders(&config, &world)?;
        let optimizer = optimizer_config.init(&model)?;
        let scheduler = schedule.init_for_run(total)?;
        let state = TrainerState {
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
            world_size: parallel.data().size(),
            train_items: train.len(),
            train_data: train.fingerprint().map(str::to_string),
            eval_data: eval
                .as_ref()
                .and_then(|e| e.fingerprint())
                .map(str::to_string),
        };
        let quiet = config.quiet || !world.is_main();
        let logger = Logger::new(0, total, B::UNITS, quiet, config.log_every);
        let mut run = Run {
            evaluator: eval.map(|data| Evaluator::new(data, &config)),
            checkpointer: Checkpointer::of(&config),
            config,
            optimizer_config,
            run,
            train,
            hooks,
            device,
            parallel,
            model,
            optimizer,
            scheduler,
            order,
            total,
            state,
            best: None,
            last_eval: None,
            logger,
            locks,
            run_id,
            resumed_from: None,
        };
        if run.config.resume {
            run.resume(whole)?;
        }
        let identity = RunIdentity::of_this_process(&run.run_id);
        for lock in &mut run.locks {
            lock.record(&identity)?;
        }
        if let Some(dir) = run.config.run_dir.as_ref().filter(|_| world.is_main()) {
            run.logger
                .open(PathBuf::from(dir), run.resumed_from, &run.run)?;
        }
        Ok(run)
    }

    /// Whether the run is over: its steps taken, or stopped early.
    pub fn is_done(&self) -> bool {
        self.state.step >= self.total || self.state.stopped_early
    }

    /// After a step: its log line, then whatever is due: an evaluation (and early stopping on
    /// it), a checkpoint.
    pub fn after_step(&mut self, step: &StepReport) -> Result<()> {
        let last = self.state.step == self.total;
        self.logger.step(&self.state, step, last)?;
        let eval_due = self
            .evaluator
            .as_ref()
            .is_some_and(|e| e.due(self.state.step, step.epoch_ended, last));
        if eval_due {
            self.evaluate()?;
        }
        if self
            .checkpointer
            .as_ref()
            .is_some_and(|c| c.due(&self.state, self.total))
        {
            self.save_checkpoint()?;
        }
        Ok(())
    }

    /// Evaluates the model, logs the metrics, and lets early stopping keep the weights or end
    /// the run.
    fn evaluate(&mut self) -> Result<()> {
        let Some(evaluator) = &self.evaluator else {
            return Ok(());
        };
        let metrics = evaluator.evaluate(&self.model, &self.device, &self.parallel)?;
        let step = self.state.step;
        self.logger.eval(step, &metrics)?;
        // A NaN loss compares as "not better" and "not worse" alike: early stopping would end
        // the run as if it had converged, and the best weights would be a guess.
        if !metrics.loss.is_finite() {
            return Err(TrainError::NonFiniteEval {
                step,
                loss: metrics.loss,
            });
        }
        if let Some(es) = &mut self.state.early_stopping {
            let metric = es.metric();
            let value = metric.of(&metrics).ok_or_else(|| {
                TrainError::InvalidConfig(format!(
                    "early stopping on {}, which this model does not report",
                    metric.name()
                ))
            })?;
            match es.update(step, value) {
                Verdict::Improved => {
                    self.best = Some(self.model.clone());
                    self.state.best_eval = Some((step, metrics.clone()));
                }
                Verdict::NoImprovement => {}
                Verdict::Stop => {
                    self.state.stopped_early = true;
                    let best = es.best().map_or(String::new(), |(step, value)| {
                        format!(
                            "; keeping the weights of step {step} ({} {value:.4})",
                            metric.name()
                        )
                    });
                    self.logger.println(&format!(
                        "step {step}: stopping early, the held-out {} has not improved for {} evaluations{best}",
                        metric.name(),
                        es.patience(),
                    ));
                }
            }
        }
        self.last_eval = Some((step, metrics));
        Ok(())
    }

    /// Ends the run: the plot, the model to return (the best one when early stopping chose
    /// it; the whole model on rank 0 of a split model, the others' parts elsewhere).
    pub fn finish(mut self) -> Result<TrainOutcome<M>> {
        self.logger.finish()?;
        if self.state.step > 0 && self.state.skipped_steps >= self.state.step {
            return Err(TrainError::NothingTrained {
                steps: self.state.step,
            });
        }
        let eval = match (self.best.take(), &self.state.best_eval) {
            (Some(best), Some(best_eval)) => {
                self.model = best;
                Some(best_eval.clone())
            }
            _ => self.last_eval.clone(),
        };
        let model = match self.parallel.gather(&self.model)? {
            Some(whole) => whole,
            None => self.model,
        };
        Ok(TrainOutcome {
            model,
            state: self.state,
            eval,
            last_eval: self.last_eval,
            resumed_from: self.resumed_from,
            run_id: self.run_id,
        })
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
            // Said before it happens, so a user sees what `overwrite` took.
            let ours = dir.ours()?;
            if !ours.is_empty() && !config.quiet {
                let names: Vec<String> = ours.iter().map(|p| p.display().to_string()).collect();
                eprintln!(
                    "overwrite: deleting {} checkpoint folder(s) kiln wrote: {}",
                    names.len(),
                    names.join(", ")
                );
            }
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

/// Stable parameter ids (so optimizer state survives a restart), the model lifted onto
/// autodiff when it was built on a plain device, and the autodiff strategy of the
/// recomputation mode on every parameter.
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
        // A parameter built on a plain device is lifted onto autodiff with the trainability it
        // was given (Burn keeps it on the parameter): a frozen one stays frozen.
        let param = if param.val().is_autodiff() {
            param
        } else {
            param.train()
        };
        let strategy = self.0;
        param.map(|t| t.with_gradient_checkpointing_strategy(strategy))
    }
}
