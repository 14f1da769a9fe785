//! Saving and loading kiln's own models. A model folder holds
//!
//! | file | contents |
//! |---|---|
//! | [`CONFIG_FILE`] `config.json` | the model's [`ModelConfig`], as JSON: everything that builds it |
//! | [`WEIGHTS_FILE`] `model.bpk` | the weights, as burnpack (through burn-store) |
//! | [`TOKENIZER_FILE`] `tokenizer.json` | optional: the tokenizer, written and read by the `kiln` facade (kiln-model leaves it alone) |
//!
//! Every file is written atomically: a crash never leaves a torn file.
//!
//! ```
//! use burn::tensor::Device;
//! use kiln_model::gpt::{Gpt, GptConfig};
//! use kiln_model::store::{load_model, save_model};
//!
//! let device = Device::flex();
//! let config = GptConfig::new(50).with_block_size(8).with_n_layer(1).with_n_head(2).with_d_model(16);
//! let gpt = config.init(&device).unwrap();
//! let dir = std::env::temp_dir().join(format!("kiln-store-doc-{}", std::process::id()));
//! save_model(&gpt, &config, &dir).unwrap();
//! let (loaded, loaded_config): (Gpt, GptConfig) = load_model(&dir, &device).unwrap();
//! assert_eq!(loaded_config.d_model, 16);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Device;
use kiln_base::OutputDir;
pub use kiln_base::store::{weights_from_bytes, weights_to_bytes, write_atomic};

use crate::bert::{
    BertForMaskedLm, BertForMaskedLmConfig, BertForSequenceClassification,
    BertForSequenceClassificationConfig,
};
use crate::error::{ModelError, Result};
use crate::gpt::{Gpt, GptConfig};
use crate::limits::{TEXT_FILE_BYTES, read_config_text};

/// The weights file inside a model folder.
pub const WEIGHTS_FILE: &str = "model.bpk";
/// The config file inside a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer file inside a model folder: reserved for the `kiln` facade, which saves the
/// tokenizer beside the model; [`save_model`] and [`load_model`] neither write nor read it.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A config that describes a model completely, so that [`load_model`] rebuilds the model from
/// the config alone.
///
/// | config | model |
/// |---|---|
/// | [`GptConfig`] | [`Gpt`] |
/// | [`BertForMaskedLmConfig`] | [`BertForMaskedLm`] (no pooler) |
/// | [`BertForSequenceClassificationConfig`] | [`BertForSequenceClassification`] (pooler, `num_labels` classes) |
///
/// A bare [`BertConfig`](crate::bert::BertConfig) is not one: it does not say which head (and
/// whether a pooler) the model has.
pub trait ModelConfig: Config {
    /// The model this config builds.
    type Model: Module;

    /// Builds a freshly initialized model on `device`; errors on an invalid config.
    fn init_model(&self, device: &Device) -> Result<Self::Model>;

    /// Builds the model without drawing its weights (Burn's lazy initialization), for
    /// [`load_model`], which replaces every parameter from the file after checking its shape:
    /// a config whose sizes do not match the weights then allocates nothing of its size.
    /// Defaults to [`init_model`](Self::init_model).
    fn init_model_lazy(&self, device: &Device) -> Result<Self::Model> {
        self.init_model(device)
    }
}

impl ModelConfig for GptConfig {
    type Model = Gpt;

    fn init_model(&self, device: &Device) -> Result<Gpt> {
        self.init(device)
    }

    fn init_model_lazy(&self, device: &Device) -> Result<Gpt> {
        self.init_lazy(device)
    }
}

impl ModelConfig for BertForMaskedLmConfig {
    type Model = BertForMaskedLm;

    fn init_model(&self, device: &Device) -> Result<BertForMaskedLm> {
        self.bert.init_masked_lm(device)
    }

    fn init_model_lazy(&self, device: &Device) -> Result<BertForMaskedLm> {
        self.bert.init_masked_lm_lazy(device)
    }
}

impl ModelConfig for BertForSequenceClassificationConfig {
    type Model = BertForSequenceClassification;

    fn init_model(&self, device: &Device) -> Result<BertForSequenceClassification> {
        self.bert.init_classifier(self.num_labels, device)
    }

    fn init_model_lazy(&self, device: &Device) -> Result<BertForSequenceClassification> {
        self.bert.init_classifier_lazy(self.num_labels, device)
    }
}

/// Saves `model` and the `config` that builds it into the folder `dir` (created if needed):
/// [`WEIGHTS_FILE`] and [`CONFIG_FILE`], each written atomically. A folder holding files kiln
/// did not write is refused, naming them, unless `dir` is [`OutputDir::forced`]
/// ([`kiln_base::files`]).
pub fn save_model<C: ModelConfig>(
    model: &C::Model,
    config: &C,
    dir: impl Into<OutputDir>,
) -> Result<()> {
    let out = dir.into();
    out.claim(&[WEIGHTS_FILE, CONFIG_FILE])?;
    let weights = out.path().join(WEIGHTS_FILE);
    out.write(WEIGHTS_FILE, &weights_to_bytes(model, &weights)?)?;
    let json = serde_json::to_string_pretty(config)
        .map_err(|e| ModelError::format(out.path().join(CONFIG_FILE), e))?;
    Ok(out.write(CONFIG_FILE, json.as_bytes())?)
}

/// Loads a model saved by [`save_model`]: reads the config, builds the model from it and
/// fills every parameter from the weights; returns both. The config type says which model:
/// `load_model::<GptConfig>(dir, &device)` gives `(Gpt, GptConfig)`.
///
/// A missing file, a config of another model type, and a missing or mis-shaped tensor are
/// errors.
pub fn load_model<C: ModelConfig>(dir: impl AsRef<Path>, device: &Device) -> Result<(C::Model, C)> {
    let dir = dir.as_ref();
    let config_file = dir.join(CONFIG_FILE);
    let weights = dir.join(WEIGHTS_FILE);
    for file in [&config_file, &weights] {
        if !file.exists() {
            return Err(ModelError::io(
                file,
                std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            ));
        }
    }
    let config = read_config_text(&config_file)?;
    kiln_base::files::regular_file(&weights)?;
    let bytes = std::fs::read(&weights).map_err(|e| ModelError::io(&weights, e))?;
    model_from_bytes(config.as_bytes(), bytes, dir, device)
}

/// [`load_model`] on the bytes of a folder's [`CONFIG_FILE`] and [`WEIGHTS_FILE`] (`dir` names
/// them in errors). Corrupt bytes are an error, never a panic: the config's sizes are bounded
/// by [`limits`](crate::limits), the model is built without drawing its weights, and
/// burn-store checks every tensor's shape against it (burnpack's own ceilings bound the
/// header, the tensor count and each tensor's size).
pub fn model_from_bytes<C: ModelConfig>(
    config: &[u8],
    weights: Vec<u8>,
    dir: &Path,
    device: &Device,
) -> Result<(C::Model, C)> {
    let config_file = dir.join(CONFIG_FILE);
    TEXT_FILE_BYTES.check(
        &format!("the size of {} in bytes", config_file.display()),
        config.len() as u64,
    )?;
    let config =
        C::load_binary(config).map_err(|e| ModelError::format(&config_file, format!("{e:?}")))?;
    let model = config.init_model_lazy(device)?;
    let model = weights_from_bytes(model, weights, &dir.join(WEIGHTS_FILE))?;
    Ok((model, config))
}
