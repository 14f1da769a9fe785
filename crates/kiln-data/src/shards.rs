//! Token shards: a corpus as flat little-endian `u16` (vocabularies up to 65,536) or `u32`
//! files, memory-mapped when read so corpora larger than RAM train without loading, plus a
//! `meta.json` that lists the shards of each split with their SHA-256 checksums.
//!
//! Layout of a directory written by [`ShardWriter`] and `examples/prepare_data.rs`:
//!
//! ```text
//! DIR/meta.json          {"format":"kiln-token-shards","version":2,"dtype":"u16",
//!                         "vocab_size":8192,"separator":0,
//!                         "splits":{"train":[{"file":"train-00000.bin","tokens":...,
//!                                             "sha256":"..."}],...}}
//! DIR/train-00000.bin    tokens, documents separated by the separator id
//! DIR/val-00000.bin
//! DIR/tokenizer.json     the tokenizer (to decode samples)
//! DIR/stats.json         what preparation read, removed and wrote
//! ```
//!
//! `meta.json` is untrusted input: every number in it passes a ceiling ([`crate::limits`])
//! before a file is opened, sizes are compared in `u128`, and a shard's `file` must name a file
//! inside the folder (one plain name; no absolute path, no `..`, no symlink leading out).
//! [`TokenShards::open`] then reads every shard once, checking its checksum and that every id is
//! below `vocab_size` ([`ShardCheck::Full`]); [`ShardCheck::Fast`] skips that read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::DataError;
use crate::limits::{SPLIT_TOKENS, TEXT_FILE_BYTES, VOCAB};

/// The format name in `meta.json`.
pub const SHARD_FORMAT: &str = "kiln-token-shards";
/// The file listing the shards.
pub const META_FILE: &str = "meta.json";
/// The `meta.json` version written here: 2 added the shards' SHA-256 checksums. Version 1
/// (no checksums) still opens with [`ShardCheck::Fast`].
pub const SHARD_VERSION: u32 = 2;

/// How token ids are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// Two bytes per token.
    U16,
    /// Four bytes per token.
    U32,
}

impl TokenDtype {
    /// The narrowest type for ids below `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }

    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }

    /// The ids of little-endian `bytes` (a whole number of tokens).
    fn ids(self, bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
        bytes.chunks_exact(self.width()).map(move |b| match self {
            Self::U16 => u16::from_le_bytes([b[0], b[1]]) as u32,
            Self::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        })
    }
}

/// One shard file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name, inside the directory (one plain name).
    pub file: String,
    /// Tokens in the file.
    pub tokens: u64,
    /// SHA-256 of the file's bytes, lowercase hex (version 2; absent in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The contents of `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Always [`SHARD_FORMAT`].
    pub format: String,
    /// Format version: [`SHARD_VERSION`], or 1 for folders written before checksums.
    pub version: u32,
    /// Storage type of every shard.
    pub dtype: TokenDtype,
    /// Size of the tokenizer's vocabulary (every id is below it).
    pub vocab_size: usize,
    /// The id placed after every document, if any.
    pub separator: Option<u32>,
    /// Shards of each split (`train`, `val`), in order.
    pub splits: BTreeMap<String, Vec<ShardInfo>>,
}

impl ShardMeta {
    /// A description with no shards yet.
    pub fn new(vocab_size: usize, separator: Option<u32>) -> Self {
        Self {
            format: SHARD_FORMAT.into(),
            version: SHARD_VERSION,
            dtype: TokenDtype::for_vocab(vocab_size),
            vocab_size,
            separator,
            splits: BTreeMap::new(),
        }
    }

