//! All-reduce with half-precision traffic: a ring (Patarasuk & Yuan 2009, as in NCCL and
//! Horovod) whose messages are f16 or bf16 while every rank accumulates in f32. It halves the
//! bytes on the wire; the price is one rounding per hop of each partial sum and of the result.
//!
//! Reduce-scatter: in step s, rank r sends its partial sum of chunk (r − s) mod N to rank r + 1
//! and adds the chunk (r − s − 1) mod N it receives from rank r − 1; after N − 1 steps rank r
//! holds the full sum of chunk (r + 1) mod N. All-gather: those sums, rounded once, travel the
//! ring N − 1 more steps. Every rank ends with the same bits.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::communicator::ReduceOp;
use crate::config::ReduceDtype;
use crate::error::{DistError, Result};
use crate::process_group::ProcessGroup;

/// Rounds `values` to `dtype`'s bits (the slice conversions use the CPU's F16C instructions
/// where it has them).
fn encode(values: &[f32], dtype: ReduceDtype, out: &mut [u16]) {
    match dtype {
        ReduceDtype::Bf16 => {
            let mut half = vec![bf16::ZERO; values.len()];
            half.convert_from_f32_slice(values);
            out.iter_mut()
                .zip(&half)
                .for_each(|(o, h)| *o = h.to_bits());
        }
        _ => {
            let mut half = vec![f16::ZERO; values.len()];
            half.convert_from_f32_slice(values);
            out.iter_mut()
                .zip(&half)
                .for_each(|(o, h)| *o = h.to_bits());
        }
    }
}

/// `bits` of `dtype` as f32.
fn decode(bits: &[u16], dtype: ReduceDtype, out: &mut [f32]) {
    match dtype {
        ReduceDtype::Bf16 => {
            let half: Vec<bf16> = bits.iter().map(|&b| bf16::from_bits(b)).collect();
            half.convert_to_f32_slice(out);
        }
        _ => {
            let half: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b)).collect();
            half.convert_to_f32_slice(out);
        }
    }
}

/// All-reduce of `data` with `dtype` on the wire (f32 goes through the communicator's own
/// all-reduce).
pub fn all_reduce(
    group: &ProcessGroup,
    data: &mut [f32],
    op: ReduceOp,
    dtype: ReduceDtype,
) -> Result<()> {
    let n = group.size();
    if dtype != ReduceDtype::F32 && matches!(op, ReduceOp::Max | ReduceOp::Min) {
        return Err(DistError::InvalidArgument(
            "a half-precision all-reduce sums; use f32 for max and min".into(),
        ));
    }
    if dtype == ReduceDtype::F32 || n == 1 || data.is_empty() {
        return group.all_reduce_f32(data, op);
    }
    let rank = group.rank();
    let (next, prev) = ((rank + 1) % n, (rank + n - 1) % n);
    let chunk = data.len().div_ceil(n);
    let mut padded = data.to_vec();
    padded.resize(chunk * n, 0.0);
    let range = |c: usize| c * chunk..(c + 1) * chunk;
    let (mut out, mut inc) = (vec![0u16; chunk], vec![0u16; chunk]);
    let mut received = vec![0.0f32; chunk];
    let comm = group.communicator();

    // One hop of the ring: `values` rounded out to the next rank, the previous rank's in.
    let mut hop = |values: &[f32], inc: &mut [u16]| {
        encode(values, dtype, &mut out);
        comm.send_recv(
            bytemuck::cast_slice(&out),
            next,
            bytemuck::cast_slice_mut(inc),
            prev,
        )
    };
    for step in 0..n - 1 {
        let (send, receive) = ((rank + n - step) % n, (rank + 2 * n - step - 1) % n);
        hop(&padded[range(send)], &mut inc)?;
        decode(&inc, dtype, &mut received);
        for (v, r) in padded[range(receive)].iter_mut().zip(&received) {
            *v += r;
        }
    }
    // Rank r owns chunk (r + 1) mod n: rounded once, it is what every rank ends with.
    let owned = (rank + 1) % n;
    let mut rounded = vec![0u16; chunk];
    encode(&padded[range(owned)], dtype, &mut rounded);
    decode(&rounded, dtype, &mut padded[range(owned)]);
    for step in 0..n - 1 {
        let (send, receive) = ((rank + 1 + n - step) % n, (rank + n - step) % n);
        hop(&padded[range(send)], &mut inc)?;
        decode(&inc, dtype, &mut padded[range(receive)]);
    }
    data.copy_from_slice(&padded[..data.len()]);
    if op == ReduceOp::Mean {
        data.iter_mut().for_each(|v| *v /= n as f32);
    }
    Ok(())
}
