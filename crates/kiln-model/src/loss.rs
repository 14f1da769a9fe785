//! Token-level cross-entropy with an ignore index, and the input checks every model shares.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use crate::error::{ModelError, Result};

/// Mean cross-entropy of `logits` `[batch, seq, vocab]` against `targets` `[batch, seq]`,
/// over the positions whose target is not `ignore_index` (HF's `-100` convention).
///
/// A batch where every target is ignored has loss 0 (and zero gradients), not NaN.
pub fn cross_entropy(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    ignore_index: Option<i64>,
) -> Tensor<1> {
    let [batch, seq, vocab] = logits.dims();
    let log_probs = log_softmax(logits.reshape([batch * seq, vocab]), 1);
    let targets = targets.reshape([batch * seq, 1]);
    match ignore_index {
        None => log_probs.gather(1, targets).mean().neg(),
        Some(ignore) => {
            let ignored = targets.clone().equal_elem(ignore);
            let keep = ignored.clone().bool_not().float();
            let picked = log_probs.gather(1, targets.mask_fill(ignored, 0));
            let count = keep.clone().sum().clamp_min(1.0);
            (picked * keep).sum().neg() / count
        }
    }
}

/// Checks that `ids` is a non-empty `[batch, seq]` batch with `seq <= max_len` and every id in
/// `0..vocab_size`. Reads two scalars back from the device.
pub fn check_token_ids(ids: &Tensor<2, Int>, vocab_size: usize, max_len: usize) -> Result<()> {
    let [batch, seq] = ids.dims();
    if batch == 0 || seq == 0 {
        return Err(ModelError::BadInput(format!(
            "empty batch of shape [{batch}, {seq}]"
        )));
    }
    if seq > max_len {
        return Err(ModelError::SequenceTooLong {
            len: seq,
            max: max_len,
        });
    }
    check_id_range(ids, vocab_size)
}

/// Checks that every id is in `0..vocab_size`.
pub fn check_id_range<const D: usize>(ids: &Tensor<D, Int>, vocab_size: usize) -> Result<()> {
    let min: i64 = ids.clone().min().into_scalar();
    if min < 0 {
        return Err(ModelError::TokenOutOfVocab {
            id: min,
            vocab_size,
        });
    }
    let max: i64 = ids.clone().max().into_scalar();
    if max >= vocab_size as i64 {
        return Err(ModelError::TokenOutOfVocab {
            id: max,
            vocab_size,
        });
    }
    Ok(())
}

/// Builds a `[batch, seq]` id tensor from rows of token ids of equal length (also segment ids
/// and 0/1 attention masks for BERT). Errors on an empty batch or rows of different lengths.
///
/// Burn keeps `Int` tensors in the device's integer type, which is **i32 on flex**: to read
/// ids back (say, an `argmax`), convert (`into_data().convert::<i64>()`) or ask for `i32`;
/// `try_to_vec::<i64>()` on the raw data fails on flex.
///
/// ```
/// use burn::tensor::Device;
/// use kiln_model::loss::token_tensor;
///
/// let ids = token_tensor(&[vec![1, 2, 3], vec![4, 5, 6]], &Device::flex()).unwrap();
/// assert_eq!(ids.dims(), [2, 3]);
/// let back: Vec<i64> = ids.into_data().convert::<i64>().to_vec().unwrap();
/// assert_eq!(back, [1, 2, 3, 4, 5, 6]);
/// ```
pub fn token_tensor(rows: &[Vec<u32>], device: &burn::tensor::Device) -> Result<Tensor<2, Int>> {
    let seq = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || seq == 0 {
        return Err(ModelError::BadInput("empty batch of token ids".into()));
    }
    if let Some(row) = rows.iter().position(|r| r.len() != seq) {
        return Err(ModelError::BadInput(format!(
            "row {row} has {} tokens, row 0 has {seq}: rows must have equal length",
            rows[row].len()
        )));
    }
    let flat: Vec<i64> = rows.iter().flatten().map(|&id| id.into()).collect();
    Ok(Tensor::from_data(
        burn::tensor::TensorData::new(flat, [rows.len(), seq]),
        device,
    ))
}
