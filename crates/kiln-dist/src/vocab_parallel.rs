//! Megatron's vocabulary-parallel embedding and cross-entropy (Shoeybi et al. 2019, §3): under
//! tensor parallelism each of the `t` ranks holds `⌈vocab/t⌉` rows of the token embedding (and
//! of the output layer), and the loss is computed from each rank's slice of the logits without
//! gathering them. With Llama 3's 128K vocabulary the embedding and the output layer are the
//! largest tensors of a small model, and the `[tokens, vocab]` logits the largest activation.
//!
//! - The embedding: rank `r` looks up the ids in its rows `r·n..(r+1)·n` and zeros the others;
//!   `g` (an all-reduce, [`TensorParallel::reduce_from_region`]) sums the ranks' lookups.
//! - The output layer: `f` ([`TensorParallel::copy_to_region`]) then the rank's rows, giving its
//!   slice `[.., n]` of the logits.
//! - The cross-entropy: `loss = log Σ_v e^{z_v} − z_target`, with the row's max (a constant,
//!   all-reduced), `Σ e^{z − max}` over the rank's slice summed by `g`, and the target's logit
//!   (on the rank that holds it, 0 elsewhere) summed by `g`. `g`'s backward is the identity, so
//!   each rank's logits get `softmax − onehot` on its own slice: the gradient one process gets.
//!
//! The vocabulary is padded to `t·n` rows; the padding rows are zero, never looked up, and
//! hidden from the softmax, so they get no gradient and are cut off when the model is gathered.

use burn::module::Param;
use burn::tensor::{Int, Tensor};

use crate::communicator::ReduceOp;
use crate::error::Result;
use crate::tensor_parallel::TensorParallel;

/// The vocabulary split across a tensor-parallel group.
#[derive(Clone, Debug)]
pub struct VocabParallel {
    tp: TensorParallel,
    vocab: usize,
}

impl VocabParallel {
    /// A vocabulary of `vocab` tokens split across `tp`.
    pub fn new(tp: TensorParallel, vocab: usize) -> Self {
        Self { tp, vocab }
    }

    /// The tensor-parallel group.
    pub fn tensor_parallel(&self) -> &TensorParallel {
        &self.tp
    }

    /// The whole vocabulary's size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Rows per rank, `⌈vocab/t⌉` (the last rank's tail is padding).
    pub fn rows(&self) -> usize {
        self.vocab.div_ceil(self.tp.size())
    }

    /// The first token id of this rank's rows.
    pub fn start(&self) -> usize {
        self.tp.rank() * self.rows()
    }

    /// This rank's rows of a `[vocab, d]` parameter (`dim` 0) or columns of a `[d, vocab]` one
    /// (`dim` 1), zero-padded past the vocabulary; same id and trainability.
    pub fn shard<const D: usize>(&self, param: Param<Tensor<D>>, dim: usize) -> Param<Tensor<D>> {
        let (start, rows, vocab) = (self.start(), self.rows(), self.vocab);
        crate::tensor_parallel::map_param(param, |t| {
            let real = vocab.saturating_sub(start).min(rows);
            let mine = t.clone().narrow(dim, start.min(vocab), real);
            if real == rows {
                return mine;
            }
            let mut pad = t.dims();
            pad[dim] = rows - real;
            Tensor::cat(vec![mine, Tensor::zeros(pad, &t.device())], dim)
        })
    }

    /// The token embeddings of `ids` `[batch, seq]` from this rank's rows `weight`
    /// `[rows, d]`: every rank computes its part, and the all-reduce sums them.
    pub fn embed(&self, weight: Tensor<2>, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let d = weight.dims()[1];
        let (start, rows) = (self.start() as i64, self.rows() as i64);
        let local = ids - start;
        let outside = local
            .clone()
            .lower_elem(0)
            .bool_or(local.clone().greater_equal_elem(rows));
        let local = local.mask_fill(outside.clone(), 0).reshape([batch * seq]);
        let found = weight.select(0, local).reshape([batch, seq, d]);
        let keep = outside.bool_not().float().unsqueeze_dim::<3>(2);
        self.tp.reduce_from_region(found * keep)
    }

    /// Mean cross-entropy from this rank's slice `logits` `[tokens, rows]` of the logits,
    /// against `targets` `[tokens]` (whole-vocabulary ids), over the tokens whose target is not
    /// `ignore_index` (0 when none is kept); the same on every rank of the group.
    pub fn cross_entropy(
        &self,
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
        ignore_index: Option<i64>,
    ) -> Result<Tensor<1>> {
        let [tokens, rows] = logits.dims();
        let logits = self.hide_padding(logits);
        // The row's max over the whole vocabulary: a constant of the backward pass.
        let local_max = logits.clone().detach().max_dim(1);
        let max = self
            .tp
            .group()
            .all_reduce_tensor(local_max, ReduceOp::Max)?;
        let exp_sum = self
            .tp
            .reduce_from_region((logits.clone() - max.clone()).exp().sum_dim(1));
        let (start, targets_2d) = (self.start() as i64, targets.clone().reshape([tokens, 1]));
        let local = targets_2d.clone() - start;
        let here = local
            .clone()
            .greater_equal_elem(0)
            .bool_and(local.clone().lower_elem(rows as i64));
        let index = local.mask_fill(here.clone().bool_not(), 0);
        let picked = logits.gather(1, index) * here.float();
        let target = self.tp.reduce_from_region(picked);
        let per_token = (exp_sum.log() + max - target).reshape([tokens]);
        Ok(match ignore_index {
            None => per_token.mean(),
            Some(ignore) => {
                let kept = targets.not_equal_elem(ignore).float();
                let count = kept.clone().sum().clamp_min(1.0);
                (per_token * kept).sum() / count
            }
        })
    }

    /// How many `targets` `[tokens]` are the argmax of the whole vocabulary's logits, from this
    /// rank's slice `[tokens, rows]` (targets equal to `ignore_index` not counted); the same on
    /// every rank.
    pub fn correct(
        &self,
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
        ignore_index: Option<i64>,
    ) -> Result<Tensor<1, Int>> {
        let logits = self.hide_padding(logits.detach());
        let group = self.tp.group();
        let local_max = logits.clone().max_dim(1);
        let max = group.all_reduce_tensor(local_max.clone(), ReduceOp::Max)?;
        // The first index of the max, as one process's argmax takes it: the lowest global id
        // among the ranks whose slice reaches it.
        let local_arg = logits.argmax(1).float() + self.start() as f64;
        let reaches = local_max.equal(max);
        let candidate = local_arg.mask_fill(reaches.bool_not(), f64::INFINITY);
        let argmax = group.all_reduce_tensor(candidate, ReduceOp::Min)?;
        let [tokens] = targets.dims();
        let hit = argmax.reshape([tokens]).equal(targets.clone().float());
        let hit = match ignore_index {
            Some(ignore) => hit.bool_and(targets.not_equal_elem(ignore)),
            None => hit,
        };
        Ok(hit.int().sum())
    }

    /// The logits of the padding columns past the vocabulary set to −∞ (no probability).
    fn hide_padding(&self, logits: Tensor<2>) -> Tensor<2> {
        let [tokens, rows] = logits.dims();
        let real = self.vocab.saturating_sub(self.start()).min(rows);
        if real == rows {
            return logits;
        }
        let columns = Tensor::<1, Int>::arange(0..rows as i64, &logits.device());
        let padding = columns
            .greater_equal_elem(real as i64)
            .reshape([1, rows])
            .expand([tokens, rows]);
        logits.mask_fill(padding, f32::NEG_INFINITY)
    }
}