    /// Reads and checks `DIR/meta.json` ([`ShardMeta::validate`]).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = dir.as_ref().join(META_FILE);
        let bytes = kiln_base::limits::read_bounded(&path, &TEXT_FILE_BYTES)?;
        let meta: Self = serde_json::from_slice(&bytes).map_err(|e| bad(&path, e))?;
        meta.validate().map_err(|e| match e {
            DataError::BadShards { message, .. } => bad(&path, message),
            other => other,
        })?;
        Ok(meta)
    }

    /// Checks what a reader relies on: the format and version, the vocabulary size and token
    /// counts under their ceilings ([`crate::limits`]) and consistent with the dtype and the
    /// separator, every `file` one plain name inside the folder, and checksums on every shard
    /// of a version-2 description.
    pub fn validate(&self) -> Result<(), DataError> {
        let here = META_FILE;
        if self.format != SHARD_FORMAT || !(1..=SHARD_VERSION).contains(&self.version) {
            return Err(bad(
                here,
                format!(
                    "format {:?} version {}, expected {SHARD_FORMAT:?} version 1 to {SHARD_VERSION}",
                    self.format, self.version
                ),
            ));
        }
        VOCAB.check("vocab_size in meta.json", self.vocab_size as u64)?;
        if self.vocab_size == 0 || (self.dtype == TokenDtype::U16 && self.vocab_size > 1 << 16) {
            return Err(bad(
                here,
                format!(
                    "vocab_size {} does not fit dtype {:?}",
                    self.vocab_size, self.dtype
                ),
            ));
        }
        if let Some(sep) = self.separator.filter(|&s| s as usize >= self.vocab_size) {
            return Err(bad(
                here,
                format!(
                    "separator {sep} is outside the vocabulary of {}",
                    self.vocab_size
                ),
            ));
        }
        for (split, shards) in &self.splits {
            let mut total = 0u128;
            for info in shards {
                check_file_name(&info.file)?;
                total += u128::from(info.tokens);
                SPLIT_TOKENS.check(&format!("the tokens of split {split:?}"), total)?;
                match &info.sha256 {
                    Some(h) if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        return Err(bad(
                            here,
                            format!("{}: sha256 {h:?} is not 64 hex digits", info.file),
                        ));
                    }
                    None if self.version >= 2 => {
                        return Err(bad(here, format!("{}: no sha256", info.file)));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Writes `DIR/meta.json`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), DataError> {
        let path = dir.as_ref().join(META_FILE);
        let json = serde_json::to_string_pretty(self).map_err(|e| bad(&path, e))?;
        Ok(kiln_base::store::write_atomic(&path, json.as_bytes())?)
    }

    /// Total tokens of a split (0 if absent; saturating).
    pub fn tokens(&self, split: &str) -> u64 {
        self.splits.get(split).map_or(0, |s| {
            s.iter().fold(0u64, |acc, i| acc.saturating_add(i.tokens))
        })
    }
}

/// A shard's name must be one plain file name: no separator, no `..`, not absolute.
fn check_file_name(file: &str) -> Result<(), DataError> {
    let mut parts = Path::new(file).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !file.contains(['/', '\\']) => Ok(()),
        _ => Err(bad(
            META_FILE,
            format!("shard file {file:?} is not a plain file name inside the folder"),
        )),
    }
}

fn bad(path: impl AsRef<Path>, message: impl std::fmt::Display) -> DataError {
    DataError::BadShards {
        path: path.as_ref().display().to_string(),
        message: message.to_string(),
    }
}

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes one split's tokens into shard files of at most `max_tokens` tokens each, hashing
/// each file's bytes as they are written.
#[derive(Debug)]
pub struct ShardWriter {
    dir: PathBuf,
    split: String,
    dtype: TokenDtype,
    vocab_size: usize,
    max_tokens: u64,
    file: Option<(BufWriter<File>, Sha256)>,
    shards: Vec<ShardInfo>,
}

impl ShardWriter {
    /// A writer of `DIR/{split}-NNNNN.bin` files for ids below `vocab_size`.
    pub fn new(
        dir: impl AsRef<Path>,
        split: &str,
        vocab_size: usize,
        max_tokens: u64,
    ) -> Result<Self, DataError> {
        if max_tokens == 0 {
            return Err(DataError::InvalidConfig(
                "max_tokens per shard must be positive".into(),
            ));
        }
        VOCAB.check("the vocabulary size", vocab_size as u64)?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        Ok(Self {
            dir,
            split: split.into(),
            dtype: TokenDtype::for_vocab(vocab_size),
            vocab_size,
            max_tokens,
            file: None,
            shards: Vec::new(),
        })
    }

    /// Appends tokens; an id outside the vocabulary is an error.
    pub fn write(&mut self, ids: &[u32]) -> Result<(), DataError> {
        for &id in ids {
            if id as usize >= self.vocab_size {
                return Err(DataError::UnknownId(id as usize));
            }
            let full = self
                .shards
                .last()
                .is_none_or(|s| s.tokens >= self.max_tokens);
            if self.file.is_none() || full {
                self.start_shard()?;
            }
            let (file, hasher) = self.file.as_mut().expect("a shard is open");
            let (le16, le32) = ((id as u16).to_le_bytes(), id.to_le_bytes());
            let bytes: &[u8] = match self.dtype {
                TokenDtype::U16 => &le16,
                TokenDtype::U32 => &le32,
            };
            hasher.update(bytes);
            let res = file.write_all(bytes);
            let shard = self.shards.last_mut().expect("a shard is open");
            res.map_err(|e| DataError::io(self.dir.join(&shard.file), e))?;
            shard.tokens += 1;
        }
        Ok(())
    }

    fn start_shard(&mut self) -> Result<(), DataError> {
        self.flush()?;
        let name = format!("{}-{:05}.bin", self.split, self.shards.len());
        let path = self.dir.join(&name);
        let file = kiln_base::files::create(&path)?;
        self.file = Some((BufWriter::with_capacity(1 << 20, file), Sha256::new()));
        self.shards.push(ShardInfo {
            file: name,
            tokens: 0,
            sha256: None,
        });
        Ok(())
    }

    /// Flushes the open shard and records its checksum.
    fn flush(&mut self) -> Result<(), DataError> {
        if let (Some((mut f, hasher)), Some(s)) = (self.file.take(), self.shards.last_mut()) {
            f.flush()
                .map_err(|e| DataError::io(self.dir.join(&s.file), e))?;
            s.sha256 = Some(hex(&hasher.finalize()));
        }
        Ok(())
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.tokens).sum()
    }

    /// Flushes and returns the shards written, with their checksums.
    pub fn finish(mut self) -> Result<Vec<ShardInfo>, DataError> {
        self.flush()?;
        Ok(std::mem::take(&mut self.shards))
    }
}

