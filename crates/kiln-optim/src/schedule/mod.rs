//! Learning-rate schedules as Burn `LrScheduler`s (so they also plug into burn-train).
//!
//! Every schedule is a pure curve `lr_at(step)` ([`LrCurve`]) wrapped in a [`Scheduler`], whose
//! `step()` returns `lr_at(n)` for the n-th optimizer step (0-based) and advances `n`: exactly the
//! learning rate PyTorch's `optimizer.step(); scheduler.step()` loop uses at that step. So with
//! HF's warmup, the very first step has learning rate 0.
//!
//! - [`WarmupDecayConfig`] ([`warmup`]): HF `get_{constant,linear,cosine,polynomial_decay,
//!   inverse_sqrt}_schedule_with_warmup` (cosine also with a floor, HF's `min_lr_rate`).
//! - [`CosineWarmRestartsConfig`] ([`sgdr`]): PyTorch `CosineAnnealingWarmRestarts` (SGDR).
//! - [`StepDecayConfig`], [`ExponentialDecayConfig`] ([`decay`]): PyTorch `StepLR`, `ExponentialLR`.
//! - [`OneCycleConfig`] ([`one_cycle`]): PyTorch `OneCycleLR` (learning rate only).
//! - [`ScheduleConfig`]: any of them (or a constant), serializable, built boxed; with
//!   [`ScheduleConfig::init_for_run`], sized to the run where its `total_steps` is `None`.

mod any;
pub mod decay;
pub mod one_cycle;
pub mod sgdr;
pub mod warmup;

pub use any::{Constant, ScheduleConfig};
pub use decay::{ExponentialDecay, ExponentialDecayConfig, StepDecay, StepDecayConfig};
pub use one_cycle::{Anneal, OneCycle, OneCycleConfig};
pub use sgdr::{CosineWarmRestarts, CosineWarmRestartsConfig};
pub use warmup::{DecayShape, WarmupDecay, WarmupDecayConfig};

use burn::optim::LearningRate;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};

use crate::error::OptimError;

/// A learning rate as a pure function of the 0-based optimizer step.
pub trait LrCurve: Clone + Send + Sync + 'static {
    /// The learning rate of step `step`.
    fn lr_at(&self, step: usize) -> f64;
}

/// A curve plus the step counter: Burn's stateful scheduler. Its record is the counter.
#[derive(Clone, Debug)]
pub struct Scheduler<C> {
    curve: C,
    step: usize,
}

impl<C: LrCurve> Scheduler<C> {
    /// Starts `curve` at step 0.
    pub fn new(curve: C) -> Self {
        Self { curve, step: 0 }
    }

    /// The curve.
    pub fn curve(&self) -> &C {
        &self.curve
    }
}

impl<C: LrCurve> LrScheduler for Scheduler<C> {
    fn step(&mut self) -> LearningRate {
        let lr = self.curve.lr_at(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step as usize;
        }
    }
}

/// Fails when a schedule's own `total_steps` is shorter than the run it is given to: past its
/// end a cosine or one-cycle curve does not hold its last value (the cosine's cycles go on,
/// restarting the warmup mid-run), so the rest of the run would train on a schedule nobody
/// chose. `None` (sized to the run) always fits.
pub(crate) fn check_covers_run(total: Option<usize>, run: usize) -> Result<(), OptimError> {
    match total {
        Some(total) if total < run => Err(OptimError::InvalidSchedule(format!(
            "total_steps {total} is shorter than the run ({run} steps): leave total_steps unset \
             to size the schedule to the run, or set it to at least {run}"
        ))),
        _ => Ok(()),
    }
}

/// A learning rate must be finite and `>= 0`.
pub(crate) fn check_lr(name: &'static str, lr: f64) -> Result<(), OptimError> {
    crate::error::non_negative(name, lr)
}

/// Validates a learning rate handed to `ModuleOptimizer::step` by other means than a schedule.
pub fn validate_lr(lr: f64) -> Result<(), OptimError> {
    check_lr("lr", lr)
}
