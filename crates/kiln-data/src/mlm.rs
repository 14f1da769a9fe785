//! BERT's masked-language-modeling data (Devlin et al. 2019, §3.1 and appendix A.1): 15% of
//! the non-special positions are chosen for prediction; of those, 80% become `[MASK]`, 10% a
//! random token and 10% stay unchanged.
//!
//! The masking is a pure function of `(seed, item index)`: it happens in [`MlmDataset::get`],
//! not in the batcher with a hidden generator, so a resumed run, any number of loader workers,
//! or a re-read of the same item sees exactly the same masks. As in the original
//! implementation the number of masked positions is `round(15% × maskable)` (at least one
//! when any position is maskable), so no sequence is without loss.

use std::collections::HashSet;

use burn::config::Config;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::DataError;
use crate::batch::{IGNORE_INDEX, MlmBatch};
use crate::hash::{SplitMix64, fmix64};
use crate::tokenizer::BertSpecialTokens;

/// Masking settings (defaults from BERT).
#[derive(Config, Debug, PartialEq)]
pub struct MlmConfig {
    /// Vocabulary size: random replacements are drawn below it.
    pub vocab_size: usize,
    /// The `[MASK]` id.
    pub mask_id: u32,
    /// Ids never masked nor drawn as random replacements (`[CLS]`, `[SEP]`, `[PAD]`, ...).
    pub special_ids: Vec<u32>,
    /// Seed of the masking; with the item index it fixes each item's masks.
    #[config(default = 0)]
    pub seed: u64,
    /// Fraction of maskable positions chosen for prediction.
    #[config(default = 0.15)]
    pub mask_probability: f64,
    /// Of the chosen, the fraction replaced by `[MASK]`.
    #[config(default = 0.8)]
    pub mask_token_fraction: f64,
    /// Of the chosen, the fraction replaced by a random token (the rest stay unchanged).
    #[config(default = 0.1)]
    pub random_token_fraction: f64,
}

impl MlmConfig {
    /// BERT's settings for a vocabulary with [`BertSpecialTokens`].
    pub fn for_bert(vocab_size: usize, special: BertSpecialTokens, seed: u64) -> Self {
        Self::new(vocab_size, special.mask, special.ids().to_vec()).with_seed(seed)
    }
}

/// One masked sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlmItem {
    /// Ids after masking.
    pub input_ids: Vec<u32>,
    /// Segment ids (all 0: items are single segments).
    pub token_type_ids: Vec<u32>,
    /// The original id at chosen positions, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
}

/// Masks the token sequences of an inner dataset.
#[derive(Debug)]
pub struct MlmDataset<D> {
    inner: D,
    config: MlmConfig,
    special: HashSet<u32>,
}

impl<D: Dataset<Vec<u32>>> MlmDataset<D> {
    /// Masks `inner`'s sequences (which should already hold `[CLS]`/`[SEP]`, see
    /// [`WithSpecialTokens`]).
    pub fn new(inner: D, config: MlmConfig) -> Result<Self, DataError> {
        let p = [
            config.mask_probability,
            config.mask_token_fraction,
            config.random_token_fraction,
        ];
        if p.iter().any(|x| !(0.0..=1.0).contains(x))
            || config.mask_token_fraction + config.random_token_fraction > 1.0
        {
            return Err(DataError::InvalidConfig(format!(
                "masking probabilities out of range: {p:?}"
            )));
        }
        if config.mask_id as usize >= config.vocab_size {
            return Err(DataError::UnknownId(config.mask_id as usize));
        }
        let special: HashSet<u32> = config
            .special_ids
            .iter()
            .copied()
            .chain([config.mask_id])
            .collect();
        if special.len() >= config.vocab_size {
            return Err(DataError::InvalidConfig(
                "no non-special token to draw".into(),
            ));
        }
        Ok(Self {
            inner,
            config,
            special,
        })
    }

