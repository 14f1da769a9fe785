//! Unstructured magnitude pruning (Han et al. 2015): zero the weights of smallest |w|, per layer
//! or globally across layers.

use std::cmp::Ordering;

use burn::module::Module;

use crate::error::{CompressError, Result};
use crate::mask::PruningMasks;
use crate::params::{NamedParam, ParamFilter, read_params};

/// How much to prune.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// A fraction of the weights in `[0, 1]`; `round(fraction · n)` weights are pruned (as
    /// `torch.nn.utils.prune` does).
    Fraction(f64),
    /// An exact number of weights.
    Count(usize),
}

impl Amount {
    /// The number of weights to prune out of `total`.
    pub fn count(self, total: usize) -> Result<usize> {
        match self {
            Amount::Fraction(f) if f.is_finite() && (0.0..=1.0).contains(&f) => {
                Ok((f * total as f64).round() as usize)
            }
            Amount::Fraction(f) => Err(CompressError::InvalidAmount(format!(
                "fraction {f} is outside [0, 1]"
            ))),
            Amount::Count(c) if c <= total => Ok(c),
            Amount::Count(c) => Err(CompressError::InvalidAmount(format!(
                "count {c} is more than the {total} weights there are"
            ))),
        }
    }
}

/// Whether the amount applies to each layer separately or to all of them together.
#[derive(burn::config::Config, Debug, Copy, PartialEq, Eq)]
pub enum PruningScope {
    /// Every parameter loses the same fraction.
    Layerwise,
    /// One threshold across all parameters: layers with many small weights lose more.
    Global,
}

/// Orders by |w|, then by position, so exactly `k` weights fall below the cut even with ties.
fn by_magnitude(a: &(f32, usize, usize), b: &(f32, usize, usize)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
}

/// The `k` smallest-magnitude entries over `params`, as (param index, element index).
pub(crate) fn smallest(params: &[&NamedParam], k: usize) -> Vec<(usize, usize)> {
    let mut all: Vec<(f32, usize, usize)> = params
        .iter()
        .enumerate()
        .flat_map(|(p, param)| {
            param
                .values
                .iter()
                .enumerate()
                .map(move |(i, v)| (v.abs(), p, i))
        })
        .collect();
    if k == 0 {
        return Vec::new();
    }
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, by_magnitude);
    }
    all.truncate(k);
    all.into_iter().map(|(_, p, i)| (p, i)).collect()
}

/// Masks that prune `amount` of the smallest-magnitude weights among the parameters passing
/// `filter` (see [`linear_weights`](crate::linear_weights)), per layer or globally.
///
/// Weights already zero count as smallest, so pruning a pruned model again only adds zeros.
pub fn magnitude_masks<M: Module>(
    model: &M,
    filter: &ParamFilter<'_>,
    amount: Amount,
    scope: PruningScope,
) -> Result<PruningMasks> {
    let params = read_params(model, filter);
    if params.is_empty() {
        return Err(CompressError::EmptyModel(
            "no parameter matches the filter".into(),
        ));
    }
    let mut keep: Vec<Vec<bool>> = params.iter().map(|p| vec![true; p.values.len()]).collect();
    match scope {
        PruningScope::Layerwise => {
            for (p, param) in params.iter().enumerate() {
                let k = amount.count(param.values.len())?;
                for (_, i) in smallest(&[param], k) {
                    keep[p][i] = false;
                }
            }
        }
        PruningScope::Global => {
            let total = params.iter().map(|p| p.values.len()).sum();
            let k = amount.count(total)?;
            let refs: Vec<&NamedParam> = params.iter().collect();
            for (p, i) in smallest(&refs, k) {
                keep[p][i] = false;
            }
        }
    }
    let mut masks = PruningMasks::new();
    for (param, keep) in params.iter().zip(keep) {
        masks.insert(&param.path, &param.shape, &keep)?;
    }
    Ok(masks)
}
