//! A process group: the ranks that train together, and the collectives between them.
//!
//! [`ProcessGroup::from_env`] finds the world the launcher set up (`mpirun` sets
//! `OMPI_COMM_WORLD_*`, MPICH's Hydra and Slurm's `srun` set `PMI_*` / `SLURM_*`); a process
//! started on its own is a group of one, whose collectives are the identity, so the same program
//! runs alone or on many machines. [`ProcessGroup::split`] makes sub-groups (the tensor- and
//! pipeline-parallel groups of a process grid). Every collective of a launched world has a
//! timeout ([`ProcessGroup::with_timeout`], 10 minutes by default): a hung peer ends the job
//! instead of leaving the others waiting ([`crate::watchdog`]).

use std::sync::Arc;
use std::time::Duration;

use crate::communicator::{Communicator, ReduceOp, SingleProcess};
use crate::error::{DistError, Result};

/// The largest piece [`ProcessGroup::send_vec`] sends at once.
const MAX_MESSAGE: usize = 1 << 30;

/// The ranks that train together.
#[derive(Clone)]
pub struct ProcessGroup {
    /// What the collectives go through: `raw`, or `raw` timed.
    comm: Arc<dyn Communicator>,
    /// The engine itself.
    raw: Arc<dyn Communicator>,
    local_rank: usize,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.comm.backend())
            .field("rank", &self.rank())
            .field("size", &self.size())
            .field("local_rank", &self.local_rank)
            .finish()
    }
}

/// What the launcher told this process: `(world size, local rank)`; `None` when it was started
/// on its own.
pub fn launched_world() -> Option<(usize, usize)> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let size = var("OMPI_COMM_WORLD_SIZE")
        .or_else(|| var("PMI_SIZE"))
        .or_else(|| var("SLURM_NTASKS"))?;
    let local = var("OMPI_COMM_WORLD_LOCAL_RANK")
        .or_else(|| var("MPI_LOCALRANKID"))
        .or_else(|| var("SLURM_LOCALID"))
        .unwrap_or(0);
    Some((size, local))
}

impl ProcessGroup {
    /// A group of one process.
    pub fn single() -> Self {
        Self::with_communicator(Arc::new(SingleProcess), 0)
    }

    /// The world the launcher set up, or a group of one when the process was not launched in
    /// parallel. A parallel launch of a build without the `mpi` feature is an error, never a
    /// silent group of one (each rank would train alone). Its collectives time out after
    /// [`DEFAULT_TIMEOUT`](crate::watchdog::DEFAULT_TIMEOUT); [`with_timeout`](Self::with_timeout)
    /// sets another.
    pub fn from_env() -> Result<Self> {
        match launched_world() {
            None | Some((1, _)) => Ok(Self::single()),
            Some((world_size, local_rank)) => Ok(Self::mpi_world(world_size, local_rank)?
                .with_timeout(Some(crate::watchdog::DEFAULT_TIMEOUT))),
        }
    }

    /// This group with every collective timed: one that takes longer than `timeout` (a peer
    /// died or hangs) prints which collective on which rank and ends the job with
    /// [`TIMEOUT_EXIT_CODE`](crate::watchdog::TIMEOUT_EXIT_CODE); `None` waits for ever. The
    /// groups [`split`](Self::split) from it inherit the timeout. A group of one waits for
    /// nobody and is left as it is.
    pub fn with_timeout(self, timeout: Option<Duration>) -> Self {
        if self.size() == 1 {
            return self;
        }
        let comm = match timeout {
            Some(timeout) => Arc::new(crate::watchdog::Watched::new(self.raw.clone(), timeout))
                as Arc<dyn Communicator>,
            None => self.raw.clone(),
        };
        Self { comm, ..self }
    }

    #[cfg(feature = "mpi")]
    fn mpi_world(world_size: usize, local_rank: usize) -> Result<Self> {
        let comm = crate::mpi_comm::MpiCommunicator::world()?;
        if comm.size() != world_size {
            return Err(DistError::Backend {
                backend: "mpi",
                message: format!(
                    "the launcher announced {world_size} processes, MPI's world has {}",
                    comm.size()
                ),
            });
        }
        Ok(Self::with_communicator(Arc::new(comm), local_rank))
    }

    #[cfg(not(feature = "mpi"))]
    fn mpi_world(world_size: usize, _local_rank: usize) -> Result<Self> {
        Err(DistError::NotBuiltWithMpi { world_size })
    }

    /// A group over any communicator (NCCL, or one of your own).
    pub fn with_communicator(comm: Arc<dyn Communicator>, local_rank: usize) -> Self {
        Self {
            raw: comm.clone(),
            comm,
            local_rank,
        }
    }

