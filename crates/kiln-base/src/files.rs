//! The rules kiln keeps wherever it touches the file system (docs/reliability.md, section 2):
//!
//! - **It never writes through a symbolic link.** A link where kiln creates or replaces a file
//!   (`kiln.lock`, `config.json`, a checkpoint file, a metrics log) is refused by name: a link
//!   named like one of kiln's files and pointing at a user's file would otherwise have that file
//!   overwritten. Folders may be links (a run folder on another disk is a common setup).
//! - **It reads only regular files.** A device, a pipe or a socket opened as a file hangs or
//!   never ends (`/dev/zero` as training text grew past 20 GB in a minute); it is refused before
//!   it is opened.
//! - **It replaces only what it wrote.** An output folder ([`OutputDir`]) records the files kiln
//!   wrote in it ([`OUTPUT_RECORD`]); a folder that holds anything else is refused, with the list,
//!   unless the caller forces it.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::limits::TEXT_FILE_BYTES;

/// The record of the files kiln wrote in an output folder: one name per line.
pub const OUTPUT_RECORD: &str = ".kiln-output";

/// A file kiln will not write or read, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct FileError {
    /// The file or folder.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: FileProblem,
}

/// What makes a path one kiln will not use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    /// kiln would write through a symbolic link.
    #[error(
        "is a symbolic link; kiln does not write through links (remove it, or choose another path)"
    )]
    Link,
    /// A file kiln reads is a device, a pipe, a socket or a folder.
    #[error("is {0}, not a regular file")]
    NotAFile(&'static str),
    /// An output folder holds files kiln did not write.
    #[error(
        "holds files kiln did not write: {}; kiln replaces only its own files (choose an empty \
         or new folder, or force it: `--force`)",
        .0.join(", ")
    )]
    Foreign(Vec<String>),
    /// The operating system refused (another error than the ones above).
    #[error("{message}")]
    Io {
        /// The kind of error.
        kind: std::io::ErrorKind,
        /// What the operating system said.
        message: String,
    },
}

impl FileError {
    /// The operating system's error, when that is all this is (a missing file, a permission):
    /// callers whose error types keep I/O errors apart convert it back into one.
    pub fn into_io(self) -> Result<(PathBuf, std::io::Error), FileError> {
        match self.problem {
            FileProblem::Io { kind, message } => {
                Ok((self.path, std::io::Error::new(kind, message)))
            }
            _ => Err(self),
        }
    }
}

impl From<FileError> for crate::StoreError {
    fn from(e: FileError) -> Self {
        match e.into_io() {
            Ok((path, source)) => Self::Io { path, source },
            Err(e) => Self::File(e),
        }
    }
}

fn error(path: &Path, problem: FileProblem) -> FileError {
    FileError {
        path: path.to_path_buf(),
        problem,
    }
}

fn io(path: &Path, e: std::io::Error) -> FileError {
    error(
        path,
        FileProblem::Io {
            kind: e.kind(),
            message: e.to_string(),
        },
    )
}

/// Fails with [`FileProblem::Link`] when `path` itself is a symbolic link (dangling or not).
pub fn refuse_link(path: &Path) -> Result<(), FileError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(error(path, FileProblem::Link)),
        _ => Ok(()),
    }
}

/// `options` with the open refusing a link in the last component (`O_NOFOLLOW`), so that a
/// link made between a check and the open is refused too.
fn no_follow(mut options: OpenOptions) -> OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options
}

/// Opens `options` on `path` without following a link: a link is [`FileProblem::Link`].
pub fn open_no_follow(path: &Path, options: OpenOptions) -> Result<File, FileError> {
    refuse_link(path)?;
    no_follow(options).open(path).map_err(|e| {
        // ELOOP: the link appeared after the check.
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) {
            return error(path, FileProblem::Link);
        }
        io(path, e)
    })
}

/// Creates (or truncates) the regular file `path` for writing, never through a link.
pub fn create(path: &Path) -> Result<File, FileError> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    open_no_follow(path, options)
}

/// Creates `path`, which must not exist yet (not even as a dangling link).
pub fn create_new(path: &Path) -> Result<File, FileError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    open_no_follow(path, options)
}

/// Opens `path` for appending (created if missing), never through a link.
pub fn append(path: &Path) -> Result<File, FileError> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    open_no_follow(path, options)
}

/// Checks that `path` (links followed: reading through one is harmless) is a regular file, and
/// returns its length; a folder, device, pipe or socket is [`FileProblem::NotAFile`].
pub fn regular_file(path: &Path) -> Result<u64, FileError> {
    let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let kind = if meta.is_dir() {
        "a folder"
    } else {
        special_kind(&meta)
    };
    Err(error(path, FileProblem::NotAFile(kind)))
}

#[cfg(unix)]
fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_fifo() {
        "a pipe (FIFO)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a file"
    }
}

#[cfg(not(unix))]
fn special_kind(_meta: &std::fs::Metadata) -> &'static str {
    "a special file"
}

/// Opens `path` for reading once it has passed [`regular_file`]; returns the file and its
/// length.
pub fn open_regular(path: &Path) -> Result<(File, u64), FileError> {
    let len = regular_file(path)?;
    Ok((File::open(path).map_err(|e| io(path, e))?, len))
}

/// A folder kiln writes files into (a saved model, an HF export, prepared data), claimed before
/// the first write: it must be new, empty, or hold only files kiln wrote there before (listed
/// in its [`OUTPUT_RECORD`]), unless forced. Each file written is added to the record, so the
/// next save into the folder may replace it; nothing else in the folder is touched.
#[derive(Clone, Debug)]
pub struct OutputDir {
    path: PathBuf,
    force: bool,
}

