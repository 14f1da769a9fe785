//! A Burn `Dataset` and `Batcher` pair, behind one type that the loop can index.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::Device;

use crate::error::{Result, TrainError};

type MakeBatch<B> = dyn Fn(&[usize], &Device) -> Result<B> + Send + Sync;

/// Builds batches of type `B` from indices into a dataset.
#[derive(Clone)]
pub struct BatchSource<B> {
    len: usize,
    make: Arc<MakeBatch<B>>,
    fingerprint: Option<String>,
}

impl<B> BatchSource<B> {
    /// Wraps any Burn dataset of items `I` and a batcher from `I` to `B`.
    pub fn new<I, D, T>(dataset: D, batcher: T) -> Self
    where
        D: Dataset<I> + 'static,
        T: Batcher<I, B> + 'static,
        I: 'static,
    {
        let len = dataset.len();
        let make = move |indices: &[usize], device: &Device| {
            let items = indices
                .iter()
                .map(|&i| {
                    dataset
                        .get(i)
                        .map_err(|e| TrainError::Data(format!("item {i}: {e}")))
                })
                .collect::<Result<Vec<I>>>()?;
            Ok(batcher.batch(items, device))
        };
        Self {
            len,
            make: Arc::new(make),
            fingerprint: None,
        }
    }

    /// This source with a fingerprint of its content (a hash of the token stream, of the
    /// shards' checksums, of the tokenizer): checkpoints record it, and a resume on data whose
    /// fingerprint differs is refused (`TrainerConfig::allow_data_change` allows it on
    /// purpose). Without one, only the number of items is compared.
    pub fn with_fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// The fingerprint given with [`with_fingerprint`](Self::with_fingerprint).
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Items in the dataset.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the dataset is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The batch of the items at `indices`, on `device`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<B> {
        (self.make)(indices, device)
    }
}
