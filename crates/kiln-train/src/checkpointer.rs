//! The run's side of checkpoints: when one is due, what goes into it (the whole model,
//! gathered from its parts), and resuming from the newest usable one with every check that a
//! resumed run continues the interrupted one exactly. The folder format is
//! [`checkpoint`](crate::checkpoint)'s.

use kiln_base::{Batch, TrainModel};
use kiln_dist::ParallelModel;

use std::sync::OnceLock;

use crate::checkpoint::{
    CheckpointDir, Snapshot, TrainerState, frozen_fingerprint, optimizer_bytes,
};
use crate::config::TrainerConfig;
use crate::error::{Result, TrainError};
use crate::run::Run;
use crate::run_config::first_difference;
use crate::trainer::params_finite;

/// Where a run's checkpoints go, and how often.
pub(crate) struct Checkpointer {
    dir: CheckpointDir,
    /// Every this many steps (and after the last, and when early stopping ends the run);
    /// 0: never (the folder is still read to resume).
    every: usize,
    /// The SHA-256 of the model's frozen parameters, computed once: they never change.
    frozen: OnceLock<Option<String>>,
}

impl Checkpointer {
    /// The run's checkpoint folder, when it has one.
    pub fn of(config: &TrainerConfig) -> Option<Self> {
        config.checkpoint_path().map(|dir| Self {
            dir: CheckpointDir::new(dir, config.keep_checkpoints),
            every: config.checkpoint_every,
            frozen: OnceLock::new(),
        })
    }

    /// Whether a checkpoint is due after the step `state` is at, of a run of `total` steps.
    pub fn due(&self, state: &TrainerState, total: usize) -> bool {
        self.every > 0
            && (state.step.is_multiple_of(self.every) || state.step == total || state.stopped_early)
    }
}

impl<M: TrainModel<B> + ParallelModel, B: Batch> Run<M, B> {
    /// Writes a checkpoint of the run as it is now (every rank calls it): the whole model and
    /// the best weights gathered on rank 0; each rank's optimizer state under ZeRO, the whole
    /// model's gathered on rank 0 when the model is split (so any grid can resume it).
    pub(crate) fn save_checkpoint(&self) -> Result<()> {
        let Some(checkpointer) = &self.checkpointer else {
            return Ok(());
        };
        if !self.parallel.all(params_finite(&self.model))? {
            return Err(TrainError::NonFiniteWeights {
                step: self.state.step,
            });
        }
        let whole = self.parallel.gather(&self.model)?;
        let whole_best = match &self.best {
            Some(best) => self.parallel.gather(best)?,
            None => None,
        };
        let model = whole.as_ref().unwrap_or(&self.model);
        let frozen = match checkpointer.frozen.get() {
            Some(known) => known.clone(),
            None => {
                let found = frozen_fingerprint(model)?;
                checkpointer.frozen.get_or_init(|| found).clone()
            }
        };
        let owners = self.parallel.owner_map();
        let mut optimizer = optimizer_bytes(&self.optimizer)?;
        if self.parallel.is_split() {
            optimizer = self
                .parallel
                .gather_optimizer_state(&self.model, optimizer)?
                .unwrap_or_default();
        }
        let snapshot = Snapshot {
            model,
            best: whole_best.as_ref().or(self.best.as_ref()),
            optimizer: &optimizer,
            scheduler: self.scheduler.as_ref(),
            state: &self.state,
            run: &self.run,
            run_id: &self.run_id,
            frozen_sha256: frozen.as_deref(),
            optimizer_owners: owners.as_deref(),
        };
        // A split model's state is whole on rank 0; ZeRO's is one shard per rank.
        let sharded = self.parallel.shards_optimizer() && !self.parallel.is_split();
        checkpointer
            .dir
            .save(snapshot, self.parallel.world(), sharded)?;
        Ok(())
    }

