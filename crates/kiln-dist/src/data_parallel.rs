//! The pieces of data parallelism, each a call the training loop makes (PyTorch DDP's
//! semantics, Li et al. 2020):
//!
//! - [`DataParallel::check_and_broadcast`]: at the start, every rank must hold the same model
//!   (names, shapes, dtypes: an all-gathered fingerprint, the first difference named), and
//!   rank 0's initial weights become everyone's.
//! - [`DataParallel::all_reduce_gradients`]: after the backward passes, the ranks' gradients are
//!   summed in buckets of `bucket_mb`, in f32 or with half-precision traffic. A parameter that
//!   has a gradient on some ranks only counts as zero on the others (DDP's unused parameters).
//!   [`DataParallel::all_reduce_micro_batches`] takes each micro-batch's gradients apart, for
//!   the same bits as one process accumulating whatever the layout.
//! - ZeRO-1 ([`DataParallel::owned_gradients`], [`DataParallel::share_updated`]): each
//!   parameter has one owner; a rank steps only its own parameters (Burn's `ModuleOptimizer`
//!   leaves a parameter without gradient untouched and keeps no state for it), then every owner
//!   broadcasts what it updated.
//!
//! Gradients and parameters cross to the host as one flat buffer ([`flat`](crate::flat)).
//! Burn 0.22.1's autodiff has no per-parameter hook inside the backward pass, so buckets are
//! reduced after it, not overlapped with it (see `docs/distributed.md`).

use burn::module::{Module, ParamId};
use burn::optim::GradientsParams;

use crate::communicator::ReduceOp;
use crate::config::{DataParallelConfig, ReduceDtype};
use crate::error::{DistError, Result};
use crate::flat::{Layout, put_grads, read_params, take_grads, write_params};
use crate::ordered;
use crate::process_group::ProcessGroup;
use crate::ring;

/// Data parallelism over a process group, for one model.
#[derive(Clone, Debug)]
pub struct DataParallel {
    group: ProcessGroup,
    config: DataParallelConfig,
    /// Every parameter: what the ranks check and rank 0 broadcasts at the start.
    layout: Layout,
    /// The parameters that train: what gradients, ZeRO-1's shards and its updates move. With a
    /// frozen base (LoRA) only the adapters' gradients cross the network.
    trainable: Layout,
    /// The rank that owns each trainable parameter (ZeRO-1), in `trainable` order.
    owners: Vec<usize>,
}

impl DataParallel {
    /// Data parallelism for `model` (its layout is taken here; every rank must pass the same
    /// model, which [`check_and_broadcast`](Self::check_and_broadcast) verifies).
    pub fn new<M: Module>(
        group: ProcessGroup,
        config: DataParallelConfig,
        model: &M,
    ) -> Result<Self> {
        config.validate()?;
        let layout = Layout::of(model);
        let trainable = Layout::trainable(model);
        let owners = balance(&trainable, group.size());
        Ok(Self {
            group,
            config,
            layout,
            trainable,
            owners,
        })
    }

    /// The group.
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// The settings.
    pub fn config(&self) -> &DataParallelConfig {
        &self.config
    }

    /// Checks that every rank holds the same model, then gives every rank rank 0's weights.
    pub fn check_and_broadcast<M: Module>(&self, model: M) -> Result<M> {
        self.check_same_model()?;
        if self.group.size() == 1 {
            return Ok(model);
        }
        let mut values = read_params(&model, &self.layout)?;
        self.group.broadcast_f32(&mut values, 0)?;
        Ok(write_params(model, &self.layout, &values, |_| true))
    }

