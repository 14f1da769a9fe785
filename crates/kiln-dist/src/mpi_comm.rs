//! The MPI engine (feature `mpi`): kiln's collectives on rsmpi over the system's MPI (Open MPI,
//! MPICH, a cluster's own), launched by `mpirun` or `srun`.
//!
//! MPI is initialized once per process, with `MPI_THREAD_SERIALIZED`, and finalized when the
//! last process group is dropped. Every call into MPI takes one process-wide lock, which is what
//! that threading level asks of the caller. MPI counts are `int`s, so large buffers go in chunks.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Color, Communicator as _, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};

use crate::communicator::{Communicator, ReduceOp, check_len, check_rank};
use crate::error::{DistError, Result};

/// The most elements one MPI call moves (MPI counts are `int`s).
const CHUNK: usize = 1 << 28;

/// The initialized MPI library; dropping the last reference finalizes it.
struct Library {
    // Dropped (finalized) only after every communicator, which hold an `Arc` to it.
    _universe: Universe,
}

// SAFETY: MPI is initialized with `MPI_THREAD_SERIALIZED` and every call goes through `LOCK`.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

/// The process-wide MPI lock (MPI_THREAD_SERIALIZED: one call at a time).
static LOCK: Mutex<()> = Mutex::new(());
/// The library while any group holds it.
static LIBRARY: Mutex<Weak<Library>> = Mutex::new(Weak::new());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An MPI communicator: the world or a sub-group.
pub struct MpiCommunicator {
    // Declared first: freed before the library is finalized.
    comm: SimpleCommunicator,
    library: Arc<Library>,
}

// SAFETY: see `Library`; the communicator handle is only used under `LOCK`.
unsafe impl Send for MpiCommunicator {}
unsafe impl Sync for MpiCommunicator {}

impl MpiCommunicator {
    /// The world of this MPI job, initializing MPI on first use.
    pub fn world() -> Result<Self> {
        let mut slot = LIBRARY.lock().unwrap_or_else(|p| p.into_inner());
        let library = match slot.upgrade() {
            Some(library) => library,
            None => {
                let _guard = lock();
                let (universe, _level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
                    .ok_or_else(|| DistError::Backend {
                        backend: "mpi",
                        message: "MPI was initialized and finalized already in this process".into(),
                    })?;
                let library = Arc::new(Library {
                    _universe: universe,
                });
                *slot = Arc::downgrade(&library);
                library
            }
        };
        let _guard = lock();
        Ok(Self {
            comm: SimpleCommunicator::world(),
            library,
        })
    }

    fn process(&self, rank: usize) -> mpi::topology::Process<'_> {
        self.comm.process_at_rank(rank as i32)
    }
}

fn system_op(op: ReduceOp) -> SystemOperation {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => SystemOperation::sum(),
        ReduceOp::Max => SystemOperation::max(),
        ReduceOp::Min => SystemOperation::min(),
    }
}

macro_rules! all_reduce_impl {
    ($name:ident, $t:ty) => {
        fn $name(&self, data: &mut [$t], op: ReduceOp) -> Result<()> {
            let size = self.size();
            if size > 1 && !data.is_empty() {
                let _guard = lock();
                for chunk in data.chunks_mut(CHUNK) {
                    if size == 2 {
                        // a + b == b + a exactly: MPI's own all-reduce is the same on both.
                        let send = chunk.to_vec();
                        self.comm.all_reduce_into(&send[..], chunk, system_op(op));
                    } else {
                        // Reduce-scatter then all-gather: each element is reduced once, by
                        // one rank, and copied to the others, so every rank has the same bits.
                        let block = chunk.len().div_ceil(size);
                        let mut send = vec![<$t>::default(); block * size];
                        send[..chunk.len()].copy_from_slice(chunk);
                        let mut mine = vec![<$t>::default(); block];
                        self.comm.reduce_scatter_block_into(
                            &send[..],
                            &mut mine[..],
                            system_op(op),
                        );
                        self.comm.all_gather_into(&mine[..], &mut send[..]);
                        chunk.copy_from_slice(&send[..chunk.len()]);
                    }
                }
            }
            if op == ReduceOp::Mean {
                let n = size as $t;
                data.iter_mut().for_each(|v| *v /= n);
            }
            Ok(())
        }
    };
}

