//! What can go wrong between processes, with the rank and the step it concerns.

/// Errors of distributed training.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The process was started by a parallel launcher but kiln was built without MPI.
    #[error(
        "launched as one of {world_size} processes (by mpirun or srun), but kiln was built without the `mpi` feature: rebuild with `--features mpi`"
    )]
    NotBuiltWithMpi {
        /// The world size the launcher set.
        world_size: usize,
    },
    /// Something needs several processes and this one runs alone.
    #[error("{0} needs a parallel launch (mpirun -np N ...)")]
    NotLaunchedInParallel(String),
    /// The ranks hold different models.
    #[error("rank {rank}'s model differs from rank 0's: {difference}")]
    ModelMismatch {
        /// The first rank whose model differs.
        rank: usize,
        /// The first parameter that differs, with both descriptions.
        difference: String,
    },
    /// The ranks disagree about something that must be the same everywhere.
    #[error("rank {rank} disagrees with rank 0 about {what}")]
    Disagreement {
        /// The first rank that disagrees.
        rank: usize,
        /// What they disagree about.
        what: String,
    },
    /// A pipeline stage received another micro-batch than its plan expects: the stages run
    /// different schedules or different micro-batches.
    #[error(
        "pipeline stage {stage} expected micro-batch {expected} from stage {from} and received micro-batch {received} of shape {shape:?}: every stage must run the same schedule on the same micro-batches"
    )]
    StageMismatch {
        /// The receiving stage.
        stage: usize,
        /// The sending stage.
        from: usize,
        /// The micro-batch the plan expects.
        expected: usize,
        /// The micro-batch the header names.
        received: usize,
        /// The tensor shape the header names.
        shape: [usize; 3],
    },
    /// A bad argument (a rank out of range, buffers of different lengths, a split color).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The communication library reported an error.
    #[error("{backend}: {message}")]
    Backend {
        /// `mpi` or `nccl`.
        backend: &'static str,
        /// Its message.
        message: String,
    },
    /// A tensor could not be read back or written.
    #[error("tensor data: {0}")]
    Tensor(String),
}

/// Results of kiln-dist.
pub type Result<T, E = DistError> = std::result::Result<T, E>;
