//! Bytes that must not be lost: atomic file writes, and a model's weights as burnpack bytes
//! (through burn-store). kiln-model's model folders and kiln-train's checkpoints both use them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot, PathFilter};

/// Why bytes could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not what they should be (not burnpack, a tensor missing or mis-shaped).
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file the bytes belong to.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file is larger than kiln reads ([`read_bounded`](crate::limits::read_bounded)).
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
    /// A path kiln will not write or read: a link where it writes, a device where it reads, a
    /// folder holding files kiln did not write ([`files`](crate::files)).
    #[error(transparent)]
    File(crate::files::FileError),
}

impl StoreError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    fn format(path: &Path, reason: impl std::fmt::Display) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file beside it, fsync and rename: a crash
/// leaves the old file or the new one, never a torn one. `path` must not be a symbolic link
/// (the rename would replace the link, not the file a user meant); the temporary file is
/// created afresh, never opened through whatever a leftover of that name is.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::files::refuse_link(path)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover of an interrupted write (or a link planted there): removing it removes the
    // entry itself, never what a link points to.
    if std::fs::symlink_metadata(&tmp).is_ok() {
        std::fs::remove_file(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    }
    let mut file = crate::files::create_new(&tmp)?;
    file.write_all(bytes).map_err(|e| StoreError::io(&tmp, e))?;
    file.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Makes a folder's entries (renames, new files) durable. Best effort: not every platform can
/// open a folder for syncing.
pub fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// The weights of `model` as burnpack bytes; `path` is where they will go (named in errors).
pub fn weights_to_bytes<M: Module>(model: &M, path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut store = BurnpackStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| StoreError::format(path, e))?;
    let bytes = store.get_bytes().map_err(|e| StoreError::format(path, e))?;
    Ok(bytes.to_vec())
}

/// The weights of the parameters of `model` at `paths` (dotted module paths, as burn-store
/// names them) as burnpack bytes: a checkpoint of a model with a frozen part holds the rest.
pub fn some_weights_to_bytes<M: Module>(
    model: &M,
    paths: &[String],
    path: &Path,
) -> Result<Vec<u8>, StoreError> {
    let filter = PathFilter::new().with_full_paths(paths.iter().cloned());
    let mut store = BurnpackStore::from_bytes(None).with_filter(filter);
    model
        .save_into(&mut store)
        .map_err(|e| StoreError::format(path, e))?;
    let bytes = store.get_bytes().map_err(|e| StoreError::format(path, e))?;
    Ok(bytes.to_vec())
}

/// Fills the parameters of `model` that burnpack `bytes` (read from `path`) hold, which must be
/// every parameter but those at `absent` (exactly those: a tensor missing beyond them, one
/// present among them, or a mis-shaped one is an error). The others keep their values.
pub fn some_weights_from_bytes<M: Module>(
    mut model: M,
    bytes: Vec<u8>,
    absent: &[String],
    path: &Path,
) -> Result<M, StoreError> {
    let mut store = BurnpackStore::from_bytes(Some(burn::tensor::Bytes::from_bytes_vec(bytes)))
        .allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| StoreError::format(path, e))?;
    let mut missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
    missing.sort_unstable();
    let mut expected: Vec<&str> = absent.iter().map(String::as_str).collect();
    expected.sort_unstable();
    if !result.errors.is_empty() || !result.unused.is_empty() || missing != expected {
        return Err(StoreError::format(
            path,
            format!(
                "the file should hold every parameter but the {} frozen ones; missing {:?}, \
                 unexpected {:?}, errors {:?}",
                expected.len(),
                missing,
                result.unused,
                result.errors
            ),
        ));
    }
    Ok(model)
}

/// Fills every parameter of `model` from burnpack `bytes` read from `path` (named in errors).
/// A missing or mis-shaped tensor is an error, and so is a tensor the model has no place for:
/// a config that declares fewer layers than the weights hold (or no bias, or rotary positions
/// over learned ones) would otherwise load a different model without a word.
pub fn weights_from_bytes<M: Module>(
    mut model: M,
    bytes: Vec<u8>,
    path: &Path,
) -> Result<M, StoreError> {
    let mut store = BurnpackStore::from_bytes(Some(burn::tensor::Bytes::from_bytes_vec(bytes)));
    let result = model
        .load_from(&mut store)
        .map_err(|e| StoreError::format(path, e))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(StoreError::format(
            path,
            format!(
                "missing tensors {:?}, errors {:?}",
                result.missing, result.errors
            ),
        ));
    }
    if !result.unused.is_empty() {
        let mut unused = result.unused.clone();
        unused.sort();
        return Err(StoreError::format(
            path,
            format!(
                "{} tensor(s) the model has no place for: {} (does the config describe these \
                 weights?)",
                unused.len(),
                unused.join(", ")
            ),
        ));
    }
    Ok(model)
}
