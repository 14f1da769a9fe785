//! # kiln
//!
//! Training large Transformer models in pure Rust, on [Burn](https://burn.dev): the same code
//! on CUDA GPUs, Vulkan/Metal through wgpu, and the CPU.
//!
//! - [`model`]: Transformer blocks, GPT and BERT, HuggingFace weights in and out.
//! - [`optim`]: optimizers, regularization, clipping and learning-rate schedules.
//! - [`train`]: the training loop and its tricks, driven by one [`RunConfig`](train::RunConfig).
//! - [`compress`]: pruning and quantization.
//! - [`data`]: cleaning, deduplication, tokenization and datasets.
//! - [`dist`]: training on many processes and machines (MPI, NCCL), data parallelism, ZeRO-1.
//! - [`base`]: what the crates share (batch types, `TrainModel`, precision, seeds).
//! - [`recipe`]: runs that work, to start from (the main job's among them).
//! - [`saved`]: a trained model in one folder with its config and tokenizer.
//! - [`device`]: picking a backend by name (`flex`, `wgpu`, `cuda:1`, `auto`).
//! - [`Error`]: every crate's error converts into it; [`burn`] is re-exported, so a program
//!   depends on kiln alone.
//!
//! The README trains, samples and saves a GPT on a text file in fifteen lines (run as a
//! doc-test); the pieces:
//!
//! ```
//! use kiln::prelude::*;
//!
//! # fn main() -> kiln::Result<()> {
//! let device = kiln::device::from_name("flex")?;
//! let model = GptConfig::new(50).with_block_size(16).with_n_layer(1).with_n_head(2).with_d_model(16);
//! let gpt = model.init(&device)?;
//! let logits = gpt.forward(Tensor::<2, Int>::from_ints([[1, 2, 3]], &device))?;
//! assert_eq!(logits.dims(), [1, 3, 50]);
//!
//! // A run: the model, the data settings, GPT-3's optimizer and schedule, the loop.
//! let run = kiln::recipe::gpt(model, (), 3e-4, 1000);
//! assert!(run.to_toml()?.contains("[optimizer.AdamW]"));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub use burn;

pub mod device;
mod error;
pub mod recipe;
pub mod saved;

pub use error::{Error, Result};

/// The README's code, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// What the crates share: batch types, the model side of training, precision, seeds, stores
/// (the `kiln-base` crate).
pub mod base {
    pub use kiln_base::*;
}

/// Transformer blocks, GPT and BERT, HuggingFace weights (the `kiln-model` crate).
pub mod model {
    pub use kiln_model::*;
}

/// Optimizers, regularization, clipping and schedules (the `kiln-optim` crate).
pub mod optim {
    pub use kiln_optim::*;
}

/// The training loop (the `kiln-train` crate).
pub mod train {
    pub use kiln_train::*;
}

/// Pruning and quantization (the `kiln-compress` crate).
pub mod compress {
    pub use kiln_compress::*;
}

/// Process groups, collectives, data parallelism and ZeRO-1 on MPI and NCCL (the `kiln-dist`
/// crate; MPI with the `mpi` feature).
pub mod dist {
    pub use kiln_dist::*;
}

/// Text to training batches (the `kiln-data` crate).
pub mod data {
    pub use kiln_data::*;
}

/// The names most programs need: tensors, models, data, the run config and the Trainer.
pub mod prelude {
    pub use crate::{Error, Result};
    pub use burn::module::Module;
    pub use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
    pub use kiln_data::{LmBatch, LmBatcher, PackedLmDataset, Tokenizer};
    pub use kiln_model::bert::{
        Bert, BertConfig, BertForMaskedLm, BertForSequenceClassification, BertInput,
    };
    pub use kiln_model::feed_forward::FeedForwardKind;
    pub use kiln_model::gpt::{Gpt, GptConfig, PositionEncoding};
    pub use kiln_model::hf::{HfModel, HfOutput, load_pretrained, save_pretrained};
    pub use kiln_model::norm::NormKind;
    pub use kiln_model::rotary::RopeScaling;
    pub use kiln_model::sampling::GenerateConfig;
    pub use kiln_model::{ModelError, padding_mask};
    pub use kiln_optim::{AdamWConfig, OptimizerConfig, ScheduleConfig, WarmupDecayConfig};
    pub use kiln_train::{
        BatchSource, EarlyStoppingConfig, Metric, Precision, Recompute, RunConfig, TrainOutcome,
        Trainer, TrainerConfig,
    };
}