impl Communicator for MpiCommunicator {
    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn size(&self) -> usize {
        self.comm.size() as usize
    }

    all_reduce_impl!(all_reduce_f32, f32);
    all_reduce_impl!(all_reduce_f64, f64);

    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<()> {
        check_rank(root, self.size())?;
        let _guard = lock();
        for chunk in data.chunks_mut(CHUNK) {
            self.process(root).broadcast_into(chunk);
        }
        Ok(())
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        check_len("all_gather", recv.len(), send.len() * self.size())?;
        if send.len() > CHUNK {
            return Err(DistError::InvalidArgument(format!(
                "all_gather of {} bytes per rank: at most {CHUNK}",
                send.len()
            )));
        }
        let _guard = lock();
        self.comm.all_gather_into(send, recv);
        Ok(())
    }

    fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<()> {
        check_len("reduce_scatter", send.len(), recv.len() * self.size())?;
        if recv.len() > CHUNK {
            return Err(DistError::InvalidArgument(format!(
                "reduce_scatter of {} elements per rank: at most {CHUNK}",
                recv.len()
            )));
        }
        {
            let _guard = lock();
            self.comm
                .reduce_scatter_block_into(send, recv, system_op(op));
        }
        if op == ReduceOp::Mean {
            let n = self.size() as f32;
            recv.iter_mut().for_each(|v| *v /= n);
        }
        Ok(())
    }

    fn send_recv(&self, data: &[u8], dest: usize, recv: &mut [u8], source: usize) -> Result<()> {
        check_rank(dest, self.size())?;
        check_rank(source, self.size())?;
        let _guard = lock();
        for (out, into) in data.chunks(CHUNK).zip(recv.chunks_mut(CHUNK)) {
            mpi::point_to_point::send_receive_into(
                out,
                &self.process(dest),
                into,
                &self.process(source),
            );
        }
        Ok(())
    }

    fn send(&self, data: &[u8], dest: usize, tag: u16) -> Result<()> {
        check_rank(dest, self.size())?;
        let _guard = lock();
        for chunk in data.chunks(CHUNK) {
            self.process(dest).send_with_tag(chunk, i32::from(tag));
        }
        Ok(())
    }

    fn recv(&self, data: &mut [u8], source: usize, tag: u16) -> Result<()> {
        check_rank(source, self.size())?;
        let _guard = lock();
        for chunk in data.chunks_mut(CHUNK) {
            let status = self
                .process(source)
                .receive_into_with_tag(chunk, i32::from(tag));
            let got = status.count(u8::equivalent_datatype()) as usize;
            if got != chunk.len() {
                return Err(DistError::InvalidArgument(format!(
                    "received {got} bytes from rank {source}, expected {}",
                    chunk.len()
                )));
            }
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        let _guard = lock();
        self.comm.barrier();
        Ok(())
    }

    fn split(&self, color: usize, key: usize) -> Result<Arc<dyn Communicator>> {
        let color = i32::try_from(color)
            .map_err(|_| DistError::InvalidArgument(format!("split color {color} is too large")))?;
        let key = i32::try_from(key)
            .map_err(|_| DistError::InvalidArgument(format!("split key {key} is too large")))?;
        let _guard = lock();
        let comm = self
            .comm
            .split_by_color_with_key(Color::with_value(color), key)
            .ok_or_else(|| DistError::Backend {
                backend: "mpi",
                message: "MPI_Comm_split gave no communicator".into(),
            })?;
        Ok(Arc::new(Self {
            comm,
            library: self.library.clone(),
        }))
    }

    fn abort(&self, code: i32) -> ! {
        // No lock: another thread may hold it while blocked in a collective.
        self.comm.abort(code)
    }
}

use mpi::datatype::Equivalence;
