//! A run folder belongs to one run at a time: an exclusive lock on `kiln.lock` in it, held while
//! the run trains, holding the run's identity (run id, pid, host, start time) so that a second
//! run names the one it collided with.
//!
//! The lock is the operating system's (`flock` on Unix, `LockFileEx` on Windows, through
//! `File::try_lock`): it goes away with the process, so a run killed with SIGKILL leaves no
//! stale lock behind, and the file left on disk is only a record of the last holder.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Result, TrainError};

/// The lock file's name in each folder a run writes to.
pub(crate) const LOCK_FILE: &str = "kiln.lock";

/// The most bytes of a holder's identity shown in [`TrainError::Locked`].
const MAX_HOLDER_BYTES: u64 = 4096;

/// Who holds a run folder.
#[derive(Serialize)]
pub(crate) struct RunIdentity<'a> {
    pub run_id: &'a str,
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

impl<'a> RunIdentity<'a> {
    /// This process, now, running `run_id`.
    pub fn of_this_process(run_id: &'a str) -> Self {
        Self {
            run_id,
            pid: std::process::id(),
            host: host_name(),
            started: unix_seconds(),
        }
    }
}

/// An exclusive lock on a run folder, released when dropped (or when the process dies).
pub(crate) struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks `dir` (created if missing) for this process, or fails at once with
    /// [`TrainError::Locked`] naming the holder. The folder is checked to be writable first
    /// ([`TrainError::NotWritable`]), so a run fails here rather than at its first write.
    pub fn acquire(dir: &Path) -> Result<Self> {
        check_writable(dir)?;
        let path = dir.join(LOCK_FILE);
        // Never through a link: a `kiln.lock` linked to a user's file would have it
        // overwritten with the run's identity.
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        let mut file = kiln_base::files::open_no_follow(&path, options).map_err(|e| match e {
            kiln_base::FileError {
                problem: kiln_base::files::FileProblem::Io { kind, message },
                ..
            } => TrainError::NotWritable {
                path: path.clone(),
                source: std::io::Error::new(kind, message),
            },
            other => TrainError::File(other),
        })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { file, path }),
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder writes its identity right after locking; it may not be there yet.
                let _ = (&mut file)
                    .take(MAX_HOLDER_BYTES)
                    .read_to_string(&mut holder);
                let holder = holder.trim();
                Err(TrainError::Locked {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "its identity is not written yet".into()
                    } else {
                        holder.to_string()
                    },
                })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(TrainError::io(&path, e)),
        }
    }

    /// Writes the holder's identity into the lock file.
    pub fn record(&mut self, identity: &RunIdentity<'_>) -> Result<()> {
        let text = serde_json::to_string(identity).expect("an identity serializes");
        let io = |e| TrainError::io(&self.path, e);
        self.file.set_len(0).map_err(io)?;
        self.file.rewind().map_err(io)?;
        self.file.write_all(text.as_bytes()).map_err(io)?;
        self.file.sync_all().map_err(io)
    }
}

/// Fails with [`TrainError::NotWritable`] unless a file can be created, written and removed in
/// `dir` (created if missing).
pub(crate) fn check_writable(dir: &Path) -> Result<()> {
    let not_writable = |path: &Path, source| TrainError::NotWritable {
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(|e| not_writable(dir, e))?;
    let probe = dir.join(format!(".kiln-write-check-{}", std::process::id()));
    // A leftover probe (or a link planted under its name) is removed, never written through.
    let _ = fs::remove_file(&probe);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| f.write_all(b"kiln").and_then(|()| f.sync_all()));
    let removed = fs::remove_file(&probe);
    written.and(removed).map_err(|e| not_writable(dir, e))
}

/// A new run id: 16 hex digits from the time, the process, the host and a counter, so runs
/// started anywhere at any time differ.
pub(crate) fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hash = Sha256::new();
    hash.update(nanos.to_le_bytes());
    hash.update(std::process::id().to_le_bytes());
    hash.update(host_name().as_bytes());
    hash.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `id` looks like a run id (what a checkpoint's manifest may hold).
pub(crate) fn is_run_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The machine's name, for the lock file (`unknown` where it cannot be read).
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().chars().take(255).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_folder_fails_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = RunLock::acquire(dir.path()).unwrap();
        first
            .record(&RunIdentity::of_this_process("abc123"))
            .unwrap();
        match RunLock::acquire(dir.path()) {
            Err(TrainError::Locked { holder, .. }) => {
                assert!(holder.contains("abc123"), "{holder}");
                assert!(holder.contains(&std::process::id().to_string()), "{holder}");
            }
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        drop(first);
        RunLock::acquire(dir.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn run_ids_differ_and_are_run_ids() {
        let (a, b) = (new_run_id(), new_run_id());
        assert_ne!(a, b);
        assert!(is_run_id(&a) && is_run_id(&b));
        assert!(!is_run_id("") && !is_run_id("../x") && !is_run_id(&"a".repeat(65)));
    }
}
