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
    let chunk = data.len().div_ceil(n);
    let mut padded = data.to_vec();
    padded.resize(chunk * n, 0.0);
    let sum = sum_at_owners(group, chunk, |owner| {
        padded[owner * chunk..(owner + 1) * chunk].to_vec()
    })?;
    group.all_gather_f32(&sum, &mut padded)?;
    data.copy_from_slice(&padded[..data.len()]);
    Ok(())
}

/// The owners' half of a reduce-scatter in rank order: every rank hands each owner its values
/// for that owner (`pack(owner)`; `len` values for this rank), and this rank returns the sum of
/// what it received, `((v₀ + v₁) + v₂) + …` in rank order. ZeRO-2 sums each owner's parameters'
/// gradients with it; [`all_reduce_sum`] is it followed by an all-gather.
pub fn sum_at_owners(
    group: &ProcessGroup,
    len: usize,
    pack: impl Fn(usize) -> Vec<f32>,
) -> Result<Vec<f32>> {
    let (n, rank) = (group.size(), group.rank());
    // parts[r]: rank r's values for this rank.
    let mut parts = vec![vec![0.0f32; len]; n];
    parts[rank] = pack(rank);
    let comm = group.communicator();
    for k in 1..n {
        // Paired exchanges: everyone sends k ranks ahead and receives from k behind, so no
        // rank waits on one that is sending elsewhere.
        let (dest, source) = ((rank + k) % n, (rank + n - k) % n);
        comm.send_recv(
            bytemuck::cast_slice(&pack(dest)),
            dest,
            bytemuck::cast_slice_mut(&mut parts[source]),
            source,
        )?;
    }
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_default();
    for part in parts {
        sum.iter_mut().zip(&part).for_each(|(s, v)| *s += v);
    }
    Ok(sum)
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
}