    /// The masking of `ids` as item number `index`.
    pub fn mask(&self, ids: &[u32], index: usize) -> MlmItem {
        let cfg = &self.config;
        let mut rng = SplitMix64::new(fmix64(cfg.seed ^ fmix64(index as u64 ^ 0x6d6c_6d00)));
        let mut maskable: Vec<usize> = (0..ids.len())
            .filter(|&i| !self.special.contains(&ids[i]))
            .collect();
        let mut n = (cfg.mask_probability * maskable.len() as f64).round() as usize;
        if n == 0 && !maskable.is_empty() && cfg.mask_probability > 0.0 {
            n = 1;
        }
        let mut input_ids = ids.to_vec();
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        for k in 0..n {
            // Partial Fisher-Yates: position k takes a uniform pick of the rest.
            let j = k + rng.below((maskable.len() - k) as u64) as usize;
            maskable.swap(k, j);
            let pos = maskable[k];
            labels[pos] = ids[pos] as i64;
            let r = rng.unit();
            if r < cfg.mask_token_fraction {
                input_ids[pos] = cfg.mask_id;
            } else if r < cfg.mask_token_fraction + cfg.random_token_fraction {
                input_ids[pos] = loop {
                    let t = rng.below(cfg.vocab_size as u64) as u32;
                    if !self.special.contains(&t) {
                        break t;
                    }
                };
            }
        }
        MlmItem {
            token_type_ids: vec![0; ids.len()],
            input_ids,
            labels,
        }
    }
}

impl<D: Dataset<Vec<u32>>> Dataset<MlmItem> for MlmDataset<D> {
    fn get(&self, index: usize) -> Result<MlmItem, DatasetError> {
        let ids = self.inner.get(index)?;
        Ok(self.mask(&ids, index))
    }

    fn len(&self) -> usize {
        self.inner.len()
    }
}

/// Wraps every sequence of an inner dataset as `[CLS] … [SEP]`. With a
/// [`crate::PackedLmDataset`] of `seq_len = max_len - 3` (windows of `max_len - 2` tokens),
/// items are `max_len` long.
#[derive(Debug)]
pub struct WithSpecialTokens<D> {
    inner: D,
    cls: u32,
    sep: u32,
}

impl<D> WithSpecialTokens<D> {
    /// `[cls] item [sep]` for every item of `inner`.
    pub fn new(inner: D, cls: u32, sep: u32) -> Self {
        Self { inner, cls, sep }
    }
}

impl<D: Dataset<Vec<u32>>> Dataset<Vec<u32>> for WithSpecialTokens<D> {
    fn get(&self, index: usize) -> Result<Vec<u32>, DatasetError> {
        let ids = self.inner.get(index)?;
        let mut out = Vec::with_capacity(ids.len() + 2);
        out.push(self.cls);
        out.extend(ids);
        out.push(self.sep);
        Ok(out)
    }

    fn len(&self) -> usize {
        self.inner.len()
    }
}

/// Pads masked sequences to the longest of the batch into an [`MlmBatch`]. Holds no random
/// state.
#[derive(Clone, Copy, Debug)]
pub struct MlmBatcher {
    /// The `[PAD]` id.
    pub pad_id: u32,
}

impl MlmBatcher {
    /// A batcher padding with `pad_id`.
    pub fn new(pad_id: u32) -> Self {
        Self { pad_id }
    }
}