    fn check_same_model(&self) -> Result<()> {
        let lines = self.layout.describe();
        let all = self.group.all_gather_vec(lines.join("\n").as_bytes())?;
        for (rank, theirs) in all.iter().enumerate().skip(1) {
            if theirs != &all[0] {
                let (ours, theirs) = (
                    String::from_utf8_lossy(&all[0]).into_owned(),
                    String::from_utf8_lossy(theirs).into_owned(),
                );
                let difference = ours
                    .lines()
                    .map(Some)
                    .chain(std::iter::repeat(None))
                    .zip(theirs.lines().map(Some).chain(std::iter::repeat(None)))
                    .take(ours.lines().count().max(theirs.lines().count()))
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| {
                        format!(
                            "rank 0 has `{}`, rank {rank} has `{}`",
                            a.unwrap_or("nothing more"),
                            b.unwrap_or("nothing more")
                        )
                    })
                    .unwrap_or_default();
                return Err(DistError::ModelMismatch { rank, difference });
            }
        }
        Ok(())
    }

    /// The sum of every rank's gradients, on every rank.
    pub fn all_reduce_gradients<M: Module>(
        &self,
        model: &M,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        self.all_reduce_micro_batches(model, vec![grads])
    }

    /// The sum of every rank's gradients of each of its micro-batches (in order), on every
    /// rank (on its owner's only under ZeRO-2), added in (rank, micro-batch) order in f32: what
    /// [`exact_accumulation`](DataParallelConfig::exact_accumulation) hands over. One
    /// micro-batch's gradients per rank is [`all_reduce_gradients`](Self::all_reduce_gradients).
    pub fn all_reduce_micro_batches<M: Module>(
        &self,
        model: &M,
        mut micro_batches: Vec<GradientsParams>,
    ) -> Result<GradientsParams> {
        let parts = micro_batches.len();
        if self.group.size() == 1
            && parts == 1
            && let Some(grads) = micro_batches.pop()
        {
            return Ok(grads);
        }
        let mut taken = Vec::with_capacity(parts);
        let mut last = None;
        for mut grads in micro_batches {
            taken.push(take_grads(model, &self.trainable, &mut grads)?);
            last = Some(grads);
        }
        let Some(mut grads) = last else {
            return Err(DistError::InvalidArgument(
                "no micro-batch gradients to reduce".into(),
            ));
        };
        let present: Vec<bool> = (0..self.trainable.slots.len())
            .map(|i| taken.iter().any(|(_, present)| present[i]))
            .collect();
        let len = self.trainable.len;
        let mut values: Vec<f32> = taken.into_iter().flat_map(|(v, _)| v).collect();
        if self.group.size() == 1 {
            let sum = ordered::all_reduce_sum_parts(&self.group, &values, parts)?;
            put_grads(model, &self.trainable, &sum, &present, &mut grads);
            return Ok(grads);
        }
        let mut anywhere: Vec<f32> = present.iter().map(|&p| f32::from(u8::from(p))).collect();
        self.group.all_reduce_f32(&mut anywhere, ReduceOp::Max)?;
        let anywhere: Vec<bool> = anywhere.iter().map(|&p| p > 0.0).collect();
        if self.shards_gradients() {
            let (sum, kept) = self.reduce_to_owners(&values, parts, &anywhere)?;
            put_grads(model, &self.trainable, &sum, &kept, &mut grads);
            return Ok(grads);
        }
        let sum = match self.config.reduce_dtype {
            // In (rank, micro-batch) order, as accumulation sums micro-batches: any number of
            // ranks is one process accumulating, bit for bit.
            ReduceDtype::F32 if parts == 1 => {
                for bucket in values.chunks_mut(self.config.bucket_elements()) {
                    ordered::all_reduce_sum(&self.group, bucket)?;
                }
                values
            }
            ReduceDtype::F32 => {
                let mut sum = vec![0.0f32; len];
                let bucket = self.config.bucket_elements();
                for start in (0..len).step_by(bucket.max(1)) {
                    let end = (start + bucket).min(len);
                    let piece: Vec<f32> = (0..parts)
                        .flat_map(|p| values[p * len + start..p * len + end].iter().copied())
                        .collect();
                    let reduced = ordered::all_reduce_sum_parts(&self.group, &piece, parts)?;
                    sum[start..end].copy_from_slice(&reduced);
                }
                sum
            }
            // Half-precision traffic is approximate anyway: the parts are added here first.
            dtype => {
                let mut sum =
                    ordered::all_reduce_sum_parts(&ProcessGroup::single(), &values, parts)?;
                values.clear();
                for bucket in sum.chunks_mut(self.config.bucket_elements()) {
                    ring::all_reduce(&self.group, bucket, ReduceOp::Sum, dtype)?;
                }
                sum
            }
        };
        put_grads(model, &self.trainable, &sum, &anywhere, &mut grads);
        Ok(grads)
    }

    /// Whether this rank steps the parameter `id`, and so keeps its optimizer state: every
    /// trainable parameter without ZeRO-1, its own ones with. What a resumed run keeps of a
    /// checkpoint's optimizer state when the number of ranks changed.
    pub fn steps(&self, id: ParamId) -> bool {
        let rank = self.group.rank();
        let sharded = self.shards_optimizer();
        self.trainable
            .slots
            .iter()
            .zip(&self.owners)
            .any(|(slot, &owner)| slot.id == id && (!sharded || owner == rank))
    }

    /// The owner map: every trainable parameter's id and the rank that owns it (steps it and
    /// keeps its optimizer state under ZeRO-1 and 2), in module order. Checkpoints record it.
    pub fn owner_map(&self) -> Vec<(u64, usize)> {
        self.trainable
            .slots
            .iter()
            .zip(&self.owners)
            .map(|(slot, &owner)| (slot.id.val(), owner))
            .collect()
    }

    /// Whether ZeRO-1 or 2 shards the optimizer state.
    pub fn shards_optimizer(&self) -> bool {
        self.config.zero_stage >= 1 && self.group.size() > 1
    }

    /// Whether the loop must hand each micro-batch's gradients over apart
    /// ([`all_reduce_micro_batches`](Self::all_reduce_micro_batches)):
    /// [`exact_accumulation`](DataParallelConfig::exact_accumulation) in f32 on several ranks.
    pub fn keeps_micro_batches(&self) -> bool {
        self.config.exact_accumulation
            && self.config.reduce_dtype == ReduceDtype::F32
            && self.group.size() > 1
    }

    /// Whether ZeRO-2 shards the reduced gradients: each rank keeps its own parameters' only.
    pub fn shards_gradients(&self) -> bool {
        self.config.zero_stage == 2 && self.group.size() > 1
    }

    /// Where `owner`'s parameters sit in the flat buffer of the trainable ones.
    fn owned_ranges(&self, owner: usize) -> Vec<std::ops::Range<usize>> {
        self.trainable
            .slots
            .iter()
            .zip(&self.owners)
            .filter(|(_, o)| **o == owner)
            .map(|(s, _)| s.offset..s.offset + s.len)
            .collect()
    }

    /// ZeRO-2's reduction: each owner receives every rank's gradients (of each micro-batch,
    /// `parts` of them in `values`) of the parameters it owns and sums them in (rank,
    /// micro-batch) order (as [`ordered`] does, so the sums are ZeRO-1's and one process's
    /// bits); the other gradients are dropped. `anywhere` marks the parameters with a gradient
    /// on some rank. Returns the flat gradients (this rank's parameters' summed) and which to
    /// keep.
    fn reduce_to_owners(
        &self,
        values: &[f32],
        parts: usize,
        anywhere: &[bool],
    ) -> Result<(Vec<f32>, Vec<bool>)> {
        let rank = self.group.rank();
        let total = self.trainable.len;
        let mine = self.owned_ranges(rank);
        let len: usize = mine.iter().map(|r| r.len()).sum();
        let sum = ordered::sum_at_owners(&self.group, len, parts, |owner| {
            let ranges = self.owned_ranges(owner);
            (0..parts)
                .flat_map(|p| {
                    ranges
                        .iter()
                        .flat_map(move |r| values[p * total + r.start..p * total + r.end].iter())
                })
                .copied()
                .collect()
        })?;
        let mut out = vec![0.0f32; total];
        let mut at = 0;
        for range in mine {
            let end = at + range.len();
            out[range].copy_from_slice(&sum[at..end]);
            at = end;
        }
        let kept = anywhere
            .iter()
            .zip(&self.owners)
            .map(|(&a, &owner)| a && owner == rank)
            .collect();
        Ok((out, kept))
    }

    /// ZeRO-1: only the gradients of the parameters this rank owns (all of them without ZeRO).
    pub fn owned_gradients<M: Module>(
        &self,
        model: &M,
        mut grads: GradientsParams,
    ) -> Result<GradientsParams> {
        if !self.shards_optimizer() {
            return Ok(grads);
        }
        let (values, present) = take_grads(model, &self.trainable, &mut grads)?;
        let rank = self.group.rank();
        let mine: Vec<bool> = present
            .iter()
            .zip(&self.owners)
            .map(|(&p, &owner)| p && owner == rank)
            .collect();
        put_grads(model, &self.trainable, &values, &mine, &mut grads);
        Ok(grads)
    }

    /// ZeRO-1: every owner broadcasts the parameters it updated; returns the model with
    /// everyone's updates (the model itself without ZeRO).
    pub fn share_updated<M: Module>(&self, model: M) -> Result<M> {
        if !self.shards_optimizer() {
            return Ok(model);
        }
        let mut values = read_params(&model, &self.trainable)?;
        for owner in 0..self.group.size() {
            let slots = self.owned_ranges(owner);
            let mut packed: Vec<f32> = slots
                .iter()
                .flat_map(|r| values[r.clone()].to_vec())
                .collect();
            self.group.broadcast_f32(&mut packed, owner)?;
            let mut at = 0;
            for range in slots {
                let len = range.len();
                values[range].copy_from_slice(&packed[at..at + len]);
                at += len;
            }
        }
        let rank = self.group.rank();
        Ok(write_params(model, &self.trainable, &values, |i| {
            self.owners[i] != rank
        }))
    }

    /// Parameters (elements) whose optimizer state this rank keeps: all of them without ZeRO.
    pub fn owned_elements(&self) -> usize {
        if !self.shards_optimizer() {
            return self.trainable.len;
        }
        let rank = self.group.rank();
        self.trainable
            .slots
            .iter()
            .zip(&self.owners)
            .filter(|(_, o)| **o == rank)
            .map(|(s, _)| s.len)
            .sum()
    }

    /// The parameter elements that train (all of the model's unless some are frozen): what a
    /// gradient all-reduce moves.
    pub fn total_elements(&self) -> usize {
        self.trainable.len
    }

    /// All parameter elements of the model, frozen ones included.
    pub fn model_elements(&self) -> usize {
        self.layout.len
    }
}

