//! An all-reduce that sums in rank order, as gradient accumulation sums micro-batches: rank r's
//! contribution is added after rank r − 1's, on every element. MPI's own reduction (and a ring)
//! sums in whatever order its algorithm takes, which differs from accumulation's from three
//! ranks on; with this one, N ranks of one micro-batch each give exactly the update of one
//! process accumulating N micro-batches, so a run can move between any number of ranks and
//! one process bit for bit (issue 23).
//!
//! The traffic is a ring's: every rank sends each owner its 1/N of the buffer (an all-to-all in
//! N − 1 paired exchanges), each owner sums its chunk's N parts in rank order, and an
//! all-gather hands the sums back. Every rank ends with the same bits.
//!
//! A rank that accumulates several micro-batches per step sums them before the reduction, so
//! its ranks add `(m₀ + m₁) + (m₂ + m₃)` where one process adds `((m₀ + m₁) + m₂) + m₃`:
//! [`all_reduce_sum_parts`] instead sends each micro-batch's part and the owner adds all of
//! them in (rank, micro-batch) order, the one process's order for every layout (at the price of
//! keeping the parts and sending each: `DataParallelConfig::exact_accumulation`).

use crate::error::Result;
use crate::process_group::ProcessGroup;

/// Sums `data` over the ranks of `group` in rank order: `((d₀ + d₁) + d₂) + …` on every
/// element, the same bits on every rank.
pub fn all_reduce_sum(group: &ProcessGroup, data: &mut [f32]) -> Result<()> {
    let n = group.size();
    if n == 1 || data.is_empty() {
        return Ok(());
    }
    if n == 2 {
        // One addition per element, and IEEE addition commutes: MPI's own sum is already
        // `d₀ + d₁`, and faster (measured in docs/benchmarks.md).
        return group.all_reduce_f32(data, crate::ReduceOp::Sum);
    }
    let sum = all_reduce_sum_parts(group, data, 1)?;
    data.copy_from_slice(&sum);
    Ok(())
}

/// Sums over the ranks of `group` each rank's `parts` equal slices of `data` (its micro-batches'
/// values, in order), in (rank, part) order: `((d₀₀ + d₀₁) + d₁₀) + d₁₁ …` on every element,
/// the same bits on every rank, one slice long. On one rank it adds its parts in order.
pub fn all_reduce_sum_parts(group: &ProcessGroup, data: &[f32], parts: usize) -> Result<Vec<f32>> {
    let n = group.size();
    let parts = parts.max(1);
    let len = data.len() / parts;
    if n == 1 {
        return Ok(fold(data, len));
    }
    let chunk = len.div_ceil(n);
    // Owner o's share of every part, each padded to `chunk`.
    let pack = |owner: usize| {
        let mut out = Vec::with_capacity(parts * chunk);
        for part in data.chunks(len.max(1)).take(parts) {
            let start = (owner * chunk).min(len);
            let end = ((owner + 1) * chunk).min(len);
            out.extend_from_slice(&part[start..end]);
            out.resize(out.len() + chunk - (end - start), 0.0);
        }
        out
    };
    let sum = sum_at_owners(group, chunk, parts, pack)?;
    let mut gathered = vec![0.0f32; chunk * n];
    group.all_gather_f32(&sum, &mut gathered)?;
    gathered.truncate(len);
    Ok(gathered)
}

/// `values` (a whole number of `len`-long parts) added up part by part, in order.
fn fold(values: &[f32], len: usize) -> Vec<f32> {
    let mut parts = values.chunks(len.max(1));
    let mut sum = parts.next().map(<[f32]>::to_vec).unwrap_or_default();
    for part in parts {
        sum.iter_mut().zip(part).for_each(|(s, v)| *s += v);
    }
    sum.truncate(len);
    sum
}

/// The owners' half of a reduce-scatter in rank order: every rank hands each owner its values
/// for that owner (`pack(owner)`: `parts` pieces of `len` values for this rank, one per
/// micro-batch), and this rank returns the sum of what it received, `((v₀ + v₁) + v₂) + …` in
/// (rank, part) order. ZeRO-2 sums each owner's parameters' gradients with it;
/// [`all_reduce_sum_parts`] is it followed by an all-gather.
pub fn sum_at_owners(
    group: &ProcessGroup,
    len: usize,
    parts: usize,
    pack: impl Fn(usize) -> Vec<f32>,
) -> Result<Vec<f32>> {
    let (n, rank) = (group.size(), group.rank());
    let len = len * parts.max(1);
    // received[r]: rank r's values for this rank.
    let mut received = vec![vec![0.0f32; len]; n];
    received[rank] = pack(rank);
    let comm = group.communicator();
    for k in 1..n {
        // Paired exchanges: everyone sends k ranks ahead and receives from k behind, so no
        // rank waits on one that is sending elsewhere.
        let (dest, source) = ((rank + k) % n, (rank + n - k) % n);
        comm.send_recv(
            bytemuck::cast_slice(&pack(dest)),
            dest,
            bytemuck::cast_slice_mut(&mut received[source]),
            source,
        )?;
    }
    Ok(fold(&received.concat(), len / parts.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rank_keeps_its_values() {
        let mut data = vec![1.0f32, -2.5, 3.0];
        all_reduce_sum(&ProcessGroup::single(), &mut data).unwrap();
        assert_eq!(data, [1.0, -2.5, 3.0]);
    }

    #[test]
    fn one_rank_adds_its_parts_in_order() {
        let (a, b, c) = (1.0f32, 1e8, -1e8);
        let sum = all_reduce_sum_parts(&ProcessGroup::single(), &[a, 0.0, b, 1.0, c, 2.0], 3);
        // ((a + b) + c) loses a; a + (b + c) would keep it.
        assert_eq!(sum.unwrap(), [(a + b) + c, 3.0]);
    }
}