/// How much of a shard folder [`TokenShards::open_with`] verifies before training reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShardCheck {
    /// Everything [`ShardCheck::Fast`] checks, then one read of every shard: its SHA-256 against
    /// `meta.json` (a corrupted or replaced file is [`DataError::ChecksumMismatch`]) and every
    /// id against `vocab_size` (an id outside it is [`DataError::OutOfVocabulary`], naming the
    /// shard and offset). Shards are hashed in parallel; with SHA instructions (x86 SHA-NI, ARMv8)
    /// this runs at about a gigabyte per second and core (docs/data.md has the measurements). A folder without checksums (`meta.json` version 1)
    /// is refused.
    #[default]
    Full,
    /// Only `meta.json` and the files' sizes: opening costs no read of the data. Corruption
    /// inside the vocabulary trains silently; an id outside it is still refused by the model's
    /// input checks when a batch holds it. For folders verified once already, or version-1
    /// folders that cannot be prepared again.
    Fast,
}

/// The shards of one split, memory-mapped, read as one long token sequence.
#[derive(Debug)]
pub struct TokenShards {
    maps: Vec<Mmap>,
    /// `starts[i]` is the position of shard `i`'s first token; one extra entry holds the total.
    starts: Vec<u64>,
    dtype: TokenDtype,
}

impl TokenShards {
    /// Maps the shards of `split` listed in `DIR/meta.json` and verifies them
    /// ([`ShardCheck::Full`]).
    pub fn open(dir: impl AsRef<Path>, split: &str) -> Result<(Self, ShardMeta), DataError> {
        Self::open_with(dir, split, ShardCheck::Full)
    }

