//! Gradual magnitude pruning on the cubic schedule of Zhu & Gupta (2017), "To prune, or not to
//! prune": sparsity rises from `s_i` to `s_f` over `n` pruning events `Δt` steps apart,
//!
//! ```text
//! s_t = s_f + (s_i - s_f) · (1 - (t - t_0) / (n·Δt))³
//! ```
//!
//! fast at first, while the network still has redundant weights, and slowly at the end. The
//! masks are recomputed at each event and re-applied after every optimizer step.

use burn::config::Config;
use burn::module::Module;

use crate::error::{CompressError, Result};
use crate::magnitude::{Amount, PruningScope, magnitude_masks};
use crate::mask::PruningMasks;
use crate::params::linear_weights;

/// Configuration of [`GradualPruning`]; defaults from Zhu & Gupta (2017): start from dense,
/// prune every 100 steps.
#[derive(Config, Debug)]
pub struct GradualPruningConfig {
    /// The sparsity reached at `end_step` (`s_f`).
    pub final_sparsity: f64,
    /// The step of the last pruning event.
    pub end_step: usize,
    /// The sparsity at `begin_step` (`s_i`).
    #[config(default = 0.0)]
    pub initial_sparsity: f64,
    /// The step of the first pruning event (`t_0`).
    #[config(default = 0)]
    pub begin_step: usize,
    /// Steps between pruning events (`Δt`).
    #[config(default = 100)]
    pub frequency: usize,
    /// One threshold for all layers, or the same sparsity in each.
    #[config(default = "PruningScope::Layerwise")]
    pub scope: PruningScope,
}

impl GradualPruningConfig {
    /// Checks the sparsities and steps.
    pub fn validate(&self) -> Result<()> {
        for (name, s) in [
            ("final_sparsity", self.final_sparsity),
            ("initial_sparsity", self.initial_sparsity),
        ] {
            if !(s.is_finite() && (0.0..=1.0).contains(&s)) {
                return Err(CompressError::InvalidAmount(format!(
                    "{name} {s} is outside [0, 1]"
                )));
            }
        }
        if self.end_step < self.begin_step {
            return Err(CompressError::arg("end_step is before begin_step"));
        }
        if self.frequency == 0 {
            return Err(CompressError::arg("frequency must be > 0"));
        }
        Ok(())
    }

    /// The target sparsity at `step` (constant before `begin_step` and after `end_step`).
    pub fn sparsity_at(&self, step: usize) -> f64 {
        if step <= self.begin_step {
            return if step == self.begin_step {
                self.initial_sparsity
            } else {
                0.0
            };
        }
        if step >= self.end_step {
            return self.final_sparsity;
        }
        let span = (self.end_step - self.begin_step) as f64;
        let progress = (step - self.begin_step) as f64 / span;
        self.final_sparsity
            + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress).powi(3)
    }

    /// Builds the hook.
    pub fn init(&self) -> Result<GradualPruning> {
        self.validate()?;
        Ok(GradualPruning {
            config: self.clone(),
            masks: PruningMasks::new(),
        })
    }
}

/// Gradual magnitude pruning of the linear weights ([`linear_weights`]): call
/// [`after_optimizer_step`](Self::after_optimizer_step) after every optimizer step, from a
/// hand-written loop or as a kiln-train step hook (a closure):
///
/// ```text
/// trainer.with_hook(move |step, model| pruning.after_optimizer_step(step, model))
/// ```
#[derive(Debug, Clone)]
pub struct GradualPruning {
    config: GradualPruningConfig,
    masks: PruningMasks,
}

impl GradualPruning {
    /// The current masks.
    pub fn masks(&self) -> &PruningMasks {
        &self.masks
    }

    /// The config.
    pub fn config(&self) -> &GradualPruningConfig {
        &self.config
    }

    /// Whether `step` is a pruning event.
    pub fn is_event(&self, step: usize) -> bool {
        let c = &self.config;
        step >= c.begin_step
            && step <= c.end_step
            && ((step - c.begin_step).is_multiple_of(c.frequency) || step == c.end_step)
    }

    /// Recomputes the masks at a pruning event (`step` is the number of optimizer steps taken)
    /// and applies them: the pruned weights are exactly zero again after the optimizer moved
    /// them.
    pub fn after_optimizer_step<M: Module>(&mut self, step: usize, model: M) -> Result<M> {
        if self.is_event(step) {
            let target = self.config.sparsity_at(step);
            // The model already carries the old masks' zeros: they rank smallest, so the new
            // masks contain the old ones.
            let masks = magnitude_masks(
                &model,
                &linear_weights,
                Amount::Fraction(target),
                self.config.scope,
            )?;
            self.masks.merge(&masks)?;
        }
        Ok(self.masks.apply(model))
    }
}
