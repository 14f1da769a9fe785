//! An exponential moving average for noisy per-step metrics.

/// `mean ← decay·mean + (1-decay)·x`, bias-corrected like Adam's moments so the first values
/// are not pulled towards zero.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningMean {
    decay: f64,
    biased: f64,
    steps: i32,
}

impl RunningMean {
    /// A mean with the given decay in `[0, 1)`; 0.9 averages roughly the last ten values.
    pub fn new(decay: f64) -> Self {
        Self {
            decay: decay.clamp(0.0, 0.999_999),
            biased: 0.0,
            steps: 0,
        }
    }

    /// Adds a value; non-finite values are ignored so one bad step cannot poison the mean.
    pub fn update(&mut self, value: f64) {
        if value.is_finite() {
            self.biased = self.decay * self.biased + (1.0 - self.decay) * value;
            self.steps = self.steps.saturating_add(1);
        }
    }

    /// The current mean, or `None` before the first finite value.
    pub fn value(&self) -> Option<f64> {
        (self.steps > 0).then(|| self.biased / (1.0 - self.decay.powi(self.steps)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_stream_has_that_mean_from_the_first_step() {
        let mut mean = RunningMean::new(0.9);
        assert_eq!(mean.value(), None);
        for _ in 0..5 {
            mean.update(3.0);
            assert!((mean.value().unwrap() - 3.0).abs() < 1e-12);
        }
    }

    #[test]
    fn recent_values_weigh_more_and_nan_is_skipped() {
        let mut mean = RunningMean::new(0.5);
        mean.update(0.0);
        mean.update(f64::NAN);
        mean.update(4.0);
        // weights 0.5·0.5 and 0.5 over 1 - 0.25 = 0.75: (0 + 2) / 0.75
        assert!((mean.value().unwrap() - 8.0 / 3.0).abs() < 1e-12);
    }
}