    /// Restores model, optimizer, schedule, loop state and the best weights early stopping
    /// kept from the newest usable checkpoint, loaded into `whole` (the whole model) and cut
    /// into this rank's part; reports the checkpoints it skipped. Nothing changes when there is
    /// no checkpoint; an error when the checkpoint was written with another config, on other
    /// data or another number of processes, or holds a loop state this run cannot reach.
    pub(crate) fn resume(&mut self, whole: M) -> Result<()> {
        let Some(checkpointer) = &self.checkpointer else {
            return Ok(());
        };
        let Some((checkpoint, skipped)) = checkpointer.dir.latest()? else {
            self.logger
                .println("no checkpoint to resume from: starting at step 0");
            return Ok(());
        };
        for reason in skipped {
            self.logger
                .println(&format!("skipping checkpoint: {reason}"));
        }
        if let Some((field, saved, current)) = first_difference(&checkpoint.run, &self.run) {
            return Err(TrainError::ConfigChanged {
                checkpoint: checkpoint.path.clone(),
                field,
                saved,
                current,
            });
        }
        let world = self.parallel.world();
        let ranks = self.parallel.data().size();
        let split = self.parallel.is_split();
        // The optimizer files this layout writes: one per rank under ZeRO, else one (a split
        // model's state is gathered whole).
        let shards = if self.parallel.shards_optimizer() && !split {
            ranks
        } else {
            1
        };
        // A split model's checkpoint from before kiln gathered its optimizer state whole holds
        // one part's state per rank: it resumes on the grid that wrote it only.
        let saved_grid = saved_grid(&checkpoint.run);
        let per_part = checkpoint.optimizer_shards > 1 && saved_grid != (1, 1);
        let same_layout = if per_part {
            split
                && checkpoint.state.world_size == world.size()
                && checkpoint.optimizer_shards == world.size()
                && saved_grid == self.grid()
        } else {
            !split && checkpoint.state.world_size == ranks && checkpoint.optimizer_shards == shards
        };
        if per_part && !same_layout {
            return Err(TrainError::InvalidConfig(format!(
                "{} holds the optimizer state of a {} × {} (tensor × pipeline) grid per rank, as \
                 kiln wrote it before gathering it whole: it resumes on that grid and its {} ranks \
                 only",
                checkpoint.path.display(),
                saved_grid.0,
                saved_grid.1,
                checkpoint.state.world_size
            )));
        }
        if !per_part {
            self.check_global_batch(&checkpoint)?;
        }
        if checkpoint.state.train_items != self.train.len() {
            return Err(TrainError::ConfigChanged {
                checkpoint: checkpoint.path.clone(),
                field: "the number of training items".into(),
                saved: checkpoint.state.train_items.to_string(),
                current: self.train.len().to_string(),
            });
        }
        self.check_state(&checkpoint.state)
            .map_err(|reason| TrainError::corrupt(checkpoint.path.join("trainer.json"), reason))?;
        // Same length, other text: every token id would mean something else from here on.
        let data = [
            (
                "training",
                &checkpoint.state.train_data,
                &self.state.train_data,
            ),
            (
                "held-out",
                &checkpoint.state.eval_data,
                &self.state.eval_data,
            ),
        ];
        for (split, saved, current) in data {
            if let (Some(saved), Some(current)) = (saved, current)
                && saved != current
                && !self.config.allow_data_change
            {
                return Err(TrainError::ConfigChanged {
                    checkpoint: checkpoint.path.clone(),
                    field: format!(
                        "the {split} data (its content; set allow_data_change, \
                         --allow-data-change, to resume on other data on purpose)"
                    ),
                    saved: saved.clone(),
                    current: current.clone(),
                });
            }
        }
        // The checkpoint leaves frozen parameters out: they must be the ones it trained over.
        let frozen = frozen_fingerprint(&whole)?;
        if frozen != checkpoint.frozen_sha256 {
            let describe = |f: &Option<String>| match f {
                Some(sha) => format!("frozen parameters with SHA-256 {sha}"),
                None => "no frozen parameters".to_string(),
            };
            return Err(TrainError::ConfigChanged {
                checkpoint: checkpoint.path.clone(),
                field: "the frozen parameters (the base model under the adapters)".into(),
                saved: describe(&checkpoint.frozen_sha256),
                current: describe(&frozen),
            });
        }
        let _ = checkpointer.frozen.set(frozen);
        // The checkpoint holds the whole model: loaded whole, then cut into this rank's part.
        let best = checkpoint
            .load_best(whole.clone())?
            .map(|best| self.parallel.partition(best))
            .transpose()?;
        if best.is_some() != checkpoint.state.best_eval.is_some() {
            return Err(TrainError::corrupt(
                &checkpoint.path,
                "best weights and the best evaluation must come together",
            ));
        }
        let loaded = checkpoint.load_model(whole)?;
        let model = self.parallel.partition(loaded.clone())?;
        check_owner_map(&checkpoint, &model)?;
        let parallel = &self.parallel;
        self.optimizer = if same_layout {
            checkpoint.load_optimizer(self.optimizer.clone(), world.rank(), &model)?
        } else if split {
            // The whole model's state, cut as the model is; each rank keeps what it steps.
            let whole_state = checkpoint.whole_optimizer_state()?;
            let part_state = parallel.partition_optimizer_state(&loaded, &model, whole_state)?;
            checkpoint.load_optimizer_state(self.optimizer.clone(), part_state, &model)?
        } else {
            // Each rank gathers the state of the parameters it now steps from every shard.
            checkpoint.load_optimizer_resharded(self.optimizer.clone(), &model, |id| {
                parallel.steps(id.into())
            })?
        };
        let saved = (
            checkpoint.state.world_size,
            saved_accumulation(&checkpoint.run).unwrap_or(0),
            saved_grid,
        );
        let now = (ranks, self.config.grad_accumulation, self.grid());
        if saved != now || (!per_part && checkpoint.optimizer_shards != shards) {
            let describe = |(ranks, accumulation, (t, p)): (usize, usize, (usize, usize))| {
                format!("{ranks} rank(s) × {accumulation} micro-batch(es) on a {t} × {p} grid")
            };
            self.logger.println(&format!(
                "resharded: written by {}, resumed on {}",
                describe(saved),
                describe(now)
            ));
        }
        checkpoint.load_scheduler(self.scheduler.as_mut())?;
        self.logger.println(&format!(
            "resumed run {} from {} (step {})",
            checkpoint.run_id,
            checkpoint.path.display(),
            checkpoint.state.step
        ));
        self.model = model;
        self.best = best;
        self.resumed_from = Some(checkpoint.state.step);
        self.logger.resume_at(checkpoint.state.step);
        // The checkpoints from here on describe the data the run now reads.
        let (train_data, eval_data) = (self.state.train_data.take(), self.state.eval_data.take());
        self.state = checkpoint.state;
        // The checkpoints from here on describe the ranks that now train.
        self.state.world_size = ranks;
        self.state.train_data = train_data.or(self.state.train_data.take());
        self.state.eval_data = eval_data.or(self.state.eval_data.take());
        self.run_id = checkpoint.run_id;
        Ok(())
    }

