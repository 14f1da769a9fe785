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
    /// Every step of the run was skipped (its loss or gradients were not finite): the model
    /// is the one it started from, which is a failure, not a result.
    #[error(
        "every one of the {steps} steps was skipped for a loss or gradient that was not finite: \
         nothing was trained (lower the learning rate, check the data, or use f32)"
    )]
    NothingTrained {
        /// The steps the run took.
        steps: usize,
    },
    /// An evaluation's loss is NaN or infinite: there is no held-out result to report or to
    /// stop on.
    #[error("the held-out loss at step {step} is {loss}, not finite")]
    NonFiniteEval {
        /// The step after which the evaluation ran.
        step: usize,
        /// The loss it measured.
        loss: f64,
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
    /// Something the run keeps (the optimizer state, the schedule, the loop state) could not
    /// be serialized.
    #[error("serializing {what}: {reason}")]
    Serialize {
        /// What was being serialized.
        what: &'static str,
        /// The serializer's message.
        reason: String,
    },
    /// The dataset could not provide an item.
    #[error("dataset: {0}")]
    Data(String),
    /// The model rejected a batch (its own error, e.g. kiln-model's `ModelError`).
    #[error("the model failed on a batch: {0}")]
    Model(kiln_base::BoxError),
    /// A step hook failed.
    #[error("step hook failed after step {step}: {source}")]
    Hook {
        /// The optimizer step after which the hook ran.
        step: usize,
        /// The hook's error.
        source: kiln_base::BoxError,
    },
    /// A resumed run's config differs from the one its checkpoint was written with.
    #[error(
        "cannot resume from {}: `{field}` was {saved} in that run and is {current} now (resume with the same config, or start a new run directory)",
        checkpoint.display()
    )]
    ConfigChanged {
        /// The checkpoint folder.
        checkpoint: PathBuf,
        /// The first differing field, as a dotted path (`trainer.batch_size`).
        field: String,
        /// Its value in the checkpoint's run config (JSON).
        saved: String,
        /// Its value in this run's config (JSON).
        current: String,
    },
    /// A run config file could not be read or parsed.
    #[error("run config {}: {reason}", path.display())]
    RunConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A size from the config, a flag or a checkpoint is above its ceiling
    /// ([`limits`](crate::limits)), or arithmetic on sizes would overflow.
    #[error(transparent)]
    Limit(#[from] kiln_base::limits::LimitError),
    /// A path kiln will not use: a symbolic link where it writes, a device or pipe where it
    /// reads, an output folder holding files kiln did not write ([`kiln_base::files`]).
    #[error(transparent)]
    File(kiln_base::FileError),
    /// Another run holds the run directory's lock.
    #[error(
        "{} is in use by another run ({holder}); wait for it to end, or use another folder",
        dir.display()
    )]
    Locked {
        /// The locked folder.
        dir: PathBuf,
        /// The identity the holder wrote into the lock file (run id, pid, host, start time).
        holder: String,
    },
    /// A new run was started in a folder that holds another run's results.
    #[error(
        "{} already holds another run's results ({found}): resume that run (resume = true, --resume), use another folder, or replace it (overwrite = true, --overwrite)",
        dir.display()
    )]
    Occupied {
        /// The folder.
        dir: PathBuf,
        /// What it holds.
        found: String,
    },
    /// A folder the run writes to cannot be written; checked before the first step.
    #[error("{} is not writable (checked before training starts): {source}", path.display())]
    NotWritable {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Rank 0 of a data-parallel run could not start it (its own error names why); the other
    /// ranks stop with this.
    #[error("rank 0 could not start the run: {0}")]
    MainRankFailed(String),
    /// Communication between the ranks of a data-parallel run failed, or they disagree.
    #[error(transparent)]
    Dist(#[from] kiln_dist::DistError),
    /// The optimizer utilities rejected an argument.
    #[error(transparent)]
    Optim(#[from] kiln_optim::OptimError),
}

impl From<kiln_base::FileError> for TrainError {
    /// An I/O error stays one; a refused path is [`TrainError::File`].
    fn from(e: kiln_base::FileError) -> Self {
        kiln_base::StoreError::from(e).into()
    }
}

impl From<kiln_base::StoreError> for TrainError {
    fn from(e: kiln_base::StoreError) -> Self {
        match e {
            kiln_base::StoreError::Io { path, source } => Self::Io { path, source },
            kiln_base::StoreError::Format { path, reason } => {
                Self::CorruptCheckpoint { path, reason }
            }
            kiln_base::StoreError::Limit(e) => Self::Limit(e),
            kiln_base::StoreError::File(e) => Self::File(e),
        }
    }
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
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
