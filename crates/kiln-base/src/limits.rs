//! Ceilings on the sizes kiln reads from files and flags, checked before anything is allocated.
//!
//! A training run reads configs, checkpoints, shards and flags it did not write. A size in them
//! (a vocabulary, a layer count, the token count in a shard's `meta.json`, a sequence length) is
//! untrusted until it has passed a [`Limit`]: a named ceiling, generous enough for real models,
//! that a user who needs more raises with an environment variable (`KILN_LIMIT_<NAME>`). Products
//! of sizes are checked in `u128`, so they cannot wrap before the check.
//!
//! The ceilings on what several crates read (a vocabulary, a context, a JSON or TOML file read
//! whole) live here, so that one variable raises them everywhere; each crate's own ceilings sit
//! in its `limits` module.

use std::io::Read;
use std::path::Path;

use crate::StoreError;

/// Vocabulary size: `vocab_size` of a model config or a shard folder's `meta.json`, a tokenizer
/// vocabulary to train, type vocabularies and class counts of a model. 2^24 = 16.7M ids, 64×
/// the largest vocabularies in use (Gemma's 256K).
pub const VOCAB: Limit = Limit::new("VOCAB", 1 << 24);

/// Context length: a model's `block_size` / `max_position_embeddings`, a dataset's window
/// (`seq_len`). 2^20 = 1M positions, 8× the longest contexts of current open models.
pub const CONTEXT: Limit = Limit::new("CONTEXT", 1 << 20);

/// Bytes of a JSON or TOML file read whole: a model's `config.json`, a safetensors index, a
/// shard folder's `meta.json`, a checkpoint's manifest and state, a run config. 64 MiB; real
/// ones are kilobytes (a `meta.json` listing half a million shards is the largest).
pub const TEXT_FILE_BYTES: Limit = Limit::new("TEXT_FILE_BYTES", 64 << 20);

/// A size that is too large, or whose arithmetic overflowed, with what it measures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} is {value}, above kiln's ceiling of {max} (raise it with {env}=N if this is intended)"
)]
pub struct LimitError {
    /// What the size measures, e.g. "the vocabulary size".
    pub what: String,
    /// The size that was asked for (saturated at `u128::MAX`).
    pub value: u128,
    /// The ceiling in force.
    pub max: u64,
    /// The environment variable that raises the ceiling.
    pub env: String,
}

/// A named ceiling on one kind of size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Its name in `KILN_LIMIT_<NAME>`, upper case.
    pub name: &'static str,
    /// The ceiling when the environment does not set one.
    pub default: u64,
}

impl Limit {
    /// A ceiling named `name` (upper case, used in `KILN_LIMIT_<NAME>`) of `default`.
    pub const fn new(name: &'static str, default: u64) -> Self {
        Self { name, default }
    }

    /// The environment variable that overrides this ceiling.
    pub fn env(&self) -> String {
        format!("KILN_LIMIT_{}", self.name)
    }

    /// The ceiling in force: `KILN_LIMIT_<NAME>` when it holds a number, else the default.
    pub fn max(&self) -> u64 {
        std::env::var(self.env())
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(self.default)
    }

    /// `value` as a `usize`, if it is at most the ceiling; `what` names it in the error.
    pub fn check(&self, what: &str, value: impl Into<u128>) -> Result<usize, LimitError> {
        let value = value.into();
        let max = self.max();
        match usize::try_from(value) {
            Ok(v) if value <= u128::from(max) => Ok(v),
            _ => Err(LimitError {
                what: what.to_string(),
                value,
                max,
                env: self.env(),
            }),
        }
    }

    /// The product of `factors` (e.g. rows × columns), if it is at most the ceiling. The product
    /// is taken in `u128` and saturates, so it cannot wrap around to a small number.
    pub fn check_product(&self, what: &str, factors: &[u64]) -> Result<usize, LimitError> {
        let product = factors
            .iter()
            .try_fold(1u128, |acc, &f| acc.checked_mul(u128::from(f)))
            .unwrap_or(u128::MAX);
        self.check(what, product)
    }
}

/// The bytes of `path`, if it is a regular file ([`files::regular_file`](crate::files::regular_file):
/// a device or a pipe is refused before it is opened) holding at most `limit` bytes. Reading
/// stops one byte past the ceiling, so neither a lying size nor a file growing while it is read
/// can exhaust memory.
pub fn read_bounded(path: &Path, limit: &Limit) -> Result<Vec<u8>, StoreError> {
    let (file, _) = crate::files::open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(limit.max().saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| StoreError::io(path, e))?;
    limit.check(
        &format!("the size of {} in bytes", path.display()),
        bytes.len() as u64,
    )?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: Limit = Limit::new("KILN_BASE_UNIT_TEST", 1000);

    #[test]
    fn sizes_at_or_below_the_ceiling_pass_and_above_it_fail_with_the_name() {
        assert_eq!(TEST.check("rows", 1000u64), Ok(1000));
        let err = TEST.check("rows", 1001u64).unwrap_err();
        assert_eq!(err.value, 1001);
        let message = err.to_string();
        assert!(message.contains("rows is 1001"), "{message}");
        assert!(
            message.contains("KILN_LIMIT_KILN_BASE_UNIT_TEST"),
            "{message}"
        );
    }

    #[test]
    fn a_bounded_read_stops_past_the_ceiling() {
        let dir = std::env::temp_dir().join(format!("kiln-base-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = Limit::new("KILN_BASE_UNIT_TEST_BYTES", 4);
        std::fs::write(dir.join("ok"), b"1234").unwrap();
        std::fs::write(dir.join("big"), b"12345").unwrap();
        assert_eq!(read_bounded(&dir.join("ok"), &small).unwrap(), b"1234");
        let err = read_bounded(&dir.join("big"), &small).unwrap_err();
        assert!(
            matches!(err, StoreError::Limit(ref l) if l.value == 5),
            "{err}"
        );
        // /dev/zero never ends: the read stops at the ceiling.
        if Path::new("/dev/zero").exists() {
            assert!(read_bounded(Path::new("/dev/zero"), &small).is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn products_cannot_wrap_past_the_check() {
        assert_eq!(TEST.check_product("cells", &[10, 100]), Ok(1000));
        // u64::MAX * 2 would wrap to u64::MAX - 1 in u64 arithmetic; in u128 it is refused.
        assert!(TEST.check_product("cells", &[u64::MAX, 2]).is_err());
        let saturated = TEST.check_product("cells", &[u64::MAX, u64::MAX, u64::MAX]);
        assert_eq!(saturated.unwrap_err().value, u128::MAX);
    }
}
