//! One serializable choice of schedule, for training configs that pick it at run time.

use burn::config::Config;
use burn::optim::lr_scheduler::LrScheduler;

use super::{
    CosineWarmRestartsConfig, ExponentialDecayConfig, LrCurve, OneCycleConfig, Scheduler,
    StepDecayConfig, WarmupDecayConfig, check_lr,
};
use crate::error::OptimError;

/// A constant learning rate (no warmup).
#[derive(Clone, Debug)]
pub struct Constant(f64);

impl LrCurve for Constant {
    fn lr_at(&self, _step: usize) -> f64 {
        self.0
    }
}

/// Any of kiln's schedules. `From` each config.
#[derive(Config, Debug)]
pub enum ScheduleConfig {
    /// The same learning rate at every step.
    Constant(f64),
    /// [`WarmupDecayConfig`].
    WarmupDecay(WarmupDecayConfig),
    /// [`CosineWarmRestartsConfig`].
    CosineWarmRestarts(CosineWarmRestartsConfig),
    /// [`StepDecayConfig`].
    Step(StepDecayConfig),
    /// [`ExponentialDecayConfig`].
    Exponential(ExponentialDecayConfig),
    /// [`OneCycleConfig`].
    OneCycle(OneCycleConfig),
}

impl ScheduleConfig {
    /// The same schedule scaled to peak at `lr`: the constant, the warmup's peak, the base
    /// rate of SGDR, step and exponential decay, one-cycle's maximum. The other settings (a
    /// floor given as a ratio, the decay factors) keep their meaning.
    pub fn with_peak_lr(self, lr: f64) -> Result<Self, OptimError> {
        check_lr("lr", lr)?;
        Ok(match self {
            Self::Constant(_) => Self::Constant(lr),
            Self::WarmupDecay(c) => Self::WarmupDecay(WarmupDecayConfig { peak_lr: lr, ..c }),
            Self::CosineWarmRestarts(c) => {
                Self::CosineWarmRestarts(CosineWarmRestartsConfig { base_lr: lr, ..c })
            }
            Self::Step(c) => Self::Step(StepDecayConfig { base_lr: lr, ..c }),
            Self::Exponential(c) => Self::Exponential(ExponentialDecayConfig { base_lr: lr, ..c }),
            Self::OneCycle(c) => Self::OneCycle(OneCycleConfig { max_lr: lr, ..c }),
        })
    }

    /// Validates and builds the scheduler for a run of `total_steps` optimizer steps: a
    /// warmup-decay or one-cycle schedule whose `total_steps` is `None` lasts the run (one set
    /// explicitly is kept); the other schedules have no length and build as with
    /// [`ScheduleConfig::init`].
    pub fn init_for_run(&self, total_steps: usize) -> Result<Box<dyn LrScheduler>, OptimError> {
        Ok(match self {
            Self::WarmupDecay(c) => Box::new(c.init_for_run(total_steps)?),
            Self::OneCycle(c) => Box::new(c.init_for_run(total_steps)?),
            _ => self.init()?,
        })
    }

    /// Validates and builds the scheduler (boxed: the curve type depends on the variant).
    /// A schedule that needs the run's length and has no `total_steps` is an error (use
    /// [`ScheduleConfig::init_for_run`]).
    pub fn init(&self) -> Result<Box<dyn LrScheduler>, OptimError> {
        Ok(match self {
            Self::Constant(lr) => {
                check_lr("lr", *lr)?;
                Box::new(Scheduler::new(Constant(*lr)))
            }
            Self::WarmupDecay(c) => Box::new(c.init()?),
            Self::CosineWarmRestarts(c) => Box::new(c.init()?),
            Self::Step(c) => Box::new(c.init()?),
            Self::Exponential(c) => Box::new(c.init()?),
            Self::OneCycle(c) => Box::new(c.init()?),
        })
    }
}

macro_rules! from_config {
    ($($variant:ident($config:ident)),*) => {
        $(impl From<$config> for ScheduleConfig {
            fn from(c: $config) -> Self {
                Self::$variant(c)
            }
        })*
    };
}

from_config!(
    WarmupDecay(WarmupDecayConfig),
    CosineWarmRestarts(CosineWarmRestartsConfig),
    Step(StepDecayConfig),
    Exponential(ExponentialDecayConfig),
    OneCycle(OneCycleConfig)
);
