//! The one error type of kiln-optim.

use thiserror::Error;

/// Why an optimizer, schedule or gradient utility refused its input.
///
/// Every bad hyperparameter is reported here instead of panicking inside a training step.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum OptimError {
    /// A hyperparameter is outside its valid range (NaN, negative, beta outside `[0, 1)`, ...).
    #[error("invalid hyperparameter `{name}` = {value}: {reason}")]
    InvalidHyperparameter {
        /// The field name, as in the config.
        name: &'static str,
        /// The offending value.
        value: f64,
        /// What the valid range is.
        reason: &'static str,
    },
    /// A schedule's phases do not fit in its length (e.g. warmup longer than the run).
    #[error("invalid schedule: {0}")]
    InvalidSchedule(String),
    /// A parameter-group pattern is not a valid regular expression.
    #[error("invalid parameter-group pattern `{pattern}`: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// The regex compiler's message.
        reason: String,
    },
    /// Optimizer state read from a file does not fit the model or the optimizer.
    #[error("optimizer state: {0}")]
    CorruptState(String),
    /// A size read from a file is above its ceiling.
    #[error(transparent)]
    Limit(#[from] kiln_base::limits::LimitError),
    /// A parameter-group pattern matches no parameter of the model (almost always a typo).
    #[error(
        "parameter-group pattern `{pattern}` matches no parameter; parameter paths look like `{example}`"
    )]
    PatternMatchesNothing {
        /// The pattern as given.
        pattern: String,
        /// One real parameter path of the model, to show the naming.
        example: String,
    },
}

/// Checks that `value` is finite and `>= 0`.
pub(crate) fn non_negative(name: &'static str, value: f64) -> Result<(), OptimError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(OptimError::InvalidHyperparameter {
            name,
            value,
            reason: "must be finite and >= 0",
        })
    }
}

/// Checks that `value` is finite and `> 0`.
pub(crate) fn positive(name: &'static str, value: f64) -> Result<(), OptimError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(OptimError::InvalidHyperparameter {
            name,
            value,
            reason: "must be finite and > 0",
        })
    }
}

/// Checks that `value` is in `[0, 1)` (Adam's betas, a momentum coefficient).
pub(crate) fn unit_interval(name: &'static str, value: f64) -> Result<(), OptimError> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(OptimError::InvalidHyperparameter {
            name,
            value,
            reason: "must be in [0, 1)",
        })
    }
}
