//! Early stopping on any evaluation metric, with patience and a minimum improvement.

use serde::{Deserialize, Serialize};

use crate::evaluate::EvalMetrics;

/// An evaluation metric.
#[derive(burn::config::Config, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Mean loss (lower is better).
    Loss,
    /// exp(mean loss) (lower is better).
    Perplexity,
    /// Fraction of correct predictions (higher is better).
    Accuracy,
}

impl Metric {
    /// Whether lower values are better.
    pub fn lower_is_better(self) -> bool {
        !matches!(self, Metric::Accuracy)
    }

    /// Its name in messages: `loss`, `perplexity`, `accuracy`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::Perplexity => "perplexity",
            Metric::Accuracy => "accuracy",
        }
    }

    /// The metric's value in `metrics`, if the model reports it.
    pub fn of(self, metrics: &EvalMetrics) -> Option<f64> {
        match self {
            Metric::Loss => Some(metrics.loss),
            Metric::Perplexity => Some(metrics.perplexity),
            Metric::Accuracy => metrics.accuracy,
        }
    }
}

/// Stop when `metric` has not improved by more than `min_delta` for `patience` evaluations
/// in a row. Whether to minimize or maximize follows the metric (loss and perplexity down,
/// accuracy up).
#[derive(burn::config::Config, Debug, PartialEq)]
pub struct EarlyStoppingConfig {
    /// The metric watched.
    #[config(default = "Metric::Loss")]
    pub metric: Metric,
    /// Evaluations without improvement before stopping.
    #[config(default = 5)]
    pub patience: usize,
    /// The smallest change that counts as an improvement.
    #[config(default = 0.0)]
    pub min_delta: f64,
}

impl EarlyStoppingConfig {
    /// Checks the settings: patience > 0 and min_delta >= 0.
    pub fn validate(&self) -> Result<(), String> {
        if self.patience == 0 {
            return Err("early stopping patience must be > 0".into());
        }
        if !(self.min_delta >= 0.0 && self.min_delta.is_finite()) {
            return Err(format!("min_delta must be >= 0, got {}", self.min_delta));
        }
        Ok(())
    }

    /// A fresh tracker.
    pub fn init(&self) -> EarlyStopping {
        EarlyStopping {
            metric: self.metric,
            patience: self.patience,
            min_delta: self.min_delta,
            best: None,
            best_step: None,
            evals_without_improvement: 0,
        }
    }
}

/// What one evaluation means for the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A new best value: keep these weights.
    Improved,
    /// No improvement, patience left.
    NoImprovement,
    /// Patience exhausted: stop and restore the best weights.
    Stop,
}

/// The tracker's state; it is part of every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    metric: Metric,
    patience: usize,
    min_delta: f64,
    best: Option<f64>,
    best_step: Option<usize>,
    evals_without_improvement: usize,
}

impl EarlyStopping {
    /// The metric watched.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Evaluations without improvement that stop the run.
    pub fn patience(&self) -> usize {
        self.patience
    }

    /// The best value so far and the step it was reached at.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.best_step.zip(self.best)
    }

    /// Checks a tracker read from a checkpoint at step `step` against the run's `config`: the
    /// same settings, no more evaluations without improvement than the patience, a best value
    /// that is a number and was reached by `step`.
    pub fn check(&self, config: &EarlyStoppingConfig, step: usize) -> Result<(), String> {
        let fresh = config.init();
        if (self.metric, self.patience) != (fresh.metric, fresh.patience)
            || self.min_delta.to_bits() != fresh.min_delta.to_bits()
        {
            return Err("the early-stopping settings are not the run's".into());
        }
        if self.evals_without_improvement > self.patience {
            return Err(format!(
                "{} evaluations without improvement, above the patience {}",
                self.evals_without_improvement, self.patience
            ));
        }
        match (self.best, self.best_step) {
            (None, None) => Ok(()),
            (Some(best), Some(at)) if !best.is_nan() && at <= step => Ok(()),
            (best, at) => Err(format!(
                "best value {best:?} at step {at:?} (the checkpoint is at step {step})"
            )),
        }
    }

    /// Records the value measured at `step`. A NaN never counts as an improvement.
    pub fn update(&mut self, step: usize, value: f64) -> Verdict {
        let improved = match self.best {
            None => !value.is_nan(),
            Some(best) if self.metric.lower_is_better() => value < best - self.min_delta,
            Some(best) => value > best + self.min_delta,
        };
        if improved {
            self.best = Some(value);
            self.best_step = Some(step);
            self.evals_without_improvement = 0;
            Verdict::Improved
        } else {
            self.evals_without_improvement += 1;
            if self.evals_without_improvement >= self.patience {
                Verdict::Stop
            } else {
                Verdict::NoImprovement
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_evaluations_without_improvement() {
        let mut es = EarlyStoppingConfig::new()
            .with_patience(2)
            .with_min_delta(0.1)
            .init();
        assert_eq!(es.update(10, 1.0), Verdict::Improved);
        assert_eq!(es.update(20, 0.95), Verdict::NoImprovement); // under min_delta
        assert_eq!(es.update(30, 0.8), Verdict::Improved);
        assert_eq!(es.update(40, 0.85), Verdict::NoImprovement);
        assert_eq!(es.update(50, 0.9), Verdict::Stop);
        assert_eq!(es.best(), Some((30, 0.8)));
    }

    #[test]
    fn accuracy_is_maximized_and_nan_never_improves() {
        let mut es = EarlyStoppingConfig::new()
            .with_metric(Metric::Accuracy)
            .with_patience(3)
            .init();
        assert_eq!(es.update(1, f64::NAN), Verdict::NoImprovement);
        assert_eq!(es.update(2, 0.5), Verdict::Improved);
        assert_eq!(es.update(3, 0.4), Verdict::NoImprovement);
        assert_eq!(es.update(4, 0.7), Verdict::Improved);
        assert_eq!(es.update(5, f64::NAN), Verdict::NoImprovement);
        assert_eq!(es.best(), Some((4, 0.7)));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(
            EarlyStoppingConfig::new()
                .with_patience(0)
                .validate()
                .is_err()
        );
        assert!(
            EarlyStoppingConfig::new()
                .with_min_delta(-1.0)
                .validate()
                .is_err()
        );
    }
}
