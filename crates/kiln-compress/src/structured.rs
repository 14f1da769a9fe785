//! Structured pruning (Li et al. 2017; Michel et al. 2019 for heads): whole rows or columns,
//! FFN neurons and attention heads, ranked by the L1 or L2 norm of their weights.
//!
//! Masks zero a structure and keep the shapes; [`remove_ffn_neurons`] removes the neurons for
//! real, shrinking the `up`/`gate` columns and the `down` rows of every block, so the model has
//! fewer parameters and FLOPs and still runs with kiln-model's `Gpt::forward`.
//!
//! Attention heads can be masked ([`head_masks`]) or removed for real ([`remove_heads`]):
//! kiln-model's attention takes each block's head width from its query projection, so a block
//! can hold fewer heads. (A `GptConfig` has one `n_head`, so such a model cannot be saved yet:
//! see `docs/compression.md`.)

use burn::module::Module;
use burn::tensor::Tensor;
use kiln_model::gpt::Gpt;

use crate::error::{CompressError, Result};
use crate::magnitude::Amount;
use crate::mask::PruningMasks;
use crate::params::{ParamFilter, read_params};

/// Which norm ranks a structure.
#[derive(burn::config::Config, Debug, Copy, PartialEq, Eq)]
pub enum Norm {
    /// Sum of absolute values.
    L1,
    /// Euclidean norm.
    L2,
}

impl Norm {
    fn of(self, values: impl Iterator<Item = f32>) -> f64 {
        match self {
            Norm::L1 => values.map(|v| v.abs() as f64).sum(),
            Norm::L2 => values.map(|v| (v as f64) * (v as f64)).sum::<f64>().sqrt(),
        }
    }
}

/// Rows or columns of a `[rows, cols]` weight.
#[derive(burn::config::Config, Debug, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Whole rows (for a Burn `Linear`, `[d_in, d_out]`: input features).
    Rows,
    /// Whole columns (output features / neurons).
    Columns,
}