    /// Maps the shards of `split` listed in `DIR/meta.json`, checking `meta.json`, each file's
    /// place (inside `DIR`, symlinks resolved) and size, and, with [`ShardCheck::Full`], each
    /// file's checksum and ids.
    pub fn open_with(
        dir: impl AsRef<Path>,
        split: &str,
        check: ShardCheck,
    ) -> Result<(Self, ShardMeta), DataError> {
        let dir = dir.as_ref();
        let meta = ShardMeta::load(dir)?;
        if check == ShardCheck::Full && meta.version < 2 {
            return Err(bad(
                dir.join(META_FILE),
                format!(
                    "version {} has no checksums to verify: prepare the folder again (prepare_data \
                     --input {dir}/documents.jsonl --tokenizer {dir}/tokenizer.json --dedup none \
                     --output NEW_DIR tokenizes the kept documents again), or open it with \
                     ShardCheck::Fast to skip verification",
                    meta.version,
                    dir = dir.display()
                ),
            ));
        }
        let infos = meta
            .splits
            .get(split)
            .ok_or_else(|| bad(dir.join(META_FILE), format!("no split {split:?}")))?;
        let root = dir.canonicalize().map_err(|e| DataError::io(dir, e))?;
        let width = meta.dtype.width() as u64;
        let (mut maps, mut starts, mut total) = (Vec::new(), vec![0u64], 0u64);
        let mut opened = Vec::new();
        for info in infos.iter().filter(|i| i.tokens > 0) {
            let path = dir.join(&info.file);
            let real = path.canonicalize().map_err(|e| DataError::io(&path, e))?;
            if !real.starts_with(&root) {
                return Err(bad(
                    &path,
                    format!("leads outside the folder, to {}", real.display()),
                ));
            }
            let (file, len) = kiln_base::files::open_regular(&real)?;
            // Both sides in u128: a token count near 2^64 cannot wrap to the file's size.
            if u128::from(len) != u128::from(info.tokens) * u128::from(width) {
                return Err(bad(
                    &path,
                    format!("{len} bytes, expected {} tokens × {width}", info.tokens),
                ));
            }
            // SAFETY: the map is read-only; shard files are written once by `ShardWriter` and
            // must not be modified while a dataset reads them (documented in docs/data.md).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?;
            // `validate` bounded the split's total, so this cannot overflow.
            total += info.tokens;
            maps.push(map);
            starts.push(total);
            opened.push((path, info));
        }
        if check == ShardCheck::Full {
            maps.par_iter()
                .zip(&opened)
                .try_for_each(|(map, (path, info))| verify(map, path, info, &meta))?;
        }
        Ok((
            Self {
                maps,
                starts,
                dtype: meta.dtype,
            },
            meta,
        ))
    }

    /// Total tokens.
    pub fn len(&self) -> u64 {
        *self.starts.last().expect("starts has a total")
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends tokens `start..start + count` to `out`, across shard boundaries; a range past
    /// the end is [`DataError::TokenRange`].
    pub fn read_into(&self, start: u64, count: usize, out: &mut Vec<u32>) -> Result<(), DataError> {
        let end = start
            .checked_add(count as u64)
            .filter(|&end| end <= self.len())
            .ok_or(DataError::TokenRange {
                start,
                count: count as u64,
                len: self.len(),
            })?;
        let mut pos = start;
        while pos < end {
            // The shard holding `pos`: the last whose start is <= pos.
            let shard = self.starts.partition_point(|&s| s <= pos) - 1;
            let local = (pos - self.starts[shard]) as usize;
            let take = (end.min(self.starts[shard + 1]) - pos) as usize;
            let w = self.dtype.width();
            out.extend(
                self.dtype
                    .ids(&self.maps[shard][local * w..(local + take) * w]),
            );
            pos += take as u64;
        }
        Ok(())
    }
}

/// One read of a mapped shard: its SHA-256 against `meta.json`, and every id below the
/// vocabulary size. The two are checked in the same pass, a megabyte at a time, so the bytes
/// are read from disk once.
fn verify(map: &[u8], path: &Path, info: &ShardInfo, meta: &ShardMeta) -> Result<(), DataError> {
    const CHUNK: usize = 1 << 20;
    let width = meta.dtype.width();
    let mut hasher = Sha256::new();
    let mut first_oov: Option<(u64, u32)> = None;
    for (c, chunk) in map.chunks(CHUNK).enumerate() {
        hasher.update(chunk);
        // The maximum first (a loop the compiler vectorizes), the position only if needed.
        let oov = |id: u32| id as usize >= meta.vocab_size;
        if first_oov.is_none() && meta.dtype.ids(chunk).max().is_some_and(oov) {
            first_oov = (meta.dtype.ids(chunk).enumerate())
                .find(|&(_, id)| oov(id))
                .map(|(i, id)| ((c * CHUNK / width + i) as u64, id));
        }
    }
    let actual = hex(&hasher.finalize());
    let name = || path.display().to_string();
    if let Some(expected) = info
        .sha256
        .as_ref()
        .filter(|&e| !e.eq_ignore_ascii_case(&actual))
    {
        return Err(DataError::ChecksumMismatch {
            path: name(),
            expected: expected.clone(),
            actual,
        });
    }
    match first_oov {
        Some((offset, id)) => Err(DataError::OutOfVocabulary {
            path: name(),
            offset,
            id,
            vocab_size: meta.vocab_size,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_maps_across_shard_boundaries() {
        for vocab in [300usize, 70_000] {
            let dir = tempfile::tempdir().unwrap();
            let mut w = ShardWriter::new(dir.path(), "train", vocab, 4).unwrap();
            let ids: Vec<u32> = (0..11).map(|i| (i * 97 % vocab) as u32).collect();
            w.write(&ids[..3]).unwrap();
            w.write(&ids[3..]).unwrap();
            let shards = w.finish().unwrap();
            assert_eq!(
                shards.iter().map(|s| s.tokens).collect::<Vec<_>>(),
                vec![4, 4, 3]
            );
            let mut meta = ShardMeta::new(vocab, Some(0));
            meta.splits.insert("train".into(), shards);
            meta.save(dir.path()).unwrap();
            let (t, meta) = TokenShards::open(dir.path(), "train").unwrap();
            assert_eq!(meta.dtype, TokenDtype::for_vocab(vocab));
            assert_eq!(t.len(), 11);
            let mut out = Vec::new();
            t.read_into(2, 7, &mut out).unwrap();
            assert_eq!(out, ids[2..9]);
            assert!(matches!(
                t.read_into(5, 7, &mut out),
                Err(DataError::TokenRange { len: 11, .. })
            ));
            assert!(t.read_into(u64::MAX, 2, &mut out).is_err());
        }
    }

    #[test]
    fn inconsistent_shards_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            TokenShards::open(dir.path(), "train"),
            Err(DataError::Io { .. })
        ));
        let mut w = ShardWriter::new(dir.path(), "train", 10, 100).unwrap();
        assert_eq!(w.write(&[10]), Err(DataError::UnknownId(10)));
        w.write(&[1, 2, 3]).unwrap();
        let mut meta = ShardMeta::new(10, None);
        let mut shards = w.finish().unwrap();
        shards[0].tokens = 5; // claims more than the file holds
        meta.splits.insert("train".into(), shards);
        meta.save(dir.path()).unwrap();
        assert!(matches!(
            TokenShards::open(dir.path(), "train"),
            Err(DataError::BadShards { .. })
        ));
        assert!(matches!(
            TokenShards::open(dir.path(), "val"),
            Err(DataError::BadShards { .. })
        ));
    }

    /// A folder of one `train` shard of `ids` (vocabulary `vocab`), written by `ShardWriter`.
    fn folder(ids: &[u32], vocab: usize) -> (tempfile::TempDir, ShardMeta) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(dir.path(), "train", vocab, 1 << 30).unwrap();
        w.write(ids).unwrap();
        let mut meta = ShardMeta::new(vocab, Some(0));
        meta.splits.insert("train".into(), w.finish().unwrap());
        meta.save(dir.path()).unwrap();
        (dir, meta)
    }

