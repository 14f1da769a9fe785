//! The 1cycle policy (Smith & Topin 2019) as PyTorch's `OneCycleLR`: from `max_lr/div_factor`
//! up to `max_lr` over `pct_start` of the run, then down to `initial/final_div_factor`
//! (three-phase: back to the initial lr first, then down). Only the learning rate: Burn's
//! schedulers cannot cycle Adam's β₁/momentum the way `cycle_momentum=True` does.

use std::f64::consts::PI;

use burn::config::Config;

use super::{LrCurve, Scheduler, check_lr};
use crate::error::{OptimError, positive};

/// How a phase interpolates.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum Anneal {
    /// `end + (start − end)·½(1 + cos(π·pct))` (PyTorch's default `"cos"`).
    Cos,
    /// `start + (end − start)·pct`.
    Linear,
}

/// PyTorch `OneCycleLR` with its defaults.
#[derive(Config, Debug)]
pub struct OneCycleConfig {
    /// The peak learning rate.
    pub max_lr: f64,
    /// Steps of the whole cycle; `None`: the run's length, given to
    /// [`OneCycleConfig::init_for_run`].
    pub total_steps: Option<usize>,
    /// Fraction of the run spent increasing.
    #[config(default = 0.3)]
    pub pct_start: f64,
    /// `initial_lr = max_lr/div_factor`.
    #[config(default = 25.0)]
    pub div_factor: f64,
    /// `min_lr = initial_lr/final_div_factor`.
    #[config(default = 1e4)]
    pub final_div_factor: f64,
    /// fast.ai's three-phase variant.
    #[config(default = false)]
    pub three_phase: bool,
    /// The interpolation.
    #[config(default = "Anneal::Cos")]
    pub anneal: Anneal,
}

impl OneCycleConfig {
    /// [`OneCycleConfig::init`] for a run of `total_steps` steps: the config's own
    /// `total_steps` when set, else the run's.
    pub fn init_for_run(&self, total_steps: usize) -> Result<Scheduler<OneCycle>, OptimError> {
        super::check_covers_run(self.total_steps, total_steps)?;
        self.clone()
            .with_total_steps(Some(self.total_steps.unwrap_or(total_steps)))
            .init()
    }

    /// Validates and builds the scheduler; without `total_steps` this is an error (use
    /// [`OneCycleConfig::init_for_run`]).
    pub fn init(&self) -> Result<Scheduler<OneCycle>, OptimError> {
        check_lr("max_lr", self.max_lr)?;
        let Some(total_steps) = self.total_steps else {
            return Err(OptimError::InvalidSchedule(
                "one-cycle needs the run's length: set total_steps, or let the Trainer size the \
                 schedule (init_for_run)"
                    .to_string(),
            ));
        };
        positive("div_factor", self.div_factor)?;
        positive("final_div_factor", self.final_div_factor)?;
        if !(self.pct_start > 0.0 && self.pct_start < 1.0) {
            return Err(OptimError::InvalidHyperparameter {
                name: "pct_start",
                value: self.pct_start,
                reason: "must be in (0, 1)",
            });
        }
        let t = total_steps as f64;
        let initial = self.max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        let phases = if self.three_phase {
            vec![
                (self.pct_start * t - 1.0, initial, self.max_lr),
                (2.0 * self.pct_start * t - 2.0, self.max_lr, initial),
                (t - 1.0, initial, min),
            ]
        } else {
            vec![
                (self.pct_start * t - 1.0, initial, self.max_lr),
                (t - 1.0, self.max_lr, min),
            ]
        };
        // Every phase must last at least one step, or PyTorch divides by zero (NaN lr).
        let mut start = 0.0;
        for &(end, _, _) in &phases {
            if end <= start {
                return Err(OptimError::InvalidSchedule(format!(
                    "one-cycle phases of {total_steps} steps with pct_start {} leave an empty \
                     phase",
                    self.pct_start
                )));
            }
            start = end;
        }
        Ok(Scheduler::new(OneCycle {
            phases,
            anneal: self.anneal,
        }))
    }
}

/// The curve of a [`OneCycleConfig`]: `(end_step, start_lr, end_lr)` per phase.
#[derive(Clone, Debug)]
pub struct OneCycle {
    phases: Vec<(f64, f64, f64)>,
    anneal: Anneal,
}

impl LrCurve for OneCycle {
    fn lr_at(&self, step: usize) -> f64 {
        let step = step as f64;
        let mut start_step = 0.0;
        for (i, &(end_step, start_lr, end_lr)) in self.phases.iter().enumerate() {
            if step <= end_step || i == self.phases.len() - 1 {
                // Past the end the lr stays at the minimum (PyTorch raises instead).
                let pct = ((step - start_step) / (end_step - start_step)).min(1.0);
                return match self.anneal {
                    Anneal::Cos => end_lr + (start_lr - end_lr) / 2.0 * ((PI * pct).cos() + 1.0),
                    Anneal::Linear => (end_lr - start_lr) * pct + start_lr,
                };
            }
            start_step = end_step;
        }
        unreachable!("the last phase always matches")
    }
}
