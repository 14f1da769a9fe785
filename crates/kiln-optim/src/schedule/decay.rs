//! PyTorch's `StepLR` (`lr·γ^⌊step/step_size⌋`) and `ExponentialLR` (`lr·γ^step`).

use burn::config::Config;

use super::{LrCurve, Scheduler, check_lr};
use crate::error::{OptimError, positive};

/// `base_lr·gamma^⌊step/step_size⌋` (PyTorch `StepLR`, default γ 0.1).
#[derive(Config, Debug)]
pub struct StepDecayConfig {
    /// The initial learning rate.
    pub base_lr: f64,
    /// Steps between decays.
    pub step_size: usize,
    /// Multiplier at each decay.
    #[config(default = 0.1)]
    pub gamma: f64,
}

impl StepDecayConfig {
    /// Validates and builds the scheduler.
    pub fn init(&self) -> Result<Scheduler<StepDecay>, OptimError> {
        check_lr("base_lr", self.base_lr)?;
        positive("gamma", self.gamma)?;
        if self.step_size == 0 {
            return Err(OptimError::InvalidSchedule(
                "step_size must be > 0".to_string(),
            ));
        }
        Ok(Scheduler::new(StepDecay {
            base_lr: self.base_lr,
            step_size: self.step_size,
            gamma: self.gamma,
        }))
    }
}

/// The curve of a [`StepDecayConfig`].
#[derive(Clone, Debug)]
pub struct StepDecay {
    base_lr: f64,
    step_size: usize,
    gamma: f64,
}

impl LrCurve for StepDecay {
    fn lr_at(&self, step: usize) -> f64 {
        self.base_lr * self.gamma.powi((step / self.step_size) as i32)
    }
}

/// `base_lr·gamma^step` (PyTorch `ExponentialLR`).
#[derive(Config, Debug)]
pub struct ExponentialDecayConfig {
    /// The initial learning rate.
    pub base_lr: f64,
    /// Multiplier per step, in `(0, 1]` for a decay.
    pub gamma: f64,
}

impl ExponentialDecayConfig {
    /// Validates and builds the scheduler.
    pub fn init(&self) -> Result<Scheduler<ExponentialDecay>, OptimError> {
        check_lr("base_lr", self.base_lr)?;
        positive("gamma", self.gamma)?;
        Ok(Scheduler::new(ExponentialDecay {
            base_lr: self.base_lr,
            gamma: self.gamma,
        }))
    }
}

/// The curve of an [`ExponentialDecayConfig`].
#[derive(Clone, Debug)]
pub struct ExponentialDecay {
    base_lr: f64,
    gamma: f64,
}

impl LrCurve for ExponentialDecay {
    fn lr_at(&self, step: usize) -> f64 {
        self.base_lr * self.gamma.powf(step as f64)
    }
}
