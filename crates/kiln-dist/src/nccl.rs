//! NCCL for NVIDIA GPUs (feature `nccl`): the collectives of [`Communicator`] on NCCL, through
//! cudarc (which loads libnccl at run time), the NCCL unique id broadcast over MPI.
//!
//! Kiln's collectives move host buffers, so this engine stages each one through a device buffer
//! (copy in, NCCL collective on the GPU, copy out): NCCL's transports (NVLink, InfiniBand with
//! GPUDirect) carry the traffic, but the host copies remain. Handing Burn's CUDA tensors to NCCL
//! in place needs Burn's CUDA handles, which burn 0.22.1 does not expose publicly; that is the
//! next step, not done. Point-to-point messages, barriers and aborts go through MPI. It cannot
//! run on the machines kiln is built on here (no GPU): CI type-checks it, and
//! `scripts/gpu_check.sh` tests it on a machine with GPUs.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::safe::{Comm, Id, ReduceOp as NcclOp};

use crate::communicator::{Communicator, ReduceOp, check_len, check_rank};
use crate::error::{DistError, Result};
use crate::process_group::ProcessGroup;

/// NCCL between the ranks of an MPI group, one GPU per rank.
pub struct NcclCommunicator {
    comm: Comm,
    stream: Arc<CudaStream>,
    /// The MPI group the NCCL communicator was built over (ids, p2p, barriers, splits).
    mpi: ProcessGroup,
    ordinal: usize,
}

// SAFETY: every call enqueues on this communicator's one stream and synchronizes before
// returning; NCCL communicators may be used from any thread that does not use them concurrently,
// which kiln's loop (one thread per rank) guarantees.
unsafe impl Send for NcclCommunicator {}
unsafe impl Sync for NcclCommunicator {}

fn nccl_error(e: impl std::fmt::Debug) -> DistError {
    DistError::Backend {
        backend: "nccl",
        message: format!("{e:?}"),
    }
}

impl NcclCommunicator {
    /// NCCL over the ranks of `mpi`, this rank on GPU `ordinal` (usually the local rank).
    pub fn new(mpi: &ProcessGroup, ordinal: usize) -> Result<Self> {
        let mut id_bytes = [0u8; 128];
        if mpi.is_main() {
            let id = Id::new().map_err(nccl_error)?;
            for (b, c) in id_bytes.iter_mut().zip(id.internal()) {
                *b = *c as u8;
            }
        }
        mpi.broadcast_bytes(&mut id_bytes, 0)?;
        let id = Id::uninit(id_bytes.map(|b| b as core::ffi::c_char));
        let context = CudaContext::new(ordinal).map_err(nccl_error)?;
        let stream = context.default_stream();
        let comm =
            Comm::from_rank(stream.clone(), mpi.rank(), mpi.size(), id).map_err(nccl_error)?;
        Ok(Self {
            comm,
            stream,
            mpi: mpi.clone(),
            ordinal,
        })
    }

    fn op(op: ReduceOp) -> NcclOp {
        match op {
            ReduceOp::Sum => NcclOp::Sum,
            ReduceOp::Mean => NcclOp::Avg,
            ReduceOp::Max => NcclOp::Max,
            ReduceOp::Min => NcclOp::Min,
        }
    }

    fn all_reduce<T>(&self, data: &mut [T], op: ReduceOp) -> Result<()>
    where
        T: cudarc::nccl::safe::NcclType + cudarc::driver::DeviceRepr + Copy,
    {
        if data.is_empty() {
            return Ok(());
        }
        let mut buffer = self.stream.clone_htod(data).map_err(nccl_error)?;
        self.comm
            .all_reduce_in_place(&mut buffer, &Self::op(op))
            .map_err(nccl_error)?;
        self.stream.memcpy_dtoh(&buffer, data).map_err(nccl_error)?;
        self.stream.synchronize().map_err(nccl_error)
    }
}

impl Communicator for NcclCommunicator {
    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_f32(&self, data: &mut [f32], op: ReduceOp) -> Result<()> {
        self.all_reduce(data, op)
    }

    fn all_reduce_f64(&self, data: &mut [f64], op: ReduceOp) -> Result<()> {
        self.all_reduce(data, op)
    }

    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<()> {
        check_rank(root, self.size())?;
        if data.is_empty() {
            return Ok(());
        }
        let mut buffer = self.stream.clone_htod(data).map_err(nccl_error)?;
        self.comm
            .broadcast_in_place(&mut buffer, root as i32)
            .map_err(nccl_error)?;
        self.stream.memcpy_dtoh(&buffer, data).map_err(nccl_error)?;
        self.stream.synchronize().map_err(nccl_error)
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        check_len("all_gather", recv.len(), send.len() * self.size())?;
        if send.is_empty() {
            return Ok(());
        }
        let input = self.stream.clone_htod(send).map_err(nccl_error)?;
        let mut output = self
            .stream
            .alloc_zeros::<u8>(recv.len())
            .map_err(nccl_error)?;
        self.comm
            .all_gather(&input, &mut output)
            .map_err(nccl_error)?;
        self.stream.memcpy_dtoh(&output, recv).map_err(nccl_error)?;
        self.stream.synchronize().map_err(nccl_error)
    }

    fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<()> {
        check_len("reduce_scatter", send.len(), recv.len() * self.size())?;
        if recv.is_empty() {
            return Ok(());
        }
        let input = self.stream.clone_htod(send).map_err(nccl_error)?;
        let mut output = self
            .stream
            .alloc_zeros::<f32>(recv.len())
            .map_err(nccl_error)?;
        self.comm
            .reduce_scatter(&input, &mut output, &Self::op(op))
            .map_err(nccl_error)?;
        self.stream.memcpy_dtoh(&output, recv).map_err(nccl_error)?;
        self.stream.synchronize().map_err(nccl_error)
    }

    fn send_recv(&self, data: &[u8], dest: usize, recv: &mut [u8], source: usize) -> Result<()> {
        self.mpi.communicator().send_recv(data, dest, recv, source)
    }

    fn send(&self, data: &[u8], dest: usize, tag: u16) -> Result<()> {
        self.mpi.communicator().send(data, dest, tag)
    }

    fn recv(&self, data: &mut [u8], source: usize, tag: u16) -> Result<()> {
        self.mpi.communicator().recv(data, source, tag)
    }

    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }

    fn split(&self, color: usize, key: usize) -> Result<Arc<dyn Communicator>> {
        let sub = self.mpi.split(color, key)?;
        Ok(Arc::new(Self::new(&sub, self.ordinal)?))
    }

    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}
