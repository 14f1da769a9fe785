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
//! - [`core`]: what the crates share (batch types, `TrainModel`, precision, seeds).
//! - [`recipe`]: runs that work, to start from (the main job's among them).
//! - [`saved`]: a trained model in one folder with its config and tokenizer.
//! - [`device`]: picking a backend by name (`flex`, `wgpu`, `cuda:1`, `auto`).
//! - [`Error`]: every crate's error converts into it; [`burn`] is re-exported, so a program
//!   depends on kiln alone.
//!
//! Train a character-level GPT on a text:
//!
//! ```
//! use kiln::prelude::*;
//!
//! # fn main() -> kiln::Result<()> {
//! let text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
//! let tokenizer = Tokenizer::char_level(&text)?;
//! let ids = tokenizer.encode(&text)?;
//! let (train, held_out) = ids.split_at(ids.len() * 9 / 10);
//!
//! let model = GptConfig::new(tokenizer.vocab_size())
//!     .with_block_size(32).with_n_layer(2).with_n_head(2).with_d_model(32);
//! let mut run = kiln::recipe::gpt(model, (), 3e-3, 60);
//! run.trainer = run.trainer.with_batch_size(8).with_eval_every(30).with_quiet(true);
//!
//! let device = kiln::device::from_name("flex")?;
//! device.seed(7);
//! let gpt = run.model.init(&device)?;
//! let outcome = Trainer::new(&run, lm_source(train, 32)?)?
//!     .with_eval(lm_source(held_out, 32)?)
//!     .fit(gpt, &device)?;
//! let (_, eval) = outcome.eval.expect("evaluated");
//! assert!(eval.loss < (tokenizer.vocab_size() as f64).ln(), "it learned something");
//!
//! let prompt = tokenizer.encode("the ")?;
//! let out = outcome.model.generate(&[prompt], &GenerateConfig::new().with_max_new_tokens(20))?;
//! println!("{}", tokenizer.decode(&out[0])?);
//! # Ok(())
//! # }
//!
//! /// Packed next-token windows of `block` tokens.
//! fn lm_source(ids: &[u32], block: usize) -> kiln::Result<BatchSource<LmBatch>> {
//!     Ok(BatchSource::new(PackedLmDataset::from_tokens(ids.to_vec(), block)?, LmBatcher))
//! }
//! ```

#![warn(missing_docs)]

pub use burn;

pub mod device;
mod error;
pub mod recipe;
pub mod saved;

pub use error::{Error, Result};

/// What the crates share: batch types, the model side of training, precision, seeds, stores
/// (the `kiln-core` crate).
pub mod core {
    pub use kiln_core::*;
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
    pub use kiln_model::gpt::{Gpt, GptConfig};
    pub use kiln_model::hf::{HfModel, HfOutput, load_pretrained, save_pretrained};
    pub use kiln_model::sampling::GenerateConfig;
    pub use kiln_model::{ModelError, padding_mask};
    pub use kiln_optim::{AdamWConfig, OptimizerConfig, ScheduleConfig, WarmupDecayConfig};
    pub use kiln_train::{
        BatchSource, EarlyStoppingConfig, Metric, Precision, Recompute, RunConfig, TrainOutcome,
        Trainer, TrainerConfig,
    };
}
