//! Linear warmup from 0 followed by a decay: HuggingFace's `get_*_schedule_with_warmup`.
//!
//! During warmup `lr = peak·step/warmup` (so step 0 has lr 0, HF semantics; Burn's own configs
//! refuse an lr of 0), then with `p = (step − warmup)/max(1, total − warmup)`:
//!
//! | shape | after warmup |
//! |---|---|
//! | constant | `peak` |
//! | linear | `peak·max(0, (total − step)/max(1, total − warmup))` |
//! | cosine | `peak·(r + (1 − r)·½(1 + cos(2π·cycles·p)))`, floored at 0; `r` = `min_lr_ratio` |
//! | polynomial | `(peak − end)·(1 − p)^power + end`, `end` after `total` |
//! | inverse sqrt | `peak/sqrt((step + timescale − warmup)/timescale)` |
//!
//! `total` is `total_steps`, or, where that is `None`, the run's length given to
//! [`WarmupDecayConfig::init_for_run`]; constant and inverse-sqrt decay do without it.

use std::f64::consts::PI;

use burn::config::Config;

use super::{LrCurve, Scheduler, check_covers_run, check_lr};
use crate::error::{OptimError, positive};

/// What follows the warmup.
#[derive(Config, Debug, PartialEq)]
pub enum DecayShape {
    /// Stay at the peak (HF `get_constant_schedule_with_warmup`).
    Constant,
    /// Linear to 0 at `total_steps` (HF `get_linear_schedule_with_warmup`, BERT's schedule).
    Linear,
    /// Cosine (HF `get_cosine_schedule_with_warmup`; with a floor `min_lr_ratio·peak`,
    /// `get_cosine_with_min_lr_schedule_with_warmup`). `num_cycles` 0.5 is one half-cosine.
    Cosine {
        /// Number of cosine periods over the decay (HF default 0.5).
        num_cycles: f64,
        /// The floor as a fraction of the peak (GPT-3 used 0.1), in `[0, 1]`.
        min_lr_ratio: f64,
    },
    /// Polynomial to `end_lr` (HF `get_polynomial_decay_schedule_with_warmup`).
    Polynomial {
        /// Exponent (1 is linear).
        power: f64,
        /// The final learning rate (HF default 1e-7); must be below the peak.
        end_lr: f64,
    },
    /// `1/sqrt(step)` decay (HF `get_inverse_sqrt_schedule`; "Attention is all you need").
    InverseSqrt {
        /// Time scale; `None` is HF's default: the warmup length, or 10 000 without warmup.
        timescale: Option<usize>,
    },
}

/// Warmup then decay. `total_steps` is the length of the run: linear, cosine and polynomial
/// decay need it; `None` (the default) stands for the run's length, filled in by
/// [`WarmupDecayConfig::init_for_run`] (or `ScheduleConfig::init_for_run`, as kiln-train's
/// Trainer calls it), so a training config states its step count once.
#[derive(Config, Debug)]
pub struct WarmupDecayConfig {
    /// The learning rate at the end of the warmup.
    pub peak_lr: f64,
    /// Linear warmup steps from 0.
    pub warmup_steps: usize,
    /// Steps of the whole run; `None`: the run's length, given to `init_for_run`.
    pub total_steps: Option<usize>,
    /// The warmup as a fraction of the run, used when `warmup_steps` is 0 (HF's
    /// `warmup_ratio`: `ceil(total_steps · warmup_ratio)` steps), so that it follows the run's
    /// length.
    #[config(default = "None")]
    pub warmup_ratio: Option<f64>,
    /// The decay after warmup.
    #[config(default = "DecayShape::Linear")]
    pub shape: DecayShape,
}

impl WarmupDecayConfig {
    /// HF's cosine: half a cosine to 0 at `total_steps` (a number of steps, or `None` for the
    /// run's length).
    pub fn cosine(
        peak_lr: f64,
        warmup_steps: usize,
        total_steps: impl Into<Option<usize>>,
    ) -> Self {
        Self::new(peak_lr, warmup_steps)
            .with_total_steps(total_steps.into())
            .with_shape(DecayShape::Cosine {
                num_cycles: 0.5,
                min_lr_ratio: 0.0,
            })
    }

    /// [`WarmupDecayConfig::init`] for a run of `total_steps` steps: the config's own
    /// `total_steps` when set, else the run's.
    pub fn init_for_run(&self, total_steps: usize) -> Result<Scheduler<WarmupDecay>, OptimError> {
        check_covers_run(self.total_steps, total_steps)?;
        self.clone()
            .with_total_steps(Some(self.total_steps.unwrap_or(total_steps)))
            .init()
    }

