//! Packed causal language modeling (GPT-2/GPT-3 style): documents concatenated with a
//! separator token into one stream, cut into windows of `seq_len + 1` tokens. A window gives
//! `seq_len` inputs and the `seq_len` next tokens as targets; consecutive windows share one
//! token, so every token of the stream is a target exactly once. No padding is ever needed.

use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::DataError;
use crate::batch::{IGNORE_INDEX, LmBatch};
use crate::limits::CONTEXT;
use crate::shards::{ShardCheck, ShardMeta, TokenShards};

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone)]
enum Stream {
    Memory(Arc<Vec<u32>>),
    Mapped(Arc<TokenShards>),
}

impl Stream {
    fn len(&self) -> u64 {
        match self {
            Self::Memory(v) => v.len() as u64,
            Self::Mapped(s) => s.len(),
        }
    }
}

/// Windows of `seq_len + 1` tokens over a packed token stream, in memory or memory-mapped
/// shards. Items are the windows' token ids; [`LmBatcher`] turns them into [`LmBatch`]es.
#[derive(Debug, Clone)]
pub struct PackedLmDataset {
    stream: Stream,
    seq_len: usize,
    windows: usize,
    meta: Option<ShardMeta>,
}

impl PackedLmDataset {
    /// The `train` split of a directory written by `examples/prepare_data.rs`, verified
    /// ([`ShardCheck::Full`]).
    pub fn open(dir: impl AsRef<Path>, seq_len: usize) -> Result<Self, DataError> {
        Self::open_split(dir, "train", seq_len)
    }

    /// A split (`train`, `val`) of a directory written by `examples/prepare_data.rs`, verified
    /// ([`ShardCheck::Full`]).
    pub fn open_split(
        dir: impl AsRef<Path>,
        split: &str,
        seq_len: usize,
    ) -> Result<Self, DataError> {
        Self::open_split_with(dir, split, seq_len, ShardCheck::Full)
    }

    /// [`PackedLmDataset::open_split`] with a choice of how much of the shards to verify.
    pub fn open_split_with(
        dir: impl AsRef<Path>,
        split: &str,
        seq_len: usize,
        check: ShardCheck,
    ) -> Result<Self, DataError> {
        // The window size first: a bad one is an error before any shard is read.
        CONTEXT.check("the sequence length", seq_len as u64)?;
        let (shards, meta) = TokenShards::open_with(dir, split, check)?;
        let mut ds = Self::new(Stream::Mapped(Arc::new(shards)), seq_len)?;
        ds.meta = Some(meta);
        Ok(ds)
    }

    /// A fingerprint of the token stream, for a checkpoint to recognise its data by: the
    /// SHA-256 of the tokens held in memory, or of the shard folder's `meta.json` (which
    /// holds every shard's SHA-256; version-1 folders without them are fingerprinted by their
    /// names and token counts only).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        match (&self.stream, &self.meta) {
            (_, Some(meta)) => {
                hash.update(b"shards ");
                hash.update(serde_json::to_vec(meta).expect("meta.json serializes"));
            }
            (Stream::Memory(tokens), None) => {
                hash.update(b"tokens ");
                for t in tokens.iter() {
                    hash.update(t.to_le_bytes());
                }
            }
            (Stream::Mapped(_), None) => unreachable!("a mapped stream comes with its meta.json"),
        }
        hex(&hash.finalize())
    }

    /// Windows over a token stream held in memory.
    pub fn from_tokens(tokens: Vec<u32>, seq_len: usize) -> Result<Self, DataError> {
        Self::new(Stream::Memory(Arc::new(tokens)), seq_len)
    }

    /// Packs tokenized documents, each followed by `separator`.
    pub fn from_documents<D: AsRef<[u32]>>(
        documents: &[D],
        separator: u32,
        seq_len: usize,
    ) -> Result<Self, DataError> {
        let mut tokens = Vec::with_capacity(documents.iter().map(|d| d.as_ref().len() + 1).sum());
        for d in documents {
            tokens.extend_from_slice(d.as_ref());
            tokens.push(separator);
        }
        Self::from_tokens(tokens, seq_len)
    }

    fn new(stream: Stream, seq_len: usize) -> Result<Self, DataError> {
        if seq_len == 0 {
            return Err(DataError::InvalidConfig("seq_len must be positive".into()));
        }
        // Bounded, so `seq_len + 1` and the window offsets below cannot wrap.
        CONTEXT.check("the sequence length", seq_len as u64)?;
        let len = stream.len();
        if len <= seq_len as u64 {
            return Err(DataError::NotEnoughTokens {
                tokens: usize::try_from(len).unwrap_or(usize::MAX),
                needed: seq_len + 1,
            });
        }
        let windows = usize::try_from((len - 1) / seq_len as u64).map_err(|_| {
            DataError::InvalidConfig(format!("{len} tokens are too many for this platform"))
        })?;
        Ok(Self {
            stream,
            seq_len,
            windows,
            meta: None,
        })
    }

    /// Inputs per window.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Tokens in the stream.
    pub fn tokens(&self) -> u64 {
        self.stream.len()
    }

    /// The shard directory's `meta.json` (vocabulary size, separator), when opened from one.
    pub fn meta(&self) -> Option<&ShardMeta> {
        self.meta.as_ref()
    }

    /// The window at `index`, or an error past the end.
    pub fn window(&self, index: usize) -> Result<Vec<u32>, DataError> {
        if index >= self.windows {
            return Err(DataError::IndexOutOfRange {
                index,
                len: self.windows,
            });
        }
        // index < windows = (len - 1) / seq_len, so start + n <= len: no overflow.
        let start = index as u64 * self.seq_len as u64;
        let n = self.seq_len + 1;
        let mut out = Vec::with_capacity(n);
        match &self.stream {
            Stream::Memory(v) => out.extend_from_slice(&v[start as usize..start as usize + n]),
            Stream::Mapped(s) => s.read_into(start, n, &mut out)?,
        }
        Ok(out)
    }
}

