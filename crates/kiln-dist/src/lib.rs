//! kiln-dist: training on many processes and machines.
//!
//! Burn 0.22.1 reduces only between the devices of one process, and only on CUDA; kiln runs on
//! the engine clusters already run, MPI, and on NCCL where the devices are NVIDIA GPUs.
//!
//! - [`ProcessGroup`] ([`process_group`]): the ranks that train together, from the launcher's
//!   environment (`mpirun`, `srun`) or a group of one; sub-groups by [`ProcessGroup::split`].
//! - [`Communicator`] ([`communicator`]): the engine, all-reduce (sum, mean, max, min),
//!   broadcast, all-gather, reduce-scatter, send/receive and barrier on host buffers;
//!   [`SingleProcess`] always, `MpiCommunicator` with the `mpi` feature, `NcclCommunicator`
//!   with `nccl`. The same collectives on Burn tensors, and the one conversion of a tensor to
//!   host values and back ([`tensor`]).
//! - [`launch`]: run a job under `mpirun` and restart it from its newest checkpoint when a
//!   rank fails, optionally on fewer ranks ([`LaunchConfig`]).
//! - [`watchdog`]: a timeout on every collective, so that a hung peer ends the job.
//! - [`ring`]: all-reduce with f16/bf16 traffic and f32 accumulation.
//! - [`ordered`]: the f32 all-reduce that sums in rank order, as accumulation does (N ranks =
//!   one process accumulating N, bit for bit).
//! - [`flat`]: a model's parameters or gradients as one flat buffer.
//! - [`DataParallel`] ([`data_parallel`]): what kiln-train's loop calls for data parallelism:
//!   the model check and broadcast at the start, bucketed gradient all-reduce, ZeRO-1.
//! - [`ProcessGrid`] ([`grid`]): data × pipeline × tensor, the groups of 3-D parallelism.
//! - [`ModelSplit`] ([`model_parallel`]): a [`ParallelModel`] cut into this rank's
//!   [`ModelPart`], the tied embedding's gradient, the whole model's gradient norm, the whole
//!   model gathered.
//! - [`PipelineSchedule`] ([`schedule`]): GPipe and 1F1B, their passes, bubble and memory.
//! - [`PipelineStage`] ([`pipeline`]): which blocks a stage runs, and its plan of passes and
//!   transfers; [`p2p`] carries the transfers between stages.
//! - [`TensorParallel`] ([`tensor_parallel`]): Megatron's column- and row-parallel layers and
//!   its `f`/`g` operations, with their own backward; [`VocabParallel`] ([`vocab_parallel`]):
//!   its vocabulary-parallel embedding and cross-entropy.
//! - [`DataParallelConfig`], [`ReduceDtype`], [`ModelParallelConfig`] (`config.rs`), [`DistError`].
//!
//! ```
//! use kiln_dist::{ProcessGroup, ReduceOp};
//!
//! // Alone (not under mpirun): a group of one, whose collectives are the identity.
//! let group = ProcessGroup::from_env()?;
//! let mut grads = vec![1.0f32, 2.0];
//! group.all_reduce_f32(&mut grads, ReduceOp::Sum)?;
//! assert_eq!((group.rank(), group.size(), grads), (0, 1, vec![1.0, 2.0]));
//! # Ok::<(), kiln_dist::DistError>(())
//! ```

#![warn(missing_docs)]

pub mod communicator;
mod config;
pub mod data_parallel;
mod error;
pub mod flat;
pub mod grid;
pub mod launch;
pub mod model_parallel;
#[cfg(feature = "mpi")]
mod mpi_comm;
#[cfg(feature = "nccl")]
mod nccl;
pub mod ordered;
pub mod p2p;
pub mod pipeline;
pub mod process_group;
pub mod ring;
pub mod schedule;
pub mod tensor;
pub mod tensor_parallel;
pub mod vocab_parallel;
pub mod watchdog;

pub use communicator::{Communicator, ReduceOp, SingleProcess};
pub use config::{DataParallelConfig, ModelParallelConfig, ReduceDtype};
pub use data_parallel::DataParallel;
pub use error::{DistError, Result};
pub use grid::ProcessGrid;
pub use launch::{Attempt, LaunchConfig};
pub use model_parallel::{ModelPart, ModelSplit, ParallelModel, TensorSplit};
/// The rsmpi crate kiln's MPI engine is built on (for benchmarks against it, or MPI calls of
/// your own once a [`ProcessGroup`] has initialized MPI).
#[cfg(feature = "mpi")]
pub use mpi;
#[cfg(feature = "mpi")]
pub use mpi_comm::MpiCommunicator;
#[cfg(feature = "nccl")]
pub use nccl::NcclCommunicator;
pub use p2p::{Message, StageLink};
pub use pipeline::{PipelineStage, Step};
pub use process_group::ProcessGroup;
pub use schedule::{Pass, PipelineSchedule};
pub use tensor_parallel::TensorParallel;
pub use vocab_parallel::VocabParallel;