    /// Any checkpoint resumes with the global batch it was written with; one written by
    /// another number of data-parallel ranks, ZeRO setting or tensor × pipeline grid resumes
    /// here when the global batch is the same: data-parallel ranks × micro-batches per step
    /// (× the batch size, which the config check has compared). Then every step sees the same
    /// micro-batches, and with the same summation order (`exact_accumulation` where ranks hold
    /// several) the run continues bit for bit.
    fn check_global_batch(&self, checkpoint: &crate::checkpoint::Checkpoint) -> Result<()> {
        let path = checkpoint.path.display();
        let (ranks, accumulation) = (self.parallel.data().size(), self.config.grad_accumulation);
        let saved_ranks = checkpoint.state.world_size;
        if checkpoint.optimizer_shards > saved_ranks {
            return Err(TrainError::corrupt(
                checkpoint.path.join("manifest.json"),
                format!(
                    "{} optimizer shards from {saved_ranks} data-parallel rank(s)",
                    checkpoint.optimizer_shards
                ),
            ));
        }
        let saved_accumulation = saved_accumulation(&checkpoint.run).ok_or_else(|| {
            TrainError::corrupt(
                checkpoint.path.join("run.json"),
                "no trainer.grad_accumulation",
            )
        })?;
        let global = saved_ranks.saturating_mul(saved_accumulation);
        if ranks.saturating_mul(accumulation) != global {
            let fits = if global % ranks == 0 {
                format!("--accum {} on {ranks} rank(s)", global / ranks)
            } else {
                // The first few: the numbers come from a file and may be anything.
                let divisors: Vec<String> = (1..=global.min(1024))
                    .filter(|d| global % d == 0)
                    .take(16)
                    .map(|d| d.to_string())
                    .collect();
                format!(
                    "a number of ranks that divides {global} ({}), with --accum {global}/ranks",
                    divisors.join(", ")
                )
            };
            return Err(TrainError::InvalidConfig(format!(
                "{path} was written by {saved_ranks} rank(s) × {saved_accumulation} micro-batch(es) \
                 per step, a global batch of {global} micro-batches; this run has {ranks} × \
                 {accumulation} = {}: the global batch must stay the same (use {fits})",
                ranks * accumulation
            )));
        }
        Ok(())
    }

