//! The training loop, in one sitting. [`Trainer::fit`] builds what a run holds (`run.rs`),
//! then takes optimizer steps until the run's steps are done or early stopping ends it: each
//! step (`step.rs`) runs the micro-batches forward and backward (or through the pipeline),
//! synchronises the gradients, unscales, checks and clips them, and steps; after it, the log,
//! the evaluator and the checkpointer each decide whether they are due.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use kiln_base::{Batch, BoxError, TrainModel};
use kiln_dist::{ParallelModel, ProcessGroup};
use kiln_optim::{OptimizerConfig, ScheduleConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::batch_source::BatchSource;
use crate::checkpoint::TrainerState;
use crate::config::TrainerConfig;
use crate::error::{Result, TrainError};
use crate::evaluate::EvalMetrics;
use crate::run::Run;
use crate::run_config::RunConfig;

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
///
/// It trains any model that is a kiln-base [`TrainModel`] and a kiln-dist [`ParallelModel`]
/// (kiln's GPT and BERTs are both; a model that is never cut into parts implements
/// `ParallelModel` with its defaults).
pub struct Trainer<M, B> {
    pub(crate) config: TrainerConfig,
    pub(crate) optimizer: OptimizerConfig,
    pub(crate) schedule: ScheduleConfig,
    pub(crate) run: serde_json::Value,
    pub(crate) train: BatchSource<B>,
    pub(crate) eval: Option<BatchSource<B>>,
    pub(crate) hooks: Vec<Box<dyn StepHook<M>>>,
    pub(crate) group: ProcessGroup,
}

impl<M: TrainModel<B> + ParallelModel, B: Batch> Trainer<M, B> {
    /// A trainer for the run `run` on the training data `train`; the config is validated here
    /// (the optimizer's settings when `fit` builds it).
    pub fn new<C, D>(run: &RunConfig<C, D>, train: BatchSource<B>) -> Result<Self>
    where
        C: Serialize + DeserializeOwned,
        D: Serialize + DeserializeOwned,
    {
        run.trainer.validate()?;
        if run.trainer.model_parallel.is_model_parallel()
            && matches!(run.optimizer, OptimizerConfig::Lamb(_))
        {
            // LAMB's trust ratios are per whole tensor, and a part holds slices of them.
            return Err(TrainError::InvalidConfig(
                "LAMB does not combine with tensor or pipeline parallelism (its trust ratio needs each whole tensor); use AdamW".into(),
            ));
        }
        Ok(Self {
            config: run.trainer.clone(),
            optimizer: run.optimizer.clone(),
            schedule: run.schedule.clone(),
            run: run.to_value(),
            train,
            eval: None,
            hooks: Vec::new(),
            group: ProcessGroup::single(),
        })
    }

    /// Runs over the ranks of `group`: data parallelism (PyTorch DDP's semantics) and, when
    /// `TrainerConfig::model_parallel` asks for it, tensor (Megatron-LM) and pipeline
    /// parallelism, the rest of the group training data-parallel.
    ///
    /// Data-parallel ranks train the same model on their own micro-batches of each step
    /// (`batch_size` is per rank), gradients and metrics are summed across ranks, rank 0
    /// prints, logs and writes checkpoints. With `N` replicas and accumulation `a`, a step is
    /// the step of one process accumulating `N·a` micro-batches. `TrainerConfig::data_parallel`
    /// sets buckets, the reduction dtype and ZeRO-1. Under tensor and pipeline parallelism,
    /// gradient accumulation (the pipeline's micro-batches), mixed precision, clipping on the
    /// whole model's norm and exact resume work as in one process; checkpoints hold the whole
    /// model, gathered on rank 0, which `fit` also returns there (the other ranks return
    /// their part).
    pub fn with_process_group(mut self, group: ProcessGroup) -> Self {
        self.group = group;
        self
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

    /// Trains `model` (built on `device`, with or without autodiff; parameters frozen with
    /// `set_require_grad(false)` stay frozen) and returns it with the run's outcome.
    ///
    /// Before anything else, the folders the run writes to (the checkpoint folder, the run
    /// folder) are checked to be writable and locked for the run's duration
    /// ([`TrainError::NotWritable`], [`TrainError::Locked`]); a run that does not resume
    /// refuses folders holding another run's checkpoints or metrics ([`TrainError::Occupied`])
    /// unless `overwrite` is set.
    pub fn fit(self, model: M, device: &Device) -> Result<TrainOutcome<M>> {
        let mut run = Run::start(self, model, device)?;
        while !run.is_done() {
            let step = run.train_step()?;
            run.after_step(&step)?;
        }
        run.finish()
    }
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
