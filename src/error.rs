//! One error for everything kiln does: each crate's error converts into [`Error`], so `?`
//! works across crates and `main` can return `Result<(), kiln::Error>`.

/// Any error of kiln.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building, running, saving or loading a model (kiln-model).
    #[error(transparent)]
    Model(#[from] kiln_model::ModelError),
    /// An optimizer or schedule setting (kiln-optim).
    #[error(transparent)]
    Optim(#[from] kiln_optim::OptimError),
    /// The training loop, its checkpoints or its run config (kiln-train).
    #[error(transparent)]
    Train(#[from] kiln_train::TrainError),
    /// Reading, cleaning, tokenizing or batching data (kiln-data).
    #[error(transparent)]
    Data(#[from] kiln_data::DataError),
    /// Pruning, quantization or their archives (kiln-compress).
    #[error(transparent)]
    Compress(#[from] kiln_compress::CompressError),
    /// Communication between processes (kiln-dist).
    #[error(transparent)]
    Dist(#[from] kiln_dist::DistError),
    /// Writing or reading weights and files atomically (kiln-core).
    #[error(transparent)]
    Store(#[from] kiln_core::StoreError),
    /// Picking a backend.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// Any other file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A setting that does not apply here or contradicts another (a program's own checks).
    #[error("{0}")]
    Usage(String),
}

/// Results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