    /// This run's `(tensor, pipeline)` degrees.
    fn grid(&self) -> (usize, usize) {
        let mp = &self.config.model_parallel;
        (mp.tensor_parallel, mp.pipeline_parallel)
    }

    /// Whether a loop state read from a checkpoint is one this run reaches: a step within the
    /// run, the data position that step is at, the loss scaler and early stopping of this
    /// config in a reachable state.
    fn check_state(&self, state: &TrainerState) -> std::result::Result<(), String> {
        let config = &self.config;
        if state.step > self.total {
            return Err(format!(
                "step {} is past the run's {} steps",
                state.step, self.total
            ));
        }
        // Bounded by `limits::MICRO_BATCHES` in `total_steps`, so the product fits.
        let micro_batches = state.step * config.grad_accumulation * self.parallel.data().size();
        let expected = self.order.position_after(micro_batches);
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

/// The `(tensor, pipeline)` degrees of a run config in JSON form (`(1, 1)` when absent).
fn saved_grid(run: &serde_json::Value) -> (usize, usize) {
    let degree = |key: &str| {
        run.get("trainer")
            .and_then(|t| t.get("model_parallel"))
            .and_then(|m| m.get(key))
            .and_then(serde_json::Value::as_u64)
            .and_then(|d| usize::try_from(d).ok())
            .unwrap_or(1)
    };
    (degree("tensor_parallel"), degree("pipeline_parallel"))
}

/// `trainer.grad_accumulation` of a checkpoint's run config.
fn saved_accumulation(run: &serde_json::Value) -> Option<usize> {
    run.get("trainer")?
        .get("grad_accumulation")?
        .as_u64()
        .and_then(|a| usize::try_from(a).ok())
        .filter(|&a| a > 0)
}

/// A sharded optimizer state must have an owner for every parameter that trains: one the owner
/// map leaves out would resume with fresh moments, silently.
fn check_owner_map<M: burn::module::Module>(
    checkpoint: &crate::checkpoint::Checkpoint,
    model: &M,
) -> Result<()> {
    let Some(owners) = &checkpoint.optimizer_owners else {
        return Ok(());
    };
    let trainable = kiln_dist::flat::Layout::trainable(model);
    match trainable
        .slots
        .iter()
        .find(|slot| !owners.contains_key(&slot.id.val()))
    {
        Some(slot) => Err(TrainError::corrupt(
            checkpoint.path.join("manifest.json"),
            format!(
                "the ZeRO owner map gives no optimizer shard to parameter `{}` (id {})",
                slot.path,
                slot.id.val()
            ),
        )),
        None => Ok(()),
    }
}
