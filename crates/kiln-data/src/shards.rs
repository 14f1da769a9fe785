//! Token shards: a corpus as flat little-endian `u16` (vocabularies up to 65,536) or `u32`
//! files, memory-mapped when read so corpora larger than RAM train without loading, plus a
//! `meta.json` that lists the shards of each split.
//!
//! Layout of a directory written by [`ShardWriter`] and `examples/prepare_data.rs`:
//!
//! ```text
//! DIR/meta.json          {"format":"kiln-token-shards","version":1,"dtype":"u16",
//!                         "vocab_size":8192,"separator":0,
//!                         "splits":{"train":[{"file":"train-00000.bin","tokens":...}],...}}
//! DIR/train-00000.bin    tokens, documents separated by the separator id
//! DIR/val-00000.bin
//! DIR/tokenizer.json     the tokenizer (to decode samples)
//! DIR/stats.json         what preparation read, removed and wrote
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::DataError;

/// The format name in `meta.json`.
pub const SHARD_FORMAT: &str = "kiln-token-shards";
/// The file listing the shards.
pub const META_FILE: &str = "meta.json";

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
}

/// One shard file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name, relative to the directory.
    pub file: String,
    /// Tokens in the file.
    pub tokens: u64,
}

/// The contents of `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Always [`SHARD_FORMAT`].
    pub format: String,
    /// Format version, 1.
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
            version: 1,
            dtype: TokenDtype::for_vocab(vocab_size),
            vocab_size,
            separator,
            splits: BTreeMap::new(),
        }
    }

    /// Reads `DIR/meta.json`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = dir.as_ref().join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let meta: Self = serde_json::from_str(&text).map_err(|e| bad(&path, e))?;
        if meta.format != SHARD_FORMAT || meta.version != 1 {
            return Err(bad(
                &path,
                format!("format {} version {}", meta.format, meta.version),
            ));
        }
        Ok(meta)
    }

    /// Writes `DIR/meta.json`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), DataError> {
        let path = dir.as_ref().join(META_FILE);
        let json = serde_json::to_string_pretty(self).map_err(|e| bad(&path, e))?;
        std::fs::write(&path, json).map_err(|e| DataError::io(&path, e))
    }

    /// Total tokens of a split (0 if absent).
    pub fn tokens(&self, split: &str) -> u64 {
        self.splits
            .get(split)
            .map_or(0, |s| s.iter().map(|i| i.tokens).sum())
    }
}

fn bad(path: impl AsRef<Path>, message: impl std::fmt::Display) -> DataError {
    DataError::BadShards {
        path: path.as_ref().display().to_string(),
        message: message.to_string(),
    }
}

/// Writes one split's tokens into shard files of at most `max_tokens` tokens each.
#[derive(Debug)]
pub struct ShardWriter {
    dir: PathBuf,
    split: String,
    dtype: TokenDtype,
    vocab_size: usize,
    max_tokens: u64,
    file: Option<BufWriter<File>>,
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
            let file = self.file.as_mut().expect("a shard is open");
            let res = match self.dtype {
                TokenDtype::U16 => file.write_all(&(id as u16).to_le_bytes()),
                TokenDtype::U32 => file.write_all(&id.to_le_bytes()),
            };
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
        let file = File::create(&path).map_err(|e| DataError::io(&path, e))?;
        self.file = Some(BufWriter::with_capacity(1 << 20, file));
        self.shards.push(ShardInfo {
            file: name,
            tokens: 0,
        });
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        if let (Some(mut f), Some(s)) = (self.file.take(), self.shards.last()) {
            f.flush()
                .map_err(|e| DataError::io(self.dir.join(&s.file), e))?;
        }
        Ok(())
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.tokens).sum()
    }

    /// Flushes and returns the shards written.
    pub fn finish(mut self) -> Result<Vec<ShardInfo>, DataError> {
        self.flush()?;
        Ok(std::mem::take(&mut self.shards))
    }
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
    /// Maps the shards of `split` listed in `DIR/meta.json`, checking every file's size.
    pub fn open(dir: impl AsRef<Path>, split: &str) -> Result<(Self, ShardMeta), DataError> {
        let dir = dir.as_ref();
        let meta = ShardMeta::load(dir)?;
        let infos = meta
            .splits
            .get(split)
            .ok_or_else(|| bad(dir.join(META_FILE), format!("no split {split:?}")))?;
        let width = meta.dtype.width() as u64;
        let (mut maps, mut starts, mut total) = (Vec::new(), vec![0u64], 0u64);
        for info in infos.iter().filter(|i| i.tokens > 0) {
            let path = dir.join(&info.file);
            let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
            let len = file.metadata().map_err(|e| DataError::io(&path, e))?.len();
            if len != info.tokens * width {
                return Err(bad(
                    &path,
                    format!("{len} bytes, expected {} tokens × {width}", info.tokens),
                ));
            }
            // SAFETY: the map is read-only; shard files are written once by `ShardWriter` and
            // must not be modified while a dataset reads them (documented in docs/data.md).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?;
            total += info.tokens;
            maps.push(map);
            starts.push(total);
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

    /// Appends tokens `start..start + count` to `out`, across shard boundaries. Panics past
    /// the end (callers check bounds).
    pub fn read_into(&self, start: u64, count: usize, out: &mut Vec<u32>) {
        assert!(
            start + count as u64 <= self.len(),
            "token range past the end"
        );
        let (mut pos, end) = (start, start + count as u64);
        while pos < end {
            // The shard holding `pos`: the last whose start is <= pos.
            let shard = self.starts.partition_point(|&s| s <= pos) - 1;
            let local = (pos - self.starts[shard]) as usize;
            let take = ((end - pos) as usize).min((self.starts[shard + 1] - pos) as usize);
            let w = self.dtype.width();
            let bytes = &self.maps[shard][local * w..(local + take) * w];
            match self.dtype {
                TokenDtype::U16 => out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32),
                ),
                TokenDtype::U32 => out.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
            }
            pos += take as u64;
        }
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
            t.read_into(2, 7, &mut out);
            assert_eq!(out, ids[2..9]);
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
}
