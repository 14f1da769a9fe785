//! Token-level cross-entropy with an ignore index, and the input checks every model shares.

use burn::tensor::{Int, Tensor};

use crate::error::{ModelError, Result};

/// Mean cross-entropy of `logits` `[batch, seq, vocab]` against `targets` `[batch, seq]`,
/// over the positions whose target is not `ignore_index` (HF's `-100` convention).
///
/// A batch where every target is ignored has loss 0 (and zero gradients), not NaN. One fused
/// kernel forward and backward on flex ([`fused::cross_entropy`](crate::fused::cross_entropy)).
pub fn cross_entropy(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    ignore_index: Option<i64>,
) -> Tensor<1> {
    let [batch, seq, vocab] = logits.dims();
    crate::fused::cross_entropy::cross_entropy(
        logits.reshape([batch * seq, vocab]),
        targets.reshape([batch * seq]),
        ignore_index,
    )
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

/// Checks that every id is in `0..vocab_size`: [`check_targets`]'s one reduction and one
/// scalar read back, reported as [`ModelError::TokenOutOfVocab`].
pub fn check_id_range<const D: usize>(ids: &Tensor<D, Int>, vocab_size: usize) -> Result<()> {
    check_targets(ids, vocab_size, None, "token id").map_err(|e| match e {
        ModelError::IdOutOfRange { id, .. } => ModelError::TokenOutOfVocab { id, vocab_size },
        other => other,
    })
}

/// Checks that every target is in `0..num_classes` or equals `ignore_index`, with one reduction
/// and one scalar read back (a device sync) per call; only when some target is out of range is
/// the tensor read back, to name the first one and its index.
///
/// Burn's `gather` (the cross-entropy's lookup) does not check its indices: an out-of-range
/// target panics on some backends and reads another row's value on others. kiln's
/// `TrainModel` steps call this on every batch; code that calls [`cross_entropy`] itself
/// should too.
pub fn check_targets<const D: usize>(
    targets: &Tensor<D, Int>,
    num_classes: usize,
    ignore_index: Option<i64>,
    what: &str,
) -> Result<()> {
    let bound = i64::try_from(num_classes).unwrap_or(i64::MAX);
    let mut outside = targets.clone().lower_elem(0);
    // Compared in the device's integer type: a bound past i32 holds every id there.
    if let Ok(upper) = i32::try_from(num_classes) {
        outside = outside.bool_or(targets.clone().greater_equal_elem(upper));
    }
    let bad = match ignore_index {
        Some(ignore) => outside.bool_and(targets.clone().not_equal_elem(ignore)),
        None => outside,
    };
    if !bad.any().into_scalar::<bool>() {
        return Ok(());
    }
    let dims = targets.dims();
    let values: Vec<i64> = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| ModelError::BadInput(format!("cannot read targets back: {e:?}")))?;
    let (flat, &id) = values
        .iter()
        .enumerate()
        .find(|&(_, &t)| (t < 0 || t >= bound) && Some(t) != ignore_index)
        .ok_or_else(|| ModelError::BadInput(format!("{what}s out of range")))?;
    Err(ModelError::IdOutOfRange {
        what: what.to_string(),
        id,
        at: unflatten(flat, &dims),
        bound: num_classes as u64,
    })
}

/// The index of the `flat`-th element (row-major) of a tensor of shape `dims`.
fn unflatten(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut at = vec![0; dims.len()];
    for (i, &d) in dims.iter().enumerate().rev() {
        at[i] = flat % d.max(1);
        flat /= d.max(1);
    }
    at
}

/// The first id past what every backend's integer tensors hold: Burn stores `Int` tensors as
/// i32 on flex (and most GPU backends) and panics when a larger value is cast.
const DEVICE_ID_BOUND: u32 = 1 << 31;

/// Builds a `[batch, seq]` id tensor from rows of token ids of equal length (also segment ids
/// and 0/1 attention masks for BERT). Errors on an empty batch, rows of different lengths, and
/// ids of 2^31 or more (which no backend's 32-bit integers hold), naming the id and its place;
/// the model's own forward pass checks ids against its vocabulary.
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
    for (r, row) in rows.iter().enumerate() {
        if let Some(p) = row.iter().position(|&id| id >= DEVICE_ID_BOUND) {
            return Err(ModelError::IdOutOfRange {
                what: "id".into(),
                id: row[p].into(),
                at: vec![r, p],
                bound: DEVICE_ID_BOUND.into(),
            });
        }
    }
    let flat: Vec<i64> = rows.iter().flatten().map(|&id| id.into()).collect();
    Ok(Tensor::from_data(
        burn::tensor::TensorData::new(flat, [rows.len(), seq]),
        device,
    ))
}
