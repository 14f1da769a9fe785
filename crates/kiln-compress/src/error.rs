//! The one error type of kiln-compress.

use std::path::PathBuf;

/// Everything that can go wrong when pruning, quantizing, saving or loading a model.
///
/// Bad arguments never panic inside kiln-compress: they come back as one of these.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// A pruning amount is not a fraction in `[0, 1]` (or a count larger than what there is).
    #[error("invalid pruning amount: {0}")]
    InvalidAmount(String),
    /// An N:M pattern with `n > m` or `m == 0`.
    #[error("invalid N:M pattern {n}:{m}: need 0 <= n <= m and m > 0")]
    InvalidPattern {
        /// Weights kept per group.
        n: usize,
        /// Group size.
        m: usize,
    },
    /// A dimension that has to split into groups of `m` does not.
    #[error("parameter `{path}`: dimension {dim} is not divisible by the group size {m}")]
    NotDivisible {
        /// The parameter's path.
        path: String,
        /// The dimension's size.
        dim: usize,
        /// The group size.
        m: usize,
    },
    /// Nothing to prune or quantize: no parameter matched.
    #[error("empty model: {0}")]
    EmptyModel(String),
    /// A mask or tensor does not fit the parameter it is meant for.
    #[error("parameter `{path}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The parameter's path.
        path: String,
        /// The shape that was expected.
        expected: Vec<usize>,
        /// The shape that was found.
        found: Vec<usize>,
    },
    /// Any other argument out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A compressed-model file is malformed or lacks a tensor.
    #[error("cannot read {file}: {message}")]
    Format {
        /// The file.
        file: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("I/O error on {file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A size read from a file is above kiln's ceiling (kiln-model's
    /// [`limits`](kiln_model::limits)).
    #[error(transparent)]
    Limit(#[from] kiln_base::limits::LimitError),
    /// A path kiln will not use: a symbolic link where it writes, a device or pipe where it
    /// reads, an output folder holding files kiln did not write ([`kiln_base::files`]).
    #[error(transparent)]
    File(kiln_base::FileError),
    /// An error from kiln-model (building or running the model).
    #[error(transparent)]
    Model(#[from] kiln_model::ModelError),
}

impl From<kiln_base::FileError> for CompressError {
    /// An I/O error stays one; a refused path is [`CompressError::File`].
    fn from(e: kiln_base::FileError) -> Self {
        kiln_base::StoreError::from(e).into()
    }
}

impl From<kiln_base::StoreError> for CompressError {
    fn from(e: kiln_base::StoreError) -> Self {
        match e {
            kiln_base::StoreError::Io { path, source } => Self::Io { file: path, source },
            kiln_base::StoreError::Format { path, reason } => Self::format(path, reason),
            kiln_base::StoreError::Limit(e) => Self::Limit(e),
            kiln_base::StoreError::File(e) => Self::File(e),
        }
    }
}

impl CompressError {
    pub(crate) fn arg(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    pub(crate) fn format(file: impl Into<PathBuf>, message: impl ToString) -> Self {
        Self::Format {
            file: file.into(),
            message: message.to_string(),
        }
    }
}

/// Shorthand for results whose error is [`CompressError`].
pub type Result<T, E = CompressError> = std::result::Result<T, E>;
