//! What can go wrong in training, with the step, file or setting it concerns.

use std::path::PathBuf;

/// Errors of the training loop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting is out of range or two settings contradict each other.
    #[error("invalid trainer setting: {0}")]
    InvalidConfig(String),
    /// The loss or the gradient norm became NaN or infinite (`NonFinitePolicy::Error`).
    #[error(
        "the loss or the gradient is not finite at step {step} (loss {loss}, gradient norm {grad_norm})"
    )]
    NonFinite {
        /// The optimizer step (1-based) that failed.
        step: usize,
        /// The loss that was read.
        loss: f64,
        /// The global gradient norm.
        grad_norm: f64,
    },
    /// The parameters hold NaN or infinity; they are never written to a checkpoint.
    #[error("refusing to write a checkpoint at step {step}: the parameters are not finite")]
    NonFiniteWeights {
        /// The step whose checkpoint was refused.
        step: usize,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint file exists but cannot be used.
    #[error("checkpoint file {} is corrupt or truncated: {reason}", path.display())]
    CorruptCheckpoint {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Resuming was asked for, but no usable checkpoint exists.
    #[error("no usable checkpoint in {}{}", dir.display(), if skipped.is_empty() { String::new() } else { format!(" (skipped: {})", skipped.join("; ")) })]
    NoCheckpoint {
        /// The checkpoint folder.
        dir: PathBuf,
        /// Why each candidate was rejected.
        skipped: Vec<String>,
    },
    /// The dataset could not provide an item.
    #[error("dataset: {0}")]
    Data(String),
    /// The model rejected a batch.
    #[error(transparent)]
    Model(#[from] kiln_model::ModelError),
    /// The optimizer utilities rejected an argument.
    #[error(transparent)]
    Optim(#[from] kiln_optim::OptimError),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::CorruptCheckpoint {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// Results of kiln-train.
pub type Result<T> = std::result::Result<T, TrainError>;
