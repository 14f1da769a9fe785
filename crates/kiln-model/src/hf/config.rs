//! Reading fields of a HuggingFace `config.json`.

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

pub(crate) fn read_usize(json: &Value, key: &str, file: &Path) -> Result<usize> {
    json[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| ModelError::format(file, format!("missing or non-integer `{key}`")))
}

pub(crate) fn read_usize_or(json: &Value, key: &str, default: usize) -> usize {
    json[key].as_u64().map_or(default, |v| v as usize)
}

pub(crate) fn read_f64(json: &Value, key: &str) -> Option<f64> {
    json[key].as_f64()
}

pub(crate) fn bool_or(json: &Value, key: &str, default: bool) -> bool {
    json[key].as_bool().unwrap_or(default)
}
