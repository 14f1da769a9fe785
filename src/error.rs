//! One error for everything kiln does: each crate's error converts into [`Error`], so `?`
//! works across crates and `main` can return `Result<(), kiln::Error>`.

/// Any error of kiln. Its `Debug` is its message (as anyhow's), so that `main` returning
/// `kiln::Result<()>` prints `Error: d_model 30 is not divisible by n_head 4`, not the enum.
#[derive(thiserror::Error)]
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
    /// Writing or reading weights and files atomically (kiln-base).
    #[error(transparent)]
    Store(#[from] kiln_base::StoreError),
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

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        // `#[error(transparent)]` variants forward `source` to the wrapped error's own; list
        // only causes that add to the message.
        while let Some(cause) = source {
            let text = cause.to_string();
            if !self.to_string().contains(&text) {
                write!(f, "\n  caused by: {text}")?;
            }
            source = cause.source();
        }
        Ok(())
    }
}

/// Results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<kiln_base::FileError> for Error {
    /// A path kiln will not use (a link where it writes, a device where it reads, an output
    /// folder holding files kiln did not write), or an I/O error: as kiln-base reports it.
    fn from(e: kiln_base::FileError) -> Self {
        Self::Store(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_the_message() {
        let error = Error::from(kiln_model::ModelError::InvalidConfig(
            "n_head must be > 0".into(),
        ));
        assert_eq!(format!("{error:?}"), "invalid config: n_head must be > 0");
        let io = Error::from(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "run.toml",
        ));
        assert_eq!(format!("{io:?}"), "run.toml");
    }
}