    /// Validates and builds the scheduler. Linear, cosine and polynomial decay need
    /// `total_steps`; without it this is an error (use [`WarmupDecayConfig::init_for_run`]).
    pub fn init(&self) -> Result<Scheduler<WarmupDecay>, OptimError> {
        check_lr("peak_lr", self.peak_lr)?;
        let warmup = self.warmup()?;
        let decay_to_the_end = match self.shape {
            DecayShape::Linear => Some("linear"),
            DecayShape::Cosine { .. } => Some("cosine"),
            DecayShape::Polynomial { .. } => Some("polynomial"),
            DecayShape::Constant | DecayShape::InverseSqrt { .. } => None,
        };
        if let (Some(shape), None) = (decay_to_the_end, self.total_steps) {
            return Err(OptimError::InvalidSchedule(format!(
                "{shape} decay needs the run's length: set total_steps, or let the Trainer size \
                 the schedule (init_for_run)"
            )));
        }
        if self.total_steps == Some(0) {
            return Err(OptimError::InvalidSchedule(
                "total_steps must be > 0".to_string(),
            ));
        }
        if let Some(total) = self.total_steps
            && warmup > total
        {
            return Err(OptimError::InvalidSchedule(format!(
                "warmup ({warmup} steps) is longer than the run ({total} steps)"
            )));
        }
        match &self.shape {
            DecayShape::Constant | DecayShape::Linear => {}
            DecayShape::Cosine {
                num_cycles,
                min_lr_ratio,
            } => {
                positive("num_cycles", *num_cycles)?;
                if !(0.0..=1.0).contains(min_lr_ratio) {
                    return Err(OptimError::InvalidHyperparameter {
                        name: "min_lr_ratio",
                        value: *min_lr_ratio,
                        reason: "must be in [0, 1]",
                    });
                }
            }
            DecayShape::Polynomial { power, end_lr } => {
                positive("power", *power)?;
                check_lr("end_lr", *end_lr)?;
                if *end_lr >= self.peak_lr {
                    return Err(OptimError::InvalidHyperparameter {
                        name: "end_lr",
                        value: *end_lr,
                        reason: "must be below peak_lr (as HF requires)",
                    });
                }
            }
            DecayShape::InverseSqrt { timescale } => {
                if *timescale == Some(0) {
                    return Err(OptimError::InvalidSchedule(
                        "inverse-sqrt timescale must be > 0".to_string(),
                    ));
                }
            }
        }
        Ok(Scheduler::new(WarmupDecay {
            config_peak: self.peak_lr,
            warmup,
            // Constant and inverse-sqrt decay never read the length, so it may be unset there.
            total: self.total_steps.unwrap_or(warmup),
            shape: self.shape.clone(),
        }))
    }

    /// The warmup in steps: `warmup_steps`, or `warmup_ratio` of the run when it is 0.
    fn warmup(&self) -> Result<usize, OptimError> {
        match (self.warmup_steps, self.warmup_ratio) {
            (0, Some(ratio)) => {
                if !(ratio.is_finite() && (0.0..=1.0).contains(&ratio)) {
                    return Err(OptimError::InvalidHyperparameter {
                        name: "warmup_ratio",
                        value: ratio,
                        reason: "must be in [0, 1]",
                    });
                }
                let total = self.total_steps.ok_or_else(|| {
                    OptimError::InvalidSchedule(
                        "warmup_ratio needs the run's length: set total_steps, or let the \
                         Trainer size the schedule (init_for_run)"
                            .to_string(),
                    )
                })?;
                Ok((total as f64 * ratio).ceil() as usize)
            }
            (steps, _) => Ok(steps),
        }
    }
}

/// The curve of a [`WarmupDecayConfig`].
#[derive(Clone, Debug)]
pub struct WarmupDecay {
    config_peak: f64,
    warmup: usize,
    total: usize,
    shape: DecayShape,
}

impl WarmupDecay {
    /// The multiplier of the peak at `step` (HF's `lr_lambda`).
    pub fn factor(&self, step: usize) -> f64 {
        let (warmup, total) = (self.warmup, self.total);
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match &self.shape {
            DecayShape::Constant => 1.0,
            DecayShape::Linear => {
                (total as f64 - step as f64).max(0.0) / (total.saturating_sub(warmup)).max(1) as f64
            }
            DecayShape::Cosine {
                num_cycles,
                min_lr_ratio,
            } => {
                let f = 0.5 * (1.0 + (PI * num_cycles * 2.0 * progress).cos());
                (f * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0)
            }
            DecayShape::Polynomial { power, end_lr } => {
                let peak = self.config_peak;
                if step > total {
                    return end_lr / peak;
                }
                let decay_steps = (total - warmup) as f64;
                let remaining = 1.0 - (step - warmup) as f64 / decay_steps;
                ((peak - end_lr) * remaining.powf(*power) + end_lr) / peak
            }
            DecayShape::InverseSqrt { timescale } => {
                let timescale =
                    timescale.unwrap_or(if warmup > 0 { warmup } else { 10_000 }) as f64;
                let shift = timescale - warmup as f64;
                1.0 / ((step as f64 + shift) / timescale).sqrt()
            }
        }
    }
}

impl LrCurve for WarmupDecay {
    fn lr_at(&self, step: usize) -> f64 {
        self.config_peak * self.factor(step)
    }
}