/// The indices of the `k` lowest scores (ties: the earlier index).
fn lowest(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// Masks that prune `amount` of the rows or columns of every rank-2 parameter passing `filter`,
/// lowest norm first.
pub fn structured_masks<M: Module>(
    model: &M,
    filter: &ParamFilter<'_>,
    axis: Axis,
    norm: Norm,
    amount: Amount,
) -> Result<PruningMasks> {
    let params = read_params(model, &|path, shape| {
        shape.len() == 2 && filter(path, shape)
    });
    if params.is_empty() {
        return Err(CompressError::EmptyModel(
            "no rank-2 parameter matches the filter".into(),
        ));
    }
    let mut masks = PruningMasks::new();
    for param in &params {
        let (rows, cols) = (param.shape[0], param.shape[1]);
        let v = &param.values;
        let scores: Vec<f64> = match axis {
            Axis::Rows => (0..rows)
                .map(|r| norm.of(v[r * cols..(r + 1) * cols].iter().copied()))
                .collect(),
            Axis::Columns => (0..cols)
                .map(|c| norm.of((0..rows).map(|r| v[r * cols + c])))
                .collect(),
        };
        let k = amount.count(scores.len())?;
        let mut keep = vec![true; rows * cols];
        for s in lowest(&scores, k) {
            match axis {
                Axis::Rows => keep[s * cols..(s + 1) * cols].fill(false),
                Axis::Columns => (0..rows).for_each(|r| keep[r * cols + s] = false),
            }
        }
        masks.insert(&param.path, &param.shape, &keep)?;
    }
    Ok(masks)
}

fn host(t: Tensor<2>) -> (Vec<f32>, [usize; 2]) {
    let dims = t.dims();
    (
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default(),
        dims,
    )
}

/// The importance of every FFN neuron, per block: `‖up[:, j]‖ · ‖down[j, :]‖` (with the gate's
/// column folded into the input norm for SwiGLU). The product ranks a neuron low when either its
/// input weights or its output weights are small, since either makes its contribution small.
pub fn ffn_neuron_scores(gpt: &Gpt, norm: Norm) -> Vec<Vec<f64>> {
    gpt.blocks
        .iter()
        .map(|block| {
            let (up, [d_model, d_ff]) = host(block.ffn.up.weight.val());
            let gate = block.ffn.gate.as_ref().map(|g| host(g.weight.val()).0);
            let (down, _) = host(block.ffn.down.weight.val());
            (0..d_ff)
                .map(|j| {
                    let input = (0..d_model).map(|r| up[r * d_ff + j]);
                    let input = match &gate {
                        Some(g) => norm.of(input.chain((0..d_model).map(|r| g[r * d_ff + j]))),
                        None => norm.of(input),
                    };
                    input * norm.of(down[j * d_model..(j + 1) * d_model].iter().copied())
                })
                .collect()
        })
        .collect()
}

/// The FFN neurons to keep in every block (sorted indices), after removing `fraction` of each
/// block's neurons with the lowest [`ffn_neuron_scores`]. The same count goes from every block,
/// so the model keeps one `d_ff` and stays a `GptConfig`-shaped model.
pub fn select_ffn_neurons(gpt: &Gpt, fraction: f64, norm: Norm) -> Result<Vec<Vec<usize>>> {
    if gpt.blocks.is_empty() {
        return Err(CompressError::EmptyModel("the model has no blocks".into()));
    }
    gpt.blocks
        .iter()
        .zip(ffn_neuron_scores(gpt, norm))
        .map(|(_, scores)| {
            let k = Amount::Fraction(fraction).count(scores.len())?;
            if k == scores.len() {
                return Err(CompressError::InvalidAmount(
                    "removing every FFN neuron leaves no layer".into(),
                ));
            }
            let drop = lowest(&scores, k);
            Ok((0..scores.len()).filter(|j| !drop.contains(j)).collect())
        })
        .collect()
}

fn check_kept(gpt: &Gpt, kept: &[Vec<usize>], width: impl Fn(usize) -> usize) -> Result<()> {
    if kept.len() != gpt.blocks.len() {
        return Err(CompressError::arg(format!(
            "{} index lists for {} blocks",
            kept.len(),
            gpt.blocks.len()
        )));
    }
    for (b, k) in kept.iter().enumerate() {
        if k.is_empty() || k.iter().any(|&j| j >= width(b)) || k.windows(2).any(|w| w[0] >= w[1]) {
            return Err(CompressError::arg(format!(
                "block {b}: kept indices must be non-empty, sorted, unique and < {}",
                width(b)
            )));
        }
    }
    Ok(())
}

/// Masks that zero every FFN neuron not in `kept` (per block): the `up` (and `gate`) columns and
/// biases, and the `down` rows. The same function as [`remove_ffn_neurons`], without shrinking.
pub fn ffn_neuron_masks(gpt: &Gpt, kept: &[Vec<usize>]) -> Result<PruningMasks> {
    check_kept(gpt, kept, |b| gpt.blocks[b].ffn.up.weight.dims()[1])?;
    let mut masks = PruningMasks::new();
    for (b, (block, kept)) in gpt.blocks.iter().zip(kept).enumerate() {
        let [d_model, d_ff] = block.ffn.up.weight.dims();
        let alive: Vec<bool> = (0..d_ff).map(|j| kept.binary_search(&j).is_ok()).collect();
        let columns: Vec<bool> = (0..d_model * d_ff).map(|i| alive[i % d_ff]).collect();
        let rows: Vec<bool> = (0..d_ff * d_model).map(|i| alive[i / d_model]).collect();
        let prefix = format!("blocks.{b}.ffn");
        masks.insert(&format!("{prefix}.up.weight"), &[d_model, d_ff], &columns)?;
        if block.ffn.up.bias.is_some() {
            masks.insert(&format!("{prefix}.up.bias"), &[d_ff], &alive)?;
        }
        if block.ffn.gate.is_some() {
            masks.insert(&format!("{prefix}.gate.weight"), &[d_model, d_ff], &columns)?;
        }
        masks.insert(&format!("{prefix}.down.weight"), &[d_ff, d_model], &rows)?;
    }
    Ok(masks)
}

/// Physically removes every FFN neuron not in `kept` (per block): `up`/`gate` lose columns,
/// `down` loses rows (kiln-model's [`Gpt::keep_hidden`]). Parameter ids are kept. All blocks
/// must keep the same number of neurons for the result to be saved with a `GptConfig` (its
/// `d_ff` is one number).
pub fn remove_ffn_neurons(gpt: Gpt, kept: &[Vec<usize>]) -> Result<Gpt> {
    Ok(gpt.keep_hidden(kept)?)
}

/// The importance of every attention head, per block: the norm of its query, key and value
/// columns and its rows of the output projection, all together.
pub fn head_scores(gpt: &Gpt, norm: Norm) -> Vec<Vec<f64>> {
    gpt.blocks
        .iter()
        .map(|block| {
            let attn = &block.attn;
            let heads = attn.n_head;
            let (q, [d_model, width]) = host(attn.query.weight.val());
            let (k, _) = host(attn.key.weight.val());
            let (v, _) = host(attn.value.weight.val());
            let (o, _) = host(attn.out.weight.val());
            let hd = width / heads;
            (0..heads)
                .map(|h| {
                    let cols = h * hd..(h + 1) * hd;
                    let proj = [&q, &k, &v].into_iter().flat_map(|m| {
                        let cols = cols.clone();
                        (0..d_model).flat_map(move |r| cols.clone().map(move |c| m[r * width + c]))
                    });
                    let out = o[cols.start * d_model..cols.end * d_model].iter().copied();
                    norm.of(proj.chain(out))
                })
                .collect()
        })
        .collect()
}

/// The heads to keep per block after dropping `fraction` of each block's heads with the lowest
/// [`head_scores`] (at least one head stays).
pub fn select_heads(gpt: &Gpt, fraction: f64, norm: Norm) -> Result<Vec<Vec<usize>>> {
    head_scores(gpt, norm)
        .into_iter()
        .map(|scores| {
            let k = Amount::Fraction(fraction).count(scores.len())?;
            if k == scores.len() {
                return Err(CompressError::InvalidAmount(
                    "removing every head of a block".into(),
                ));
            }
            let drop = lowest(&scores, k);
            Ok((0..scores.len()).filter(|h| !drop.contains(h)).collect())
        })
        .collect()
}

/// Physically removes every attention head not in `kept` (per block): the query, key and
/// value projections lose that head's columns (and biases), the output projection its rows, and
/// the block's head count drops (kiln-model's [`Gpt::keep_heads`], which the int8 model's
/// [`QuantizedGpt::remove_heads`](crate::QuantizedGpt::remove_heads) shares). Parameter ids
/// are kept; the result computes what [`head_masks`] computes, with fewer parameters and FLOPs.
pub fn remove_heads(gpt: Gpt, kept: &[Vec<usize>]) -> Result<Gpt> {
    Ok(gpt.keep_heads(kept)?)
}

/// Masks that silence every head not in `kept` (per block): its query/key/value columns and
/// biases and its rows of the output projection. A silenced head attends uniformly to zero
/// values, so it contributes exactly nothing.
pub fn head_masks(gpt: &Gpt, kept: &[Vec<usize>]) -> Result<PruningMasks> {
    check_kept(gpt, kept, |b| gpt.blocks[b].attn.n_head)?;
    let mut masks = PruningMasks::new();
    for (b, (block, kept)) in gpt.blocks.iter().zip(kept).enumerate() {
        let attn = &block.attn;
        let [d_model, width] = attn.query.weight.dims();
        let hd = width / attn.n_head;
        let alive: Vec<bool> = (0..width)
            .map(|c| kept.binary_search(&(c / hd)).is_ok())
            .collect();
        let columns: Vec<bool> = (0..d_model * width).map(|i| alive[i % width]).collect();
        let rows: Vec<bool> = (0..width * d_model).map(|i| alive[i / d_model]).collect();
        for (name, linear) in [
            ("query", &attn.query),
            ("key", &attn.key),
            ("value", &attn.value),
        ] {
            let prefix = format!("blocks.{b}.attn.{name}");
            masks.insert(&format!("{prefix}.weight"), &[d_model, width], &columns)?;
            if linear.bias.is_some() {
                masks.insert(&format!("{prefix}.bias"), &[width], &alive)?;
            }
        }
        masks.insert(
            &format!("blocks.{b}.attn.out.weight"),
            &[width, d_model],
            &rows,
        )?;
    }
    Ok(masks)
}
