//! [`DataError`], the error type of kiln-data.
//!
//! Every variant carries plain strings and numbers (no `std::io::Error`), so errors compare
//! with `==` in tests and cross thread and `DatasetError` boundaries unchanged.

use std::path::Path;

use kiln_base::limits::LimitError;

/// Errors of kiln-data.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DataError {
    /// The corpus had no characters to build a vocabulary from.
    #[error("cannot build a vocabulary from an empty corpus")]
    EmptyCorpus,
    /// A character is not in the vocabulary.
    #[error("character {0:?} is not in the vocabulary")]
    UnknownChar(char),
    /// An id is not in the vocabulary.
    #[error("token id {0} is not in the vocabulary")]
    UnknownId(usize),
    /// A named token (such as `[MASK]`) is not in the vocabulary.
    #[error("token {0:?} is not in the vocabulary")]
    UnknownToken(String),
    /// A dataset index past the end.
    #[error("index {index} is out of range for a dataset of {len} items")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// A file could not be opened, read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        message: String,
    },
    /// A line of a text or JSONL file is not valid UTF-8.
    #[error("{path}:{line}: invalid UTF-8")]
    InvalidUtf8 {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// A JSONL line is not a JSON object with the expected fields.
    #[error("{path}:{line}: malformed JSON line: {message}")]
    MalformedJson {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// A CSV record is malformed or lacks a field.
    #[error("{path}:{line}: malformed CSV: {message}")]
    MalformedCsv {
        /// The file.
        path: String,
        /// 1-based line number where the record starts.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// The HuggingFace tokenizer failed (loading, training, encoding or decoding).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A configuration value is out of its valid range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A token-shard directory is missing files or inconsistent.
    #[error("{path}: bad token shards: {message}")]
    BadShards {
        /// The directory or file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// A shard's bytes differ from the SHA-256 checksum `meta.json` recorded for it: the file
    /// was corrupted or replaced after it was written.
    #[error(
        "{path}: SHA-256 {actual} differs from {expected} in meta.json (the shard is corrupted or was replaced; prepare the folder again)"
    )]
    ChecksumMismatch {
        /// The shard file.
        path: String,
        /// The checksum in `meta.json`.
        expected: String,
        /// The checksum of the file's bytes.
        actual: String,
    },
    /// A shard holds a token id at or above the vocabulary size of its `meta.json`.
    #[error(
        "{path}: token {offset} is id {id}, outside the vocabulary of {vocab_size} in meta.json"
    )]
    OutOfVocabulary {
        /// The shard file.
        path: String,
        /// The token's position in the shard (0-based, in tokens).
        offset: u64,
        /// The id found there.
        id: u32,
        /// The vocabulary size of `meta.json`.
        vocab_size: usize,
    },
    /// A read of tokens `start..start + count` past the end of a token stream of `len`.
    #[error("tokens {start}..{start}+{count} are past the end of a stream of {len}")]
    TokenRange {
        /// The first token asked for.
        start: u64,
        /// How many.
        count: u64,
        /// The stream's length.
        len: u64,
    },
    /// Labels of a classification file that are neither class ids (non-negative integers) nor
    /// class names (strings): negative or fractional numbers, `null`, arrays, objects.
    #[error(
        "{path}: {count} label(s) are neither class ids (integers from 0) nor class names (strings), the first on line {line}: {label}"
    )]
    BadLabels {
        /// The file.
        path: String,
        /// How many such labels the file holds.
        count: usize,
        /// 1-based line of the first.
        line: usize,
        /// The first, as written.
        label: String,
    },
    /// A size is above its ceiling (see [`crate::limits`]), or arithmetic on sizes overflowed.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A path kiln will not use: a symbolic link where it writes, a device or pipe where it
    /// reads, an output folder holding files kiln did not write ([`kiln_base::files`]).
    #[error(transparent)]
    File(kiln_base::FileError),
    /// Too few tokens for even one training window.
    #[error("{tokens} tokens cannot fill one window of {needed}")]
    NotEnoughTokens {
        /// Tokens available.
        tokens: usize,
        /// Tokens one window needs.
        needed: usize,
    },
}

impl From<kiln_base::FileError> for DataError {
    /// An I/O error stays one; a refused path is [`DataError::File`].
    fn from(e: kiln_base::FileError) -> Self {
        kiln_base::StoreError::from(e).into()
    }
}

impl From<kiln_base::StoreError> for DataError {
    fn from(e: kiln_base::StoreError) -> Self {
        match e {
            kiln_base::StoreError::Io { path, source } => Self::io(path, source),
            kiln_base::StoreError::Format { path, reason } => Self::io(path, reason),
            kiln_base::StoreError::Limit(e) => Self::Limit(e),
            kiln_base::StoreError::File(e) => Self::File(e),
        }
    }
}

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub fn io(path: impl AsRef<Path>, err: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            message: err.to_string(),
        }
    }

    /// A [`DataError::Tokenizer`] from any error of the `tokenizers` crate.
    pub fn tokenizer(err: impl std::fmt::Display) -> Self {
        Self::Tokenizer(err.to_string())
    }
}
