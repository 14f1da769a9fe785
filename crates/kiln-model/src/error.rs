//! The one error type of kiln-model.

use std::path::PathBuf;

/// Everything that can go wrong when building, running, saving or loading a model.
///
/// Bad input never panics inside kiln-model: it comes back as one of these, with enough detail
/// (a tensor name, both shapes, a file) to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A batch is longer than the model's context window.
    #[error("sequence of length {len} is longer than the context of {max} positions")]
    SequenceTooLong {
        /// The length that was asked for.
        len: usize,
        /// The model's context length.
        max: usize,
    },
    /// A token id is not in `0..vocab_size`.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenOutOfVocab {
        /// The offending id.
        id: i64,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// An id (a token id for the device, a target, a class label) outside the range of the
    /// table it indexes, with its place in the batch. Checked before any cast or lookup, so a
    /// bad id is this error, never a panic or a silently wrong loss.
    #[error("{what} {id} at index {at:?} is outside 0..{bound}")]
    IdOutOfRange {
        /// What the id is, e.g. "target (vocabulary of 100)".
        what: String,
        /// The offending id.
        id: i64,
        /// Its index in the batch (`[row, position]` for a `[batch, seq]` tensor).
        at: Vec<usize>,
        /// The first id past the range.
        bound: u64,
    },
    /// An input tensor or list has the wrong shape.
    #[error("bad input: {0}")]
    BadInput(String),
    /// A weight file lacks a tensor the model needs.
    #[error("tensor `{name}` is missing from {file}")]
    MissingTensor {
        /// The tensor's name in the file.
        name: String,
        /// The file that was read.
        file: PathBuf,
    },
    /// A weight file holds a tensor the model has no place for (a checkpoint of another
    /// architecture than its config says, or one a config setting would have used).
    #[error("tensor `{name}` in {file} has no place in the model the config describes")]
    UnexpectedTensor {
        /// The tensor's name in the file.
        name: String,
        /// The file that was read.
        file: PathBuf,
    },
    /// A tensor in a weight file has the wrong shape.
    #[error("tensor `{name}` in {file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor's name in the file.
        name: String,
        /// The file that was read.
        file: PathBuf,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor of a checkpoint holds NaN or infinite values. Loading with
    /// [`HfLoadConfig::allow_non_finite`](crate::hf::HfLoadConfig::allow_non_finite) turns this
    /// into a warning.
    #[error(
        "tensor `{name}` in {file} has {count} non-finite values (NaN or infinite); the \
         checkpoint is corrupt (load with allow_non_finite to accept it with a warning)"
    )]
    NonFiniteWeights {
        /// The tensor's name in the file.
        name: String,
        /// The file that was read.
        file: PathBuf,
        /// How many of its values are NaN or infinite.
        count: usize,
    },
    /// A size read from a config, a file or a flag is above kiln's ceiling
    /// ([`limits`](crate::limits)).
    #[error(transparent)]
    Limit(#[from] kiln_base::limits::LimitError),
    /// A path kiln will not use: a symbolic link where it writes, a device or pipe where it
    /// reads, an output folder holding files kiln did not write ([`kiln_base::files`]).
    #[error(transparent)]
    File(kiln_base::FileError),
    /// A `config.json` names a `model_type` kiln cannot load.
    #[error(
        "unsupported model_type `{0}` (kiln loads `gpt2`, `bert`, `llama`, `qwen2` and `mistral`)"
    )]
    UnknownModelType(String),
    /// A field of a `config.json` has the wrong type or value.
    #[error("field `{field}` of {file}: {message}")]
    ConfigField {
        /// The config file.
        file: PathBuf,
        /// The field's name in the file.
        field: String,
        /// What was wrong with it.
        message: String,
    },
    /// A model cannot be written as a HuggingFace checkpoint: transformers has no model of its
    /// shape. Nothing was written.
    #[error("no HuggingFace equivalent: {0}")]
    NoHfEquivalent(String),
    /// A weight or config file could not be parsed.
    #[error("cannot parse {file}: {message}")]
    Format {
        /// The file that was read.
        file: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// A file could not be read or written.
    #[error("I/O error on {file}: {source}")]
    Io {
        /// The file involved.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl ModelError {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::InvalidConfig(message.into())
    }

    pub(crate) fn io(file: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            file: file.into(),
            source,
        }
    }

    pub(crate) fn format(file: impl Into<PathBuf>, message: impl ToString) -> Self {
        Self::Format {
            file: file.into(),
            message: message.to_string(),
        }
    }
}

impl From<kiln_base::FileError> for ModelError {
    /// An I/O error stays one; a refused path is [`ModelError::File`].
    fn from(e: kiln_base::FileError) -> Self {
        kiln_base::StoreError::from(e).into()
    }
}

impl From<kiln_base::StoreError> for ModelError {
    fn from(e: kiln_base::StoreError) -> Self {
        match e {
            kiln_base::StoreError::Io { path, source } => Self::Io { file: path, source },
            kiln_base::StoreError::Format { path, reason } => Self::Format {
                file: path,
                message: reason,
            },
            kiln_base::StoreError::Limit(e) => Self::Limit(e),
            kiln_base::StoreError::File(e) => Self::File(e),
        }
    }
}

/// Shorthand for results whose error is [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