    /// Issue 14: `"tokens": 9223372036854775808` over an empty shard made `tokens * width`
    /// wrap to 0, so the size check passed and reads went past the map.
    #[test]
    fn meta_token_count_of_2_pow_63_over_an_empty_shard_is_refused() {
        let (dir, mut meta) = folder(&[1, 2, 3], 10);
        std::fs::write(dir.path().join("empty.bin"), b"").unwrap();
        let huge = ShardInfo {
            file: "empty.bin".into(),
            tokens: 1 << 63,
            sha256: meta.splits["train"][0].sha256.clone(),
        };
        meta.splits.insert("train".into(), vec![huge]);
        meta.save(dir.path()).unwrap();
        for check in [ShardCheck::Full, ShardCheck::Fast] {
            let err = TokenShards::open_with(dir.path(), "train", check).unwrap_err();
            assert!(
                matches!(&err, DataError::Limit(l) if l.value == 1 << 63),
                "{err}"
            );
        }
    }

    /// Issue 14: shards had no checksum, so corruption inside the vocabulary trained silently.
    #[test]
    fn corrupted_shard_fails_its_checksum_unless_fast() {
        let (dir, meta) = folder(&[1, 2, 3, 4], 10);
        let path = dir.path().join(&meta.splits["train"][0].file);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2] = 5; // id 2 → 5: still inside the vocabulary
        std::fs::write(&path, &bytes).unwrap();
        let err = TokenShards::open(dir.path(), "train").unwrap_err();
        assert!(
            matches!(&err, DataError::ChecksumMismatch { path: p, expected, .. }
                if p.ends_with("train-00000.bin")
                    && Some(expected) == meta.splits["train"][0].sha256.as_ref()),
            "{err}"
        );
        let (fast, _) = TokenShards::open_with(dir.path(), "train", ShardCheck::Fast).unwrap();
        let mut out = Vec::new();
        fast.read_into(0, 4, &mut out).unwrap();
        assert_eq!(out, vec![1, 5, 3, 4]);
    }

    /// Issue 14: an id at or above meta.json's vocabulary, appearing only as a target, panicked
    /// in Burn's gather; opening now names the shard and the offset.
    #[test]
    fn out_of_vocabulary_id_names_shard_and_offset() {
        let mut ids = vec![3u32; 3_000_000]; // several 1 MiB chunks of u32
        ids[2_500_001] = 70_000;
        let (dir, mut meta) = folder(&ids, 100_000);
        meta.vocab_size = 60_000; // the checksum still matches: only the range check can tell
        meta.save(dir.path()).unwrap();
        let err = TokenShards::open(dir.path(), "train").unwrap_err();
        assert_eq!(
            err,
            DataError::OutOfVocabulary {
                path: dir.path().join("train-00000.bin").display().to_string(),
                offset: 2_500_001,
                id: 70_000,
                vocab_size: 60_000,
            }
        );
        assert!(TokenShards::open_with(dir.path(), "train", ShardCheck::Fast).is_ok());
    }

    /// Folders written before checksums (version 1) are refused by the full check, with the
    /// way out in the message, and open in fast mode.
    #[test]
    fn version_1_meta_without_checksums_needs_fast_mode() {
        let (dir, mut meta) = folder(&[1, 2, 3], 10);
        meta.version = 1;
        meta.splits.get_mut("train").unwrap()[0].sha256 = None;
        meta.save(dir.path()).unwrap();
        let err = TokenShards::open(dir.path(), "train")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prepare the folder again") && err.contains("ShardCheck::Fast"));
        let (t, _) = TokenShards::open_with(dir.path(), "train", ShardCheck::Fast).unwrap();
        assert_eq!(t.len(), 3);
        // Version 2 without a checksum is malformed.
        meta.version = 2;
        meta.save(dir.path()).unwrap();
        assert!(matches!(
            TokenShards::open_with(dir.path(), "train", ShardCheck::Fast),
            Err(DataError::BadShards { .. })
        ));
    }

    /// Issue 14: a meta.json could point at any file (`../../etc/...`).
    #[test]
    fn meta_paths_outside_the_folder_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret.bin");
        std::fs::write(&secret, [1u8, 0, 2, 0]).unwrap();
        let (dir, meta) = folder(&[1, 2], 10);
        let checksum = meta.splits["train"][0].sha256.clone();
        std::os::unix::fs::symlink(&secret, dir.path().join("link.bin")).unwrap();
        let escape = format!(
            "../{}",
            outside.path().file_name().unwrap().to_str().unwrap()
        );
        for file in [
            "../../etc/passwd".to_string(),
            format!("{escape}/secret.bin"),
            secret.display().to_string(),
            "sub/../train-00000.bin".into(),
            "..".into(),
            ".".into(),
            "".into(),
            "link.bin".into(),
        ] {
            let mut m = meta.clone();
            m.splits.insert(
                "train".into(),
                vec![ShardInfo {
                    file: file.clone(),
                    tokens: 2,
                    sha256: checksum.clone(),
                }],
            );
            m.save(dir.path()).unwrap();
            for check in [ShardCheck::Full, ShardCheck::Fast] {
                let err = TokenShards::open_with(dir.path(), "train", check).unwrap_err();
                assert!(
                    matches!(err, DataError::BadShards { .. }),
                    "{file:?}: {err}"
                );
            }
        }
        // A symlink that stays inside the folder is fine.
        std::os::unix::fs::symlink("train-00000.bin", dir.path().join("inside.bin")).unwrap();
        let mut m = meta.clone();
        m.splits.get_mut("train").unwrap()[0].file = "inside.bin".into();
        m.save(dir.path()).unwrap();
        assert!(TokenShards::open(dir.path(), "train").is_ok());
    }

    #[test]
    fn inconsistent_vocabulary_and_separator_are_refused() {
        let (dir, meta) = folder(&[1, 2], 10);
        for m in [
            ShardMeta {
                vocab_size: 0,
                ..meta.clone()
            },
            ShardMeta {
                vocab_size: 70_000,
                ..meta.clone()
            },
            ShardMeta {
                separator: Some(10),
                ..meta.clone()
            },
            ShardMeta {
                vocab_size: 1 << 40,
                dtype: TokenDtype::U32,
                ..meta.clone()
            },
        ] {
            m.save(dir.path()).unwrap();
            assert!(TokenShards::open(dir.path(), "train").is_err(), "{m:?}");
        }
    }
}