impl Batcher<MlmItem, MlmBatch> for MlmBatcher {
    fn batch(&self, items: Vec<MlmItem>, device: &Device) -> MlmBatch {
        let (b, seq) = (
            items.len(),
            items.iter().map(|i| i.input_ids.len()).max().unwrap_or(0),
        );
        let mut ids = vec![self.pad_id as i64; b * seq];
        let mut types = vec![0i64; b * seq];
        let mut padding = vec![true; b * seq];
        let mut labels = vec![IGNORE_INDEX; b * seq];
        for (r, item) in items.iter().enumerate() {
            for t in 0..item.input_ids.len() {
                let k = r * seq + t;
                ids[k] = item.input_ids[t] as i64;
                types[k] = item.token_type_ids.get(t).copied().unwrap_or(0) as i64;
                padding[k] = false;
                labels[k] = item.labels.get(t).copied().unwrap_or(IGNORE_INDEX);
            }
        }
        let int = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [b, seq]), device);
        MlmBatch {
            input_ids: int(ids),
            token_type_ids: int(types),
            padding_mask: Tensor::<2, Bool>::from_data(TensorData::new(padding, [b, seq]), device),
            labels: int(labels),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PackedLmDataset;
    use proptest::prelude::*;

    const SPECIAL: BertSpecialTokens = BertSpecialTokens {
        pad: 0,
        unk: 1,
        cls: 2,
        sep: 3,
        mask: 4,
    };

    fn dataset(seed: u64) -> MlmDataset<WithSpecialTokens<PackedLmDataset>> {
        let tokens: Vec<u32> = (0..100_000u32).map(|i| 5 + (i * 7919) % 995).collect();
        let inner = WithSpecialTokens::new(PackedLmDataset::from_tokens(tokens, 61).unwrap(), 2, 3);
        MlmDataset::new(inner, MlmConfig::for_bert(1000, SPECIAL, seed)).unwrap()
    }

    #[test]
    fn masking_is_deterministic_per_seed_and_index() {
        let (a, b, c) = (dataset(1), dataset(1), dataset(2));
        assert_eq!(a.get(5).unwrap(), b.get(5).unwrap());
        assert_ne!(a.get(5).unwrap(), c.get(5).unwrap());
        assert_ne!(a.get(5).unwrap().labels, a.get(6).unwrap().labels);
    }

    #[test]
    fn masking_follows_bert_proportions() {
        let ds = dataset(7);
        let (mut chosen, mut masked, mut random, mut kept, mut maskable) = (0, 0, 0, 0, 0);
        for i in 0..ds.len() {
            let item = ds.get(i).unwrap();
            let orig = ds.inner.get(i).unwrap();
            assert_eq!((orig[0], *orig.last().unwrap()), (2, 3));
            maskable += orig.len() - 2;
            for t in 0..orig.len() {
                if item.labels[t] == IGNORE_INDEX {
                    assert_eq!(item.input_ids[t], orig[t]);
                    continue;
                }
                assert!(t != 0 && t != orig.len() - 1, "special token masked");
                assert_eq!(item.labels[t], orig[t] as i64);
                chosen += 1;
                match item.input_ids[t] {
                    4 => masked += 1,
                    x if x == orig[t] => kept += 1,
                    x => {
                        assert!((5..1000).contains(&x));
                        random += 1
                    }
                }
            }
        }
        let frac = |x: usize| x as f64 / chosen as f64;
        assert!((chosen as f64 / maskable as f64 - 0.15).abs() < 0.01);
        assert!((frac(masked) - 0.8).abs() < 0.015, "{}", frac(masked));
        // A random draw equal to the original counts as kept (probability 1/995).
        assert!((frac(random) - 0.1).abs() < 0.012, "{}", frac(random));
        assert!((frac(kept) - 0.1).abs() < 0.012, "{}", frac(kept));
    }

    #[test]
    fn batches_pad_and_count_masked_tokens() {
        let ds = dataset(3);
        let mut short = ds.get(0).unwrap();
        short.input_ids.truncate(10);
        short.token_type_ids.truncate(10);
        short.labels.truncate(10);
        let items = vec![ds.get(1).unwrap(), short.clone()];
        let expected: usize = items
            .iter()
            .map(|i| i.labels.iter().filter(|&&l| l != IGNORE_INDEX).count())
            .sum();
        let batch = MlmBatcher::new(0).batch(items, &Device::flex());
        assert_eq!(batch.input_ids.dims(), [2, 64]);
        assert_eq!(batch.masked_tokens(), expected);
        let pad: Vec<bool> = batch.padding_mask.to_data().try_into_vec().unwrap();
        assert_eq!(pad.iter().filter(|&&p| p).count(), 54);
        let mask: Vec<i64> = batch
            .attention_mask()
            .to_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        assert_eq!(mask.iter().sum::<i64>(), 64 + 10);
    }

    #[test]
    fn bad_config_is_an_error() {
        let inner = PackedLmDataset::from_tokens(vec![5; 10], 4).unwrap();
        assert!(
            MlmDataset::new(
                inner.clone(),
                MlmConfig::new(10, 4, vec![]).with_mask_probability(2.0)
            )
            .is_err()
        );
        assert!(MlmDataset::new(inner, MlmConfig::new(4, 4, vec![])).is_err());
    }

    proptest! {
        #[test]
        fn special_tokens_are_never_masked(ids in proptest::collection::vec(0u32..12, 1..80), seed in any::<u64>()) {
            let inner = PackedLmDataset::from_tokens(vec![5; 10], 4).unwrap();
            let ds = MlmDataset::new(inner, MlmConfig::for_bert(12, SPECIAL, seed)).unwrap();
            let item = ds.mask(&ids, 0);
            for (t, &id) in ids.iter().enumerate() {
                if id < 5 {
                    prop_assert_eq!(item.labels[t], IGNORE_INDEX);
                    prop_assert_eq!(item.input_ids[t], id);
                } else if item.labels[t] != IGNORE_INDEX {
                    prop_assert!(item.input_ids[t] >= 4);
                }
            }
            let maskable = ids.iter().filter(|&&i| i >= 5).count();
            let chosen = item.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
            prop_assert_eq!(chosen, if maskable == 0 { 0 } else { ((0.15 * maskable as f64).round() as usize).max(1) });
        }
    }
}
