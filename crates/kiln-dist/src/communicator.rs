//! The engine under a process group: collectives on host buffers, implemented by a single
//! process (always), MPI (feature `mpi`) and NCCL (feature `nccl`).
//!
//! Every collective is called by every rank of the group, in the same order, with buffers of
//! the same length (as in MPI). Results are the same on every rank, bit for bit: an all-reduce
//! of more than two ranks is a reduce-scatter followed by an all-gather, so each element is
//! summed once, by one rank, in one order, and the ranks never drift apart.

use std::sync::Arc;

use crate::error::{DistError, Result};

/// How an all-reduce combines the ranks' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReduceOp {
    /// Elementwise sum.
    Sum,
    /// Elementwise sum divided by the number of ranks.
    Mean,
    /// Elementwise maximum.
    Max,
    /// Elementwise minimum.
    Min,
}

/// Collectives between the processes of one group. Object safe: a process group holds one as
/// `Arc<dyn Communicator>`.
pub trait Communicator: Send + Sync {
    /// `single`, `mpi` or `nccl`.
    fn backend(&self) -> &'static str;

    /// This process's rank in the group, `0..size`.
    fn rank(&self) -> usize;

    /// The number of processes in the group.
    fn size(&self) -> usize;

    /// All-reduce of f32 values, in place.
    fn all_reduce_f32(&self, data: &mut [f32], op: ReduceOp) -> Result<()>;

    /// All-reduce of f64 values, in place (metrics and counts: f64 holds integers exactly up
    /// to 2^53).
    fn all_reduce_f64(&self, data: &mut [f64], op: ReduceOp) -> Result<()>;

    /// Rank `root`'s bytes to every rank.
    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<()>;

    /// Every rank's `send` (all the same length), concatenated in rank order into `recv`.
    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<()>;

    /// Reduces `send` (length `size · recv.len()`) across ranks and leaves block `rank` of the
    /// result in `recv`.
    fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<()>;

    /// Sends `data` to `dest` while receiving `recv.len()` bytes from `source` (no deadlock in
    /// rings and pipelines).
    fn send_recv(&self, data: &[u8], dest: usize, recv: &mut [u8], source: usize) -> Result<()>;

    /// Sends bytes to `dest` with `tag`.
    fn send(&self, data: &[u8], dest: usize, tag: u16) -> Result<()>;

    /// Receives exactly `data.len()` bytes from `source` with `tag`.
    fn recv(&self, data: &mut [u8], source: usize, tag: u16) -> Result<()>;

    /// Waits until every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// The processes with the same `color` form a new group, ranked by `key` (MPI's
    /// `Comm_split`).
    fn split(&self, color: usize, key: usize) -> Result<Arc<dyn Communicator>>;

    /// Ends every process of the job with `code` (MPI's `Abort`): a rank that fails must not
    /// leave the others waiting in a collective.
    fn abort(&self, code: i32) -> !;
}

/// A group of one: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn backend(&self) -> &'static str {
        "single"
    }

    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_reduce_f32(&self, _data: &mut [f32], _op: ReduceOp) -> Result<()> {
        Ok(())
    }

    fn all_reduce_f64(&self, _data: &mut [f64], _op: ReduceOp) -> Result<()> {
        Ok(())
    }

    fn broadcast(&self, _data: &mut [u8], root: usize) -> Result<()> {
        check_rank(root, 1)
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        check_len("all_gather", recv.len(), send.len())?;
        recv.copy_from_slice(send);
        Ok(())
    }

    fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32], _op: ReduceOp) -> Result<()> {
        check_len("reduce_scatter", send.len(), recv.len())?;
        recv.copy_from_slice(send);
        Ok(())
    }

    fn send_recv(&self, data: &[u8], dest: usize, recv: &mut [u8], source: usize) -> Result<()> {
        check_rank(dest, 1)?;
        check_rank(source, 1)?;
        check_len("send_recv", recv.len(), data.len())?;
        recv.copy_from_slice(data);
        Ok(())
    }

    fn send(&self, _data: &[u8], dest: usize, _tag: u16) -> Result<()> {
        Err(DistError::InvalidArgument(format!(
            "send to rank {dest}: a single process has no peer"
        )))
    }

    fn recv(&self, _data: &mut [u8], source: usize, _tag: u16) -> Result<()> {
        Err(DistError::InvalidArgument(format!(
            "receive from rank {source}: a single process has no peer"
        )))
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }

    fn split(&self, _color: usize, _key: usize) -> Result<Arc<dyn Communicator>> {
        Ok(Arc::new(SingleProcess))
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// `rank` must be in `0..size`.
pub(crate) fn check_rank(rank: usize, size: usize) -> Result<()> {
    if rank < size {
        Ok(())
    } else {
        Err(DistError::InvalidArgument(format!(
            "rank {rank} is outside a group of {size}"
        )))
    }
}

/// Two buffer lengths that must match.
pub(crate) fn check_len(what: &str, found: usize, expected: usize) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(DistError::InvalidArgument(format!(
            "{what}: buffer of {found} elements, expected {expected}"
        )))
    }
}