/// Each parameter to the rank with the fewest elements so far, in visiting order (ties to the
/// lower rank): deterministic, so every rank computes the same owners.
fn balance(layout: &Layout, ranks: usize) -> Vec<usize> {
    let mut load = vec![0usize; ranks.max(1)];
    layout
        .slots
        .iter()
        .map(|slot| {
            let rank = (0..load.len())
                .min_by_key(|&r| (load[r], r))
                .expect("one rank");
            load[rank] += slot.len;
            rank
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flat::Slot;
    use burn::module::ParamId;
    use burn::tensor::DType;

    fn layout(sizes: &[usize]) -> Layout {
        let mut offset = 0;
        let slots = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let slot = Slot {
                    id: ParamId::from(i as u64),
                    path: format!("p{i}"),
                    shape: vec![len],
                    dtype: DType::F32,
                    trainable: true,
                    offset,
                    len,
                };
                offset += len;
                slot
            })
            .collect();
        Layout {
            by_visit: (0..sizes.len()).map(Some).collect(),
            slots,
            len: offset,
        }
    }

    #[test]
    fn owners_balance_the_elements() {
        let sizes = [100, 10, 10, 90, 50, 50, 5, 5];
        let owners = balance(&layout(&sizes), 3);
        assert_eq!(owners, balance(&layout(&sizes), 3), "deterministic");
        let mut load = [0usize; 3];
        for (size, owner) in sizes.iter().zip(&owners) {
            load[*owner] += size;
        }
        let (most, least) = (load.iter().max().unwrap(), load.iter().min().unwrap());
        assert!(most - least <= 100, "loads {load:?}");
        assert!(load.iter().all(|&l| l > 0));
        assert_eq!(balance(&layout(&sizes), 1), vec![0; sizes.len()]);
    }
}
