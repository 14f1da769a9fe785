//! Cosine annealing with warm restarts (Loshchilov & Hutter 2017, SGDR), as PyTorch's
//! `CosineAnnealingWarmRestarts` stepped once per optimizer step: the `i`-th period lasts
//! `T_0·T_multⁱ` steps, and within it `lr = η_min + (base − η_min)·½(1 + cos(π·T_cur/T_i))`.

use std::f64::consts::PI;

use burn::config::Config;

use super::{LrCurve, Scheduler, check_lr};
use crate::error::OptimError;

/// PyTorch `CosineAnnealingWarmRestarts(T_0, T_mult=1, eta_min=0)`.
#[derive(Config, Debug)]
pub struct CosineWarmRestartsConfig {
    /// The learning rate at the start of every period.
    pub base_lr: f64,
    /// Length of the first period, in steps.
    pub t_0: usize,
    /// Each period is `t_mult` times longer than the previous one.
    #[config(default = 1)]
    pub t_mult: usize,
    /// The floor.
    #[config(default = 0.0)]
    pub eta_min: f64,
}

impl CosineWarmRestartsConfig {
    /// Validates and builds the scheduler.
    pub fn init(&self) -> Result<Scheduler<CosineWarmRestarts>, OptimError> {
        check_lr("base_lr", self.base_lr)?;
        check_lr("eta_min", self.eta_min)?;
        if self.eta_min > self.base_lr {
            return Err(OptimError::InvalidHyperparameter {
                name: "eta_min",
                value: self.eta_min,
                reason: "must be <= base_lr",
            });
        }
        if self.t_0 == 0 || self.t_mult == 0 {
            return Err(OptimError::InvalidSchedule(
                "t_0 and t_mult must be >= 1".to_string(),
            ));
        }
        Ok(Scheduler::new(CosineWarmRestarts {
            base_lr: self.base_lr,
            t_0: self.t_0,
            t_mult: self.t_mult,
            eta_min: self.eta_min,
        }))
    }
}

/// The curve of a [`CosineWarmRestartsConfig`].
#[derive(Clone, Debug)]
pub struct CosineWarmRestarts {
    base_lr: f64,
    t_0: usize,
    t_mult: usize,
    eta_min: f64,
}

impl CosineWarmRestarts {
    /// `(T_cur, T_i)` at `step`: the position inside the current period and its length.
    pub fn position(&self, step: usize) -> (usize, usize) {
        let (mut t_cur, mut t_i) = (step, self.t_0);
        if self.t_mult == 1 {
            return (step % self.t_0, self.t_0);
        }
        // Periods grow geometrically, so this loop runs O(log step) times.
        while t_cur >= t_i {
            t_cur -= t_i;
            t_i = t_i.saturating_mul(self.t_mult);
        }
        (t_cur, t_i)
    }
}

impl LrCurve for CosineWarmRestarts {
    fn lr_at(&self, step: usize) -> f64 {
        let (t_cur, t_i) = self.position(step);
        self.eta_min
            + (self.base_lr - self.eta_min) * (1.0 + (PI * t_cur as f64 / t_i as f64).cos()) / 2.0
    }
}
