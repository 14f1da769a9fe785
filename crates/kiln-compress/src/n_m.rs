//! N:M semi-structured sparsity (NVIDIA's 2:4 on Ampere; Mishra et al. 2021): in every group of
//! `m` consecutive weights along the input dimension, only the `n` largest survive.

use burn::module::Module;

use crate::error::{CompressError, Result};
use crate::mask::PruningMasks;
use crate::params::{ParamFilter, read_params};

/// N:M masks for the rank-2 parameters passing `filter`.
///
/// Burn's `Linear` stores its weight `[d_in, d_out]`; the groups run along `d_in` (dimension 0)
/// for each output, which is the reduction dimension sparse tensor cores compress. Errors when
/// `n > m`, `m == 0`, or `d_in` is not a multiple of `m`.
pub fn n_m_masks<M: Module>(
    model: &M,
    filter: &ParamFilter<'_>,
    n: usize,
    m: usize,
) -> Result<PruningMasks> {
    if m == 0 || n > m {
        return Err(CompressError::InvalidPattern { n, m });
    }
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
        if !rows.is_multiple_of(m) {
            return Err(CompressError::NotDivisible {
                path: param.path.clone(),
                dim: rows,
                m,
            });
        }
        let mut keep = vec![false; rows * cols];
        let mut group: Vec<(f32, usize)> = Vec::with_capacity(m);
        for col in 0..cols {
            for start in (0..rows).step_by(m) {
                group.clear();
                group.extend(
                    (start..start + m)
                        .map(|r| (param.values[r * cols + col].abs(), r * cols + col)),
                );
                // Largest first; ties keep the earlier weight.
                group.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                for &(_, i) in &group[..n] {
                    keep[i] = true;
                }
            }
        }
        masks.insert(&param.path, &param.shape, &keep)?;
    }
    Ok(masks)
}

/// Whether `values` (shape `[rows, cols]`) has at most `n` non-zeros in every group of `m` along
/// dimension 0.
pub fn satisfies_n_m(values: &[f32], rows: usize, cols: usize, n: usize, m: usize) -> bool {
    if m == 0 || !rows.is_multiple_of(m) || values.len() != rows * cols {
        return false;
    }
    (0..cols).all(|c| {
        (0..rows).step_by(m).all(|start| {
            (start..start + m)
                .filter(|&r| values[r * cols + c] != 0.0)
                .count()
                <= n
        })
    })
}
