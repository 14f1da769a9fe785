//! Collectives that cannot wait forever: a communicator whose calls a watchdog thread times.
//!
//! A rank that dies makes `mpirun` end the job, but a rank that *hangs* (a stopped process, a
//! stuck device, a machine that stops answering without closing its sockets) leaves every other
//! rank blocked in its next collective for good. PyTorch's answer is a timeout on every
//! collective (its process groups' `timeout`, NCCL's watchdog); kiln's is the same:
//! [`Watched`] wraps a communicator, notes when each call starts, and a watchdog thread that
//! finds a call older than the timeout prints which collective on which rank and ends the job
//! through the communicator's `abort` (MPI's `Abort`: every rank ends, so a launcher can
//! restart from the newest checkpoint). A group of one never waits for anybody and is not
//! watched.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::communicator::{Communicator, ReduceOp};
use crate::error::Result;

/// The exit code of a job ended by a collective's timeout (that of coreutils' `timeout`).
pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// The timeout [`ProcessGroup::from_env`](crate::ProcessGroup::from_env) gives its
/// collectives: 10 minutes, `torch.distributed`'s default for NCCL. Long enough for rank 0 to
/// write a large checkpoint while the others wait at a barrier.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The collectives, by the index a [`Slot`] stores.
const OPS: [&str; 11] = [
    "all_reduce_f32",
    "all_reduce_f64",
    "broadcast",
    "all_gather",
    "reduce_scatter_f32",
    "send_recv",
    "send",
    "recv",
    "barrier",
    "split",
    "(none)",
];

/// When the current call of one communicator started (milliseconds after [`epoch`], plus one;
/// 0 while no call is in flight) and which it is.
struct Slot {
    since: AtomicU64,
    op: AtomicUsize,
    timeout: Duration,
    rank: usize,
    comm: Arc<dyn Communicator>,
}

impl Slot {
    fn arm(&self, op: usize) {
        self.op.store(op, Ordering::Relaxed);
        self.since.store(now_ms() + 1, Ordering::Release);
    }

    fn disarm(&self) {
        self.since.store(0, Ordering::Release);
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// The slots the watchdog thread checks (one thread per process, started with the first).
fn watched_slots() -> &'static Mutex<Vec<Weak<Slot>>> {
    static SLOTS: OnceLock<Mutex<Vec<Weak<Slot>>>> = OnceLock::new();
    SLOTS.get_or_init(|| {
        std::thread::Builder::new()
            .name("kiln-collective-watchdog".into())
            .spawn(watch)
            .expect("the watchdog thread starts");
        Mutex::new(Vec::new())
    })
}

/// The watchdog: every 100 ms, any call older than its timeout ends the job.
fn watch() {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let slots: Vec<Arc<Slot>> = {
            let mut slots = watched_slots()
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            slots.retain(|slot| slot.strong_count() > 0);
            slots.iter().filter_map(Weak::upgrade).collect()
        };
        for slot in slots {
            let since = slot.since.load(Ordering::Acquire);
            if since == 0 {
                continue;
            }
            let waited = Duration::from_millis(now_ms().saturating_sub(since - 1));
            if waited > slot.timeout {
                let op = OPS[slot.op.load(Ordering::Relaxed).min(OPS.len() - 1)];
                eprintln!(
                    "rank {}: collective `{op}` did not finish within its timeout of {:.0?} \
                     (a peer died or hangs): ending the job with code {TIMEOUT_EXIT_CODE}",
                    slot.rank, slot.timeout
                );
                slot.comm.abort(TIMEOUT_EXIT_CODE);
            }
        }
    }
}

/// A communicator whose every call must finish within a timeout, or the job ends.
pub struct Watched {
    slot: Arc<Slot>,
}

impl Watched {
    /// `comm`, timed: a call that takes longer than `timeout` ends the job.
    pub fn new(comm: Arc<dyn Communicator>, timeout: Duration) -> Self {
        let slot = Arc::new(Slot {
            since: AtomicU64::new(0),
            op: AtomicUsize::new(OPS.len() - 1),
            timeout,
            rank: comm.rank(),
            comm,
        });
        watched_slots()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::downgrade(&slot));
        Self { slot }
    }

    /// The timeout of every call.
    pub fn timeout(&self) -> Duration {
        self.slot.timeout
    }

    fn timed<T>(&self, op: usize, call: impl FnOnce(&dyn Communicator) -> T) -> T {
        self.slot.arm(op);
        let out = call(self.slot.comm.as_ref());
        self.slot.disarm();
        out
    }
}

impl Communicator for Watched {
    fn backend(&self) -> &'static str {
        self.slot.comm.backend()
    }

    fn rank(&self) -> usize {
        self.slot.comm.rank()
    }

    fn size(&self) -> usize {
        self.slot.comm.size()
    }

    fn all_reduce_f32(&self, data: &mut [f32], op: ReduceOp) -> Result<()> {
        self.timed(0, |c| c.all_reduce_f32(data, op))
    }

    fn all_reduce_f64(&self, data: &mut [f64], op: ReduceOp) -> Result<()> {
        self.timed(1, |c| c.all_reduce_f64(data, op))
    }

    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<()> {
        self.timed(2, |c| c.broadcast(data, root))
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        self.timed(3, |c| c.all_gather(send, recv))
    }

    fn reduce_scatter_f32(&self, send: &[f32], recv: &mut [f32], op: ReduceOp) -> Result<()> {
        self.timed(4, |c| c.reduce_scatter_f32(send, recv, op))
    }

    fn send_recv(&self, data: &[u8], dest: usize, recv: &mut [u8], source: usize) -> Result<()> {
        self.timed(5, |c| c.send_recv(data, dest, recv, source))
    }

    fn send(&self, data: &[u8], dest: usize, tag: u16) -> Result<()> {
        self.timed(6, |c| c.send(data, dest, tag))
    }

    fn recv(&self, data: &mut [u8], source: usize, tag: u16) -> Result<()> {
        self.timed(7, |c| c.recv(data, source, tag))
    }

    fn barrier(&self) -> Result<()> {
        self.timed(8, |c| c.barrier())
    }

    fn split(&self, color: usize, key: usize) -> Result<Arc<dyn Communicator>> {
        let part = self.timed(9, |c| c.split(color, key))?;
        Ok(Arc::new(Watched::new(part, self.slot.timeout)))
    }

    fn abort(&self, code: i32) -> ! {
        self.slot.comm.abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SingleProcess;

    #[test]
    fn a_watched_communicator_passes_calls_through_and_disarms_after_each() {
        let watched = Watched::new(Arc::new(SingleProcess), Duration::from_secs(60));
        let mut data = [1.0f32, 2.0];
        watched.all_reduce_f32(&mut data, ReduceOp::Sum).unwrap();
        assert_eq!(data, [1.0, 2.0]);
        assert_eq!(watched.slot.since.load(Ordering::Acquire), 0);
        let part = watched.split(0, 0).unwrap();
        assert_eq!((part.rank(), part.size(), part.backend()), (0, 1, "single"));
    }
}