impl Dataset<Vec<u32>> for PackedLmDataset {
    fn get(&self, index: usize) -> Result<Vec<u32>, DatasetError> {
        self.window(index).map_err(DatasetError::new)
    }

    fn len(&self) -> usize {
        self.windows
    }
}

/// Turns token windows into next-token batches: inputs are a window but its last token,
/// targets the window shifted by one. Windows of different lengths are right-padded (input 0,
/// target [`IGNORE_INDEX`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct LmBatcher;

impl Batcher<Vec<u32>, LmBatch> for LmBatcher {
    fn batch(&self, items: Vec<Vec<u32>>, device: &Device) -> LmBatch {
        next_token_batch(items.iter().map(|w| (w.as_slice(), 0)), device)
    }
}

/// Next-token batches of token rows: inputs a row but its last token, targets the row shifted
/// by one, kept from target position `first_target − 1` on (the token at `first_target` is the
/// first predicted; 0 keeps them all), [`IGNORE_INDEX`] before it and over the right padding
/// of rows shorter than the longest (input 0).
pub(crate) fn next_token_batch<'a>(
    rows: impl ExactSizeIterator<Item = (&'a [u32], usize)> + Clone,
    device: &Device,
) -> LmBatch {
    let batch = rows.len();
    let seq = rows
        .clone()
        .map(|(w, _)| w.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let mut inputs = vec![0i64; batch * seq];
    let mut targets = vec![IGNORE_INDEX; batch * seq];
    for (b, (w, first_target)) in rows.enumerate() {
        for t in 0..w.len().saturating_sub(1) {
            inputs[b * seq + t] = w[t] as i64;
            if t + 1 >= first_target {
                targets[b * seq + t] = w[t + 1] as i64;
            }
        }
    }
    LmBatch {
        inputs: Tensor::<2, Int>::from_data(TensorData::new(inputs, [batch, seq]), device),
        targets: Tensor::<2, Int>::from_data(TensorData::new(targets, [batch, seq]), device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn windows_cover_every_token_once_as_a_target() {
        let ds = PackedLmDataset::from_documents(&[vec![1, 2, 3], vec![4, 5]], 0, 2).unwrap();
        // stream 1 2 3 0 4 5 0 (7 tokens) → windows [1 2 3] [3 0 4] [4 5 0]
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.get(1).unwrap(), vec![3, 0, 4]);
        assert!(ds.get(3).is_err());
        let batch = LmBatcher.batch(
            vec![ds.get(0).unwrap(), ds.get(2).unwrap()],
            &Device::flex(),
        );
        let inputs: Vec<i64> = batch
            .inputs
            .to_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        let targets: Vec<i64> = batch
            .targets
            .to_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        assert_eq!(inputs, vec![1, 2, 4, 5]);
        assert_eq!(targets, vec![2, 3, 5, 0]);
        assert_eq!(batch.target_tokens(), 4);
    }

    #[test]
    fn too_little_data_is_an_error() {
        assert_eq!(
            PackedLmDataset::from_tokens(vec![1, 2], 2).unwrap_err(),
            DataError::NotEnoughTokens {
                tokens: 2,
                needed: 3
            }
        );
        assert!(PackedLmDataset::from_tokens(vec![1, 2], 0).is_err());
    }

    /// Issue 14: `train_gpt --block 18446744073709551615` made `seq_len + 1` wrap to 0, so a
    /// dataset of no windows was accepted (and training divided by its length).
    #[test]
    fn sequence_length_of_u64_max_is_refused() {
        for seq_len in [usize::MAX, usize::MAX - 1, (1 << 20) + 1] {
            let err = PackedLmDataset::from_tokens(vec![1, 2, 3], seq_len).unwrap_err();
            assert!(matches!(err, DataError::Limit(_)), "{seq_len}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let err = PackedLmDataset::open(dir.path(), usize::MAX).unwrap_err();
        assert!(matches!(err, DataError::Limit(_)), "{err}");
    }

    #[test]
    fn ragged_windows_are_padded_without_loss() {
        let batch = LmBatcher.batch(vec![vec![7, 8, 9], vec![5, 6]], &Device::flex());
        let targets: Vec<i64> = batch
            .targets
            .to_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        assert_eq!(targets, vec![8, 9, 6, IGNORE_INDEX]);
        assert_eq!(batch.target_tokens(), 3);
    }

    proptest! {
        /// Whatever the stream and window size, the windows' targets are exactly the stream
        /// minus its first token (and the unusable tail).
        #[test]
        fn targets_tile_the_stream(tokens in proptest::collection::vec(0u32..50, 2..200), seq in 1usize..20) {
            prop_assume!(tokens.len() > seq);
            let ds = PackedLmDataset::from_tokens(tokens.clone(), seq).unwrap();
            let mut targets = Vec::new();
            for i in 0..ds.len() {
                let w = ds.get(i).unwrap();
                prop_assert_eq!(w.len(), seq + 1);
                targets.extend_from_slice(&w[1..]);
            }
            prop_assert_eq!(&targets[..], &tokens[1..1 + ds.len() * seq]);
        }
    }
}