impl OutputDir {
    /// The folder `path`, to be refused if it holds files kiln did not write.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            force: false,
        }
    }

    /// The folder `path`, written into whatever else it holds (a user's `--force`): kiln's
    /// files are still created without following links, and other files are left alone.
    pub fn forced(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            force: true,
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the folder if missing and checks it: every entry must be a file kiln recorded
    /// (or the record itself), unless forced. `about_to_write` are the names the caller will
    /// write: kiln's own leftovers of them (`NAME.tmp`) do not count as foreign.
    pub fn claim(&self, about_to_write: &[&str]) -> Result<(), FileError> {
        let dir = &self.path;
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        if self.force {
            return Ok(());
        }
        let recorded = self.recorded()?;
        let mut foreign = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let name = entry.map_err(|e| io(dir, e))?.file_name();
            let name = name.to_string_lossy().into_owned();
            // Hidden names starting `.kiln-` are kiln's own (its record, the work folder of an
            // interrupted preparation, a write probe).
            let ours = name.starts_with(".kiln-")
                || recorded.contains(&name)
                || name
                    .strip_suffix(".tmp")
                    .is_some_and(|n| about_to_write.contains(&n) || recorded.contains(n));
            if !ours {
                foreign.push(name);
            }
        }
        if foreign.is_empty() {
            return Ok(());
        }
        foreign.sort();
        Err(error(dir, FileProblem::Foreign(foreign)))
    }

    /// The names the folder's record lists (none when there is no record).
    fn recorded(&self) -> Result<BTreeSet<String>, FileError> {
        let path = self.path.join(OUTPUT_RECORD);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(BTreeSet::new());
        }
        let bytes = crate::limits::read_bounded(&path, &TEXT_FILE_BYTES).map_err(|e| match e {
            crate::StoreError::File(e) => e,
            other => io(&path, std::io::Error::other(other.to_string())),
        })?;
        Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty() && !n.contains('/') && !n.contains('\\'))
            .map(str::to_string)
            .collect())
    }

    /// Adds `names` to the folder's record (atomically), after they are written.
    pub fn record(&self, names: &[&str]) -> Result<(), crate::StoreError> {
        let mut recorded = self.recorded()?;
        recorded.extend(names.iter().map(|n| n.to_string()));
        let text: String = recorded.into_iter().map(|n| n + "\n").collect();
        crate::store::write_atomic(&self.path.join(OUTPUT_RECORD), text.as_bytes())
    }

    /// Writes `bytes` to the folder's file `name` atomically ([`write_atomic`](crate::store::write_atomic))
    /// and records it. Call [`claim`](Self::claim) first.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), crate::StoreError> {
        crate::store::write_atomic(&self.path.join(name), bytes)?;
        self.record(&[name])
    }
}

/// A path is an output folder that refuses foreign files: `save_model(&model, &config, dir)`.
macro_rules! output_dir_from {
    ($($t:ty),*) => {$(
        impl From<$t> for OutputDir {
            fn from(path: $t) -> Self {
                Self::new(path)
            }
        }
    )*};
}
output_dir_from!(&Path, &PathBuf, PathBuf, &str, String);

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    #[test]
    fn links_are_refused_and_their_targets_untouched() {
        let dir = temp("links");
        let target = dir.join("precious.txt");
        std::fs::write(&target, b"keep me").unwrap();
        let link = dir.join("kiln.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for result in [create(&link), append(&link), create_new(&link)] {
            let err = result.unwrap_err();
            assert!(matches!(err.problem, FileProblem::Link), "{err}");
            assert!(err.to_string().contains("kiln.lock"), "{err}");
        }
        let err = crate::store::write_atomic(&link, b"overwritten").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // A dangling link, and a link at the temporary name write_atomic uses.
        let dangling = dir.join("config.json");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        assert!(create(&dangling).is_err());
        assert!(!dir.join("nowhere").exists());
        std::os::unix::fs::symlink(&target, dir.join("model.bpk.tmp")).unwrap();
        crate::store::write_atomic(&dir.join("model.bpk"), b"weights").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        assert_eq!(std::fs::read(dir.join("model.bpk")).unwrap(), b"weights");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn devices_pipes_and_folders_are_not_read() {
        let dir = temp("special");
        let err = regular_file(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
        let err = regular_file(&dir).unwrap_err();
        assert!(err.to_string().contains("a folder"), "{err}");
        let fifo = dir.join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Opening a FIFO for reading would block: the check comes first.
            let err = crate::limits::read_bounded(&fifo, &TEXT_FILE_BYTES).unwrap_err();
            assert!(err.to_string().contains("a pipe"), "{err}");
        }
        std::fs::write(dir.join("ok"), b"12").unwrap();
        assert_eq!(regular_file(&dir.join("ok")).unwrap(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_output_folder_with_foreign_files_is_refused_unless_forced() {
        let dir = temp("output");
        let out = OutputDir::new(&dir);
        out.claim(&["config.json"]).unwrap();
        out.write("config.json", b"{}").unwrap();
        // kiln may replace what it wrote, and its own leftover temporary files.
        std::fs::write(dir.join("config.json.tmp"), b"half").unwrap();
        out.claim(&["config.json"]).unwrap();
        // A file kiln did not write blocks the folder, named.
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let err = out.claim(&["config.json"]).unwrap_err();
        assert!(
            matches!(&err.problem, FileProblem::Foreign(names) if names == &["notes.txt"]),
            "{err}"
        );
        assert!(err.to_string().contains("--force"), "{err}");
        OutputDir::forced(&dir).claim(&["config.json"]).unwrap();
        assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
        // A folder kiln never wrote into, with a same-named file, is foreign too.
        let other = temp("output-other");
        std::fs::write(other.join("config.json"), b"theirs").unwrap();
        assert!(OutputDir::new(&other).claim(&["config.json"]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&other).unwrap();
    }
}
