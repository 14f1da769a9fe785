//! Dynamic loss scaling for f16 training, with `torch.amp.GradScaler` semantics.
//!
//! Small f16 gradients flush to zero. Multiplying the loss by a large scale keeps them
//! representable; the gradients are divided by it again (before clipping) in f32. When a step
//! overflows (an inf or NaN gradient), it is skipped and the scale halves; after
//! `growth_interval` clean steps in a row, the scale doubles.

use serde::{Deserialize, Serialize};

/// Settings of the [`LossScaler`], PyTorch's defaults.
#[derive(burn::config::Config, Debug, PartialEq)]
pub struct LossScaleConfig {
    /// The first scale.
    #[config(default = 65536.0)]
    pub init_scale: f64,
    /// Factor applied after `growth_interval` clean steps.
    #[config(default = 2.0)]
    pub growth_factor: f64,
    /// Factor applied after an overflow.
    #[config(default = 0.5)]
    pub backoff_factor: f64,
    /// Clean steps in a row before growing.
    #[config(default = 2000)]
    pub growth_interval: usize,
}

impl LossScaleConfig {
    /// Checks the settings: positive finite scale, growth > 1, backoff in (0, 1), interval > 0.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.init_scale.is_finite() && self.init_scale > 0.0) {
            return Err(format!("init_scale must be > 0, got {}", self.init_scale));
        }
        // The loss is scaled in f32: a larger scale is infinity there, and every step would
        // overflow until enough backoffs had brought it down.
        if self.init_scale > MAX_SCALE {
            return Err(format!(
                "init_scale {} is beyond f32's range (at most {MAX_SCALE:e}), in which the loss \
                 is scaled",
                self.init_scale
            ));
        }
        if !(self.growth_factor.is_finite() && self.growth_factor > 1.0) {
            return Err(format!(
                "growth_factor must be > 1, got {}",
                self.growth_factor
            ));
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return Err(format!(
                "backoff_factor must be in (0, 1), got {}",
                self.backoff_factor
            ));
        }
        if self.growth_interval == 0 {
            return Err("growth_interval must be > 0".into());
        }
        Ok(())
    }

    /// A scaler at the initial scale.
    pub fn init(&self) -> LossScaler {
        LossScaler {
            scale: self.init_scale,
            growth_factor: self.growth_factor,
            backoff_factor: self.backoff_factor,
            growth_interval: self.growth_interval,
            clean_steps: 0,
        }
    }
}

/// The largest scale: f32's largest finite value (the loss is scaled in f32).
const MAX_SCALE: f64 = f32::MAX as f64;

/// The scaler's state; it is part of every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: usize,
    clean_steps: usize,
}

impl LossScaler {
    /// The factor the loss is multiplied by before the backward pass.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Checks a scaler read from a checkpoint against the run's `config`: the same settings, a
    /// finite positive scale, fewer clean steps than the growth interval.
    pub fn check(&self, config: &LossScaleConfig) -> Result<(), String> {
        let fresh = config.init();
        if (
            self.growth_factor,
            self.backoff_factor,
            self.growth_interval,
        ) != (
            fresh.growth_factor,
            fresh.backoff_factor,
            fresh.growth_interval,
        ) {
            return Err("the loss scaler's settings are not the run's".into());
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(format!("loss scale {} is not finite and > 0", self.scale));
        }
        if self.clean_steps >= self.growth_interval {
            return Err(format!(
                "{} clean steps, at least the growth interval {}",
                self.clean_steps, self.growth_interval
            ));
        }
        Ok(())
    }

    /// Records the outcome of a step: `overflowed` when a gradient was inf or NaN (the caller
    /// then skips the optimizer step).
    pub fn update(&mut self, overflowed: bool) {
        if overflowed {
            self.scale *= self.backoff_factor;
            self.clean_steps = 0;
        } else {
            self.clean_steps += 1;
            if self.clean_steps == self.growth_interval {
                self.scale = (self.scale * self.growth_factor).min(MAX_SCALE);
                self.clean_steps = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_halves_and_clean_steps_double() {
        let mut scaler = LossScaleConfig::new().with_growth_interval(3).init();
        assert_eq!(scaler.scale(), 65536.0);
        scaler.update(true);
        assert_eq!(scaler.scale(), 32768.0);
        scaler.update(false);
        scaler.update(false);
        assert_eq!(scaler.scale(), 32768.0);
        scaler.update(true); // an overflow resets the count of clean steps
        scaler.update(false);
        scaler.update(false);
        assert_eq!(scaler.scale(), 16384.0);
        scaler.update(false);
        assert_eq!(scaler.scale(), 32768.0);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(LossScaleConfig::new().validate().is_ok());
        assert!(
            LossScaleConfig::new()
                .with_init_scale(0.0)
                .validate()
                .is_err()
        );
        assert!(
            LossScaleConfig::new()
                .with_growth_factor(1.0)
                .validate()
                .is_err()
        );
        assert!(
            LossScaleConfig::new()
                .with_backoff_factor(1.5)
                .validate()
                .is_err()
        );
        assert!(
            LossScaleConfig::new()
                .with_growth_interval(0)
                .validate()
                .is_err()
        );
    }
}
