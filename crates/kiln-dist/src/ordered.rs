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
    let (n, rank) = (group.size(), group.rank());
    if n == 1 || data.is_empty() {
        return Ok(());
    }
    if n == 2 {
        // One addition per element, and IEEE addition commutes: MPI's own sum is already
        // `d₀ + d₁`, and faster (measured in docs/benchmarks.md).
        return group.all_reduce_f32(data, crate::ReduceOp::Sum);
    }
    let chunk = data.len().div_ceil(n);
    let range = |c: usize| c * chunk..(c + 1) * chunk;
    let mut padded = data.to_vec();
    padded.resize(chunk * n, 0.0);
    // parts[r]: rank r's values of the chunk this rank owns.
    let mut parts = vec![0.0f32; chunk * n];
    parts[range(rank)].copy_from_slice(&padded[range(rank)]);
    let comm = group.communicator();
    for k in 1..n {
        // Paired exchanges: everyone sends k ranks ahead and receives from k behind, so no
        // rank waits on one that is sending elsewhere.
        let (dest, source) = ((rank + k) % n, (rank + n - k) % n);
        comm.send_recv(
            bytemuck::cast_slice(&padded[range(dest)]),
            dest,
            bytemuck::cast_slice_mut(&mut parts[range(source)]),
            source,
        )?;
    }
    let mut sum = parts[range(0)].to_vec();
    for r in 1..n {
        for (s, v) in sum.iter_mut().zip(&parts[range(r)]) {
            *s += v;
        }
    }
    group.all_gather_f32(&sum, &mut padded)?;
    data.copy_from_slice(&padded[..data.len()]);
    Ok(())
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
