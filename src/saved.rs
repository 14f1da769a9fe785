//! A trained model in one folder, with everything that uses it: its config, its weights and
//! its tokenizer. Loading needs only the config type: `load::<GptConfig>(dir, &device)`.
//!
//! The folder is kiln-model's ([`kiln_model::store`]: `config.json`, `model.bpk`, written
//! atomically) plus `tokenizer.json` (the HuggingFace format, [`Tokenizer::save`]).

use std::path::Path;

use burn::tensor::Device;
use kiln_base::OutputDir;
use kiln_data::Tokenizer;
use kiln_model::store::{ModelConfig, TOKENIZER_FILE, load_model, save_model};

use crate::Result;

/// A model loaded from a folder written by [`save`].
#[derive(Debug)]
pub struct Saved<C: ModelConfig> {
    /// The model, with its trained weights.
    pub model: C::Model,
    /// The config that built it.
    pub config: C,
    /// The tokenizer saved with it, if any.
    pub tokenizer: Option<Tokenizer>,
}

/// Writes `model`, the `config` that builds it and, when given, its `tokenizer` into `dir`
/// (created if needed). A tokenizer left from an earlier save into the same folder is removed
/// when none is given, so the folder never pairs a model with another model's tokenizer. A
/// folder holding files kiln did not write is refused, naming them, unless `dir` is
/// [`OutputDir::forced`](kiln_base::OutputDir::forced).
pub fn save<C: ModelConfig>(
    dir: impl Into<OutputDir>,
    model: &C::Model,
    config: &C,
    tokenizer: Option<&Tokenizer>,
) -> Result<()> {
    let out = dir.into();
    out.claim(&[TOKENIZER_FILE])?;
    save_model(model, config, out.clone())?;
    let file = out.path().join(TOKENIZER_FILE);
    match tokenizer {
        Some(tokenizer) => out.write(TOKENIZER_FILE, tokenizer.to_json()?.as_bytes())?,
        None if file.exists() => std::fs::remove_file(&file)?,
        None => {}
    }
    Ok(())
}

/// Reads a folder written by [`save`]: the config, the model it builds with the saved weights,
/// and the tokenizer when the folder has one.
///
/// ```
/// use kiln::prelude::*;
///
/// # fn main() -> kiln::Result<()> {
/// let device = Device::flex();
/// let tokenizer = Tokenizer::char_level("hello world")?;
/// let config = GptConfig::new(tokenizer.vocab_size())
///     .with_block_size(8).with_n_layer(1).with_n_head(2).with_d_model(16);
/// let gpt = config.init(&device)?;
/// let dir = std::env::temp_dir().join(format!("kiln-saved-doc-{}", std::process::id()));
/// kiln::saved::save(&dir, &gpt, &config, Some(&tokenizer))?;
///
/// let saved = kiln::saved::load::<GptConfig>(&dir, &device)?;
/// let ids = saved.tokenizer.expect("saved with one").encode("hello")?;
/// let logits = saved.model.forward(Tensor::from_data(
///     TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]),
///     &device,
/// ))?;
/// assert_eq!(logits.dims(), [1, 5, config.vocab_size]);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn load<C: ModelConfig>(dir: impl AsRef<Path>, device: &Device) -> Result<Saved<C>> {
    let dir = dir.as_ref();
    let (model, config) = load_model::<C>(dir, device)?;
    let file = dir.join(TOKENIZER_FILE);
    let tokenizer = file
        .exists()
        .then(|| Tokenizer::from_file(&file))
        .transpose()?;
    Ok(Saved {
        model,
        config,
        tokenizer,
    })
}
