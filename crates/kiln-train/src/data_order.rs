//! The order in which the loop reads a dataset: a seeded shuffle per epoch (kiln-base's
//! version-stable generator), so the position in the data is two numbers (epoch, batch) that a
//! checkpoint can hold and a resumed run can continue from exactly.

use kiln_base::seed;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Where the loop is in its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    /// Completed passes over the dataset.
    pub epoch: usize,
    /// Batches already read in the current epoch.
    pub batch: usize,
}

/// Batches of `batch_size` indices in `0..len`, reshuffled every epoch from `(seed, epoch)`.
/// The incomplete last batch of an epoch is dropped, so every batch has the same size.
#[derive(Clone, Debug)]
pub struct DataOrder {
    len: usize,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    epoch_order: Option<(usize, Vec<usize>)>,
}

impl DataOrder {
    /// An order over a dataset of `len` items; `None` when it holds less than one batch.
    pub fn new(len: usize, batch_size: usize, seed: u64, shuffle: bool) -> Option<Self> {
        (batch_size > 0 && len >= batch_size).then_some(Self {
            len,
            batch_size,
            seed,
            shuffle,
            epoch_order: None,
        })
    }

    /// Full batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.len / self.batch_size
    }

    /// The position after `batches` batches from the start.
    pub fn position_after(&self, batches: usize) -> DataPosition {
        DataPosition {
            epoch: batches / self.batches_per_epoch(),
            batch: batches % self.batches_per_epoch(),
        }
    }

    /// The indices of the batch at `position`, which then moves on by one batch (to the next
    /// epoch after the last full batch, so a changed epoch means one just ended). A position
    /// past the end of an epoch (one this order never gives) is an error.
    pub fn next_batch(&mut self, position: &mut DataPosition) -> Result<Vec<usize>> {
        let per_epoch = self.batches_per_epoch();
        let next_epoch = position.epoch.checked_add(1);
        let (Some(next_epoch), true) = (next_epoch, position.batch < per_epoch) else {
            return Err(TrainError::Data(format!(
                "data position {position:?} is outside this order ({per_epoch} batches of {} per epoch)",
                self.batch_size
            )));
        };
        let (start, size) = (position.batch * self.batch_size, self.batch_size);
        let indices = self.order(position.epoch)[start..start + size].to_vec();
        position.batch += 1;
        if position.batch == per_epoch {
            position.epoch = next_epoch;
            position.batch = 0;
        }
        Ok(indices)
    }

    fn order(&mut self, epoch: usize) -> &[usize] {
        if self.epoch_order.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut order: Vec<usize> = (0..self.len).collect();
            if self.shuffle {
                order.shuffle(&mut seed::rng(seed::mix(self.seed, epoch as u64)));
            }
            self.epoch_order = Some((epoch, order));
        }
        &self.epoch_order.as_ref().expect("just set").1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_visits_each_index_once_and_epochs_differ() {
        let mut order = DataOrder::new(10, 3, 7, true).unwrap();
        let mut pos = DataPosition::default();
        let epoch0: Vec<usize> = (0..3)
            .flat_map(|_| order.next_batch(&mut pos).unwrap())
            .collect();
        let mut sorted = epoch0.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 9, "9 distinct indices, the 10th dropped");
        let epoch1: Vec<usize> = (0..3)
            .flat_map(|_| order.next_batch(&mut pos).unwrap())
            .collect();
        assert_eq!(pos, DataPosition { epoch: 2, batch: 0 });
        assert_ne!(epoch0, epoch1);
    }

    #[test]
    fn a_fresh_order_continues_from_a_saved_position() {
        let mut a = DataOrder::new(50, 4, 1, true).unwrap();
        let mut pos = DataPosition::default();
        for _ in 0..17 {
            a.next_batch(&mut pos).unwrap();
        }
        let saved = pos;
        let next_a = a.next_batch(&mut pos).unwrap();
        let mut b = DataOrder::new(50, 4, 1, true).unwrap();
        let mut pos_b = saved;
        assert_eq!(b.next_batch(&mut pos_b).unwrap(), next_a);
    }

    #[test]
    fn positions_outside_the_order_are_errors_and_positions_follow_from_batch_counts() {
        let mut order = DataOrder::new(10, 3, 7, true).unwrap();
        assert_eq!(order.position_after(7), DataPosition { epoch: 2, batch: 1 });
        for mut bad in [
            DataPosition { epoch: 0, batch: 3 },
            DataPosition {
                epoch: usize::MAX,
                batch: 2,
            },
        ] {
            assert!(order.next_batch(&mut bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn too_small_datasets_are_refused() {
        assert!(DataOrder::new(3, 4, 0, true).is_none());
        assert!(DataOrder::new(3, 0, 0, true).is_none());
    }
}