    /// The engine's name: `single`, `mpi` or `nccl`.
    pub fn backend(&self) -> &'static str {
        self.comm.backend()
    }

    /// This process's rank in the group.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The number of processes in the group.
    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// Whether this is rank 0, the one that prints and writes.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// This process's rank among those on the same machine: pick `Device::cuda(local_rank)`.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The engine.
    pub fn communicator(&self) -> &Arc<dyn Communicator> {
        &self.comm
    }

    /// Sub-groups: the processes with the same `color` form one, ranked by `key`.
    pub fn split(&self, color: usize, key: usize) -> Result<Self> {
        Ok(Self::with_communicator(
            self.comm.split(color, key)?,
            self.local_rank,
        ))
    }

    /// Ends every process of the job (after an error on this rank, so that no rank is left
    /// waiting in a collective).
    pub fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<()> {
        self.comm.barrier()
    }

    /// All-reduce of f32 values, in place.
    pub fn all_reduce_f32(&self, data: &mut [f32], op: ReduceOp) -> Result<()> {
        self.comm.all_reduce_f32(data, op)
    }

    /// All-reduce of f64 values, in place.
    pub fn all_reduce_f64(&self, data: &mut [f64], op: ReduceOp) -> Result<()> {
        self.comm.all_reduce_f64(data, op)
    }

    /// Rank `root`'s bytes to every rank.
    pub fn broadcast_bytes(&self, data: &mut [u8], root: usize) -> Result<()> {
        self.comm.broadcast(data, root)
    }

    /// Rank `root`'s f32 values to every rank.
    pub fn broadcast_f32(&self, data: &mut [f32], root: usize) -> Result<()> {
        self.comm.broadcast(bytemuck::cast_slice_mut(data), root)
    }

    /// Rank `root`'s bytes to every rank, whatever their length (the others' `data` is
    /// replaced).
    pub fn broadcast_vec(&self, data: &mut Vec<u8>, root: usize) -> Result<()> {
        let mut len = (data.len() as u64).to_le_bytes();
        self.comm.broadcast(&mut len, root)?;
        data.resize(u64::from_le_bytes(len) as usize, 0);
        self.comm.broadcast(data, root)
    }

    /// Every rank's bytes, of any length, in rank order.
    pub fn all_gather_vec(&self, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        let size = self.size();
        let mut lens = vec![0u8; 8 * size];
        self.comm
            .all_gather(&(data.len() as u64).to_le_bytes(), &mut lens)?;
        let lens: Vec<usize> = lens
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
            .collect();
        let longest = lens.iter().copied().max().unwrap_or(0);
        let mut padded = data.to_vec();
        padded.resize(longest, 0);
        let mut all = vec![0u8; longest * size];
        self.comm.all_gather(&padded, &mut all)?;
        Ok(all
            .chunks(longest.max(1))
            .zip(&lens)
            .map(|(chunk, &len)| chunk[..len].to_vec())
            .collect())
    }

    /// Every rank's f32 values (all the same length), concatenated in rank order.
    pub fn all_gather_f32(&self, data: &[f32], out: &mut [f32]) -> Result<()> {
        self.comm
            .all_gather(bytemuck::cast_slice(data), bytemuck::cast_slice_mut(out))
    }

    /// Reduces `data` (length `size · out.len()`) and leaves this rank's block in `out`.
    pub fn reduce_scatter_f32(&self, data: &[f32], out: &mut [f32], op: ReduceOp) -> Result<()> {
        self.comm.reduce_scatter_f32(data, out, op)
    }

    /// Sends f32 values to `dest`.
    pub fn send_f32(&self, data: &[f32], dest: usize, tag: u16) -> Result<()> {
        self.comm.send(bytemuck::cast_slice(data), dest, tag)
    }

    /// Receives exactly `data.len()` f32 values from `source`.
    pub fn recv_f32(&self, data: &mut [f32], source: usize, tag: u16) -> Result<()> {
        self.comm.recv(bytemuck::cast_slice_mut(data), source, tag)
    }

    /// Sends bytes of any length to `dest` (its length first, then pieces of at most 1 GiB:
    /// MPI counts are 32-bit).
    pub fn send_vec(&self, data: &[u8], dest: usize, tag: u16) -> Result<()> {
        self.comm
            .send(&(data.len() as u64).to_le_bytes(), dest, tag)?;
        for piece in data.chunks(MAX_MESSAGE) {
            self.comm.send(piece, dest, tag)?;
        }
        Ok(())
    }

    /// Receives what [`send_vec`](Self::send_vec) sent from `source`.
    pub fn recv_vec(&self, source: usize, tag: u16) -> Result<Vec<u8>> {
        let mut len = [0u8; 8];
        self.comm.recv(&mut len, source, tag)?;
        let len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| {
            DistError::InvalidArgument(format!("rank {source} announced a message past memory"))
        })?;
        let mut data = vec![0u8; len];
        for piece in data.chunks_mut(MAX_MESSAGE) {
            self.comm.recv(piece, source, tag)?;
        }
        Ok(data)
    }

    /// Checks that every rank holds the same `value` (a setting, a data length), naming the
    /// first rank that does not.
    pub fn check_same(&self, what: &str, value: &[u8]) -> Result<()> {
        let all = self.all_gather_vec(value)?;
        match all.iter().position(|v| v != &all[0]) {
            None => Ok(()),
            Some(rank) => Err(DistError::Disagreement {
                rank,
                what: format!(
                    "{what} (rank 0: {}, rank {rank}: {})",
                    String::from_utf8_lossy(&all[0]),
                    String::from_utf8_lossy(&all[rank])
                ),
            }),
        }
    }
}
