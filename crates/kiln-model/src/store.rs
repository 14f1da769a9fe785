//! Saving and loading kiln's own models: the weights as burnpack (through burn-store), the
//! config as JSON beside them. Files are written atomically: a crash never leaves a torn file.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Device;
pub use kiln_core::store::{weights_from_bytes, weights_to_bytes, write_atomic};

use crate::error::{ModelError, Result};

/// The weights file inside a model folder.
pub const WEIGHTS_FILE: &str = "model.bpk";
/// The config file inside a model folder.
pub const CONFIG_FILE: &str = "config.json";

/// Saves `model` and its `config` into the folder `dir` (created if needed).
pub fn save_model<M: Module, C: Config>(
    model: &M,
    config: &C,
    dir: impl AsRef<Path>,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let weights = dir.join(WEIGHTS_FILE);
    write_atomic(&weights, &weights_to_bytes(model, &weights)?)?;
    let json = serde_json::to_string_pretty(config)
        .map_err(|e| ModelError::format(dir.join(CONFIG_FILE), e))?;
    Ok(write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())?)
}

/// Loads a model saved by [`save_model`]: reads the config, builds the model with `init` and
/// fills every parameter from the weights. A missing or mis-shaped tensor is an error.
pub fn load_model<M: Module, C: Config>(
    dir: impl AsRef<Path>,
    device: &Device,
    init: impl FnOnce(&C, &Device) -> Result<M>,
) -> Result<(M, C)> {
    let dir = dir.as_ref();
    let config_file = dir.join(CONFIG_FILE);
    let config =
        C::load(&config_file).map_err(|e| ModelError::format(&config_file, format!("{e:?}")))?;
    let mut model = init(&config, device)?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.exists() {
        return Err(ModelError::io(
            &weights,
            std::io::Error::new(std::io::ErrorKind::NotFound, "weights file not found"),
        ));
    }
    let bytes = std::fs::read(&weights).map_err(|e| ModelError::io(&weights, e))?;
    model = weights_from_bytes(model, bytes, &weights)?;
    Ok((model, config))
}
