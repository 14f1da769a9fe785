//! # kiln
//!
//! Training large Transformer models in pure Rust, on [Burn](https://burn.dev): the same code
//! on CUDA GPUs, Vulkan/Metal through wgpu, and the CPU.
//!
//! - [`model`]: Transformer blocks, GPT and BERT, HuggingFace weight loading.
//! - [`optim`]: optimizers, regularization, clipping and learning-rate schedules.
//! - [`train`]: the training loop and its tricks.
//! - [`compress`]: pruning and quantization.
//! - [`data`]: cleaning, deduplication, tokenization and datasets.
//! - [`device`]: picking a backend by name (`flex`, `wgpu`, `cuda:1`, `auto`).
//!
//! ```
//! use kiln::prelude::*;
//!
//! let device = kiln::device::from_name("flex").unwrap();
//! let gpt = GptConfig::new(50).with_block_size(8).with_n_layer(1).with_n_head(2).with_d_model(16)
//!     .init(&device)
//!     .unwrap();
//! let ids = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
//! assert_eq!(gpt.forward(ids).unwrap().dims(), [1, 3, 50]);
//! ```

#![warn(missing_docs)]

pub mod device;

/// Transformer blocks, GPT and BERT, HuggingFace weight loading (the `kiln-model` crate).
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

/// Text to training batches (the `kiln-data` crate).
pub mod data {
    pub use kiln_data::*;
}

/// The names most programs need.
pub mod prelude {
    pub use burn::module::Module;
    pub use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
    pub use kiln_model::bert::{
        Bert, BertConfig, BertForMaskedLm, BertForSequenceClassification, BertInput,
    };
    pub use kiln_model::gpt::{Gpt, GptConfig};
    pub use kiln_model::hf::{HfModel, HfOutput, load_pretrained};
    pub use kiln_model::sampling::GenerateConfig;
    pub use kiln_model::{ModelError, padding_mask};
}
