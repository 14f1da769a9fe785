//! Saving and loading kiln's own models: the weights as burnpack (through burn-store), the
//! config as JSON beside them. Files are written atomically: a crash never leaves a torn file.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::Device;

use crate::error::{ModelError, Result};

/// The weights file inside a model folder.
pub const WEIGHTS_FILE: &str = "model.bpk";
/// The config file inside a model folder.
pub const CONFIG_FILE: &str = "config.json";

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| ModelError::io(&tmp, e))?;
    file.sync_all().map_err(|e| ModelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))?;
    if let Some(dir) = path.parent() {
        // Persist the rename itself.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

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
    write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
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

/// The weights of `model` as burnpack bytes; `path` is where they will go (named in errors).
pub fn weights_to_bytes<M: Module>(model: &M, path: &Path) -> Result<Vec<u8>> {
    let mut store = BurnpackStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| ModelError::format(path, e))?;
    let bytes = store.get_bytes().map_err(|e| ModelError::format(path, e))?;
    Ok(bytes.to_vec())
}

/// Fills every parameter of `model` from burnpack `bytes` read from `path` (named in errors).
/// A missing or mis-shaped tensor is an error.
pub fn weights_from_bytes<M: Module>(mut model: M, bytes: Vec<u8>, path: &Path) -> Result<M> {
    let mut store = BurnpackStore::from_bytes(Some(burn::tensor::Bytes::from_bytes_vec(bytes)));
    let result = model
        .load_from(&mut store)
        .map_err(|e| ModelError::format(path, e))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(ModelError::format(
            path,
            format!(
                "missing tensors {:?}, errors {:?}",
                result.missing, result.errors
            ),
        ));
    }
    Ok(model)
}
