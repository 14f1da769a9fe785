//! Reading the tensors of a HuggingFace checkpoint (`model.safetensors`, or shards listed in
//! `model.safetensors.index.json`), with errors that name the tensor, the file and both shapes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

/// The tensors of one checkpoint, read lazily by name.
pub struct HfWeights {
    /// Each file, memory-mapped: a checkpoint is never copied whole into memory.
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
    /// Prefix the model class put before every name (`transformer.`, `bert.`), or "".
    prefix: String,
}

impl HfWeights {
    /// Opens `dir/model.safetensors`, or every shard named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_file = dir.join("model.safetensors.index.json");
        let paths = if single.exists() {
            vec![single]
        } else if index_file.exists() {
            let text =
                std::fs::read_to_string(&index_file).map_err(|e| ModelError::io(&index_file, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::format(&index_file, e))?;
            let mut shards: Vec<String> = json["weight_map"]
                .as_object()
                .ok_or_else(|| ModelError::format(&index_file, "no `weight_map` object"))?
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(ModelError::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors (kiln reads safetensors checkpoints; convert .bin files first)",
                ),
            ));
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the map is only read, and lives as long as `self`. As with every mmap,
            // another process truncating the file while it is mapped would fault; checkpoints
            // are not rewritten in place while a model loads from them.
            let bytes = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let names: Vec<String> = SafeTensors::deserialize(&bytes)
                .map_err(|e| ModelError::format(&path, e))?
                .names()
                .into_iter()
                .map(|name| name.to_string())
                .collect();
            for name in names {
                index.insert(name, files.len());
            }
            files.push((path, bytes));
        }
        Ok(Self {
            files,
            index,
            prefix: String::new(),
        })
    }

    /// Strips `prefix` from every name that follows, when the file's names carry it (HF stores
    /// `transformer.h.0...` for `GPT2LMHeadModel` but `h.0...` for `GPT2Model`).
    pub fn detect_prefix(&mut self, prefix: &str, probe: &str) {
        if self.index.contains_key(&format!("{prefix}{probe}")) {
            self.prefix = prefix.to_owned();
        }
    }

    /// Whether the checkpoint has `name` (after the prefix).
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(&self.full_name(name)) || self.index.contains_key(name)
    }

    fn full_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Reads `name` (or, for old checkpoints, the first of `aliases` present) as an f32 tensor
    /// of shape `expected`.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>> {
        self.tensor_any(&[name], expected, device)
    }

    /// Like [`tensor`](Self::tensor) with alternative names, the first one reported if none is
    /// present. Names are tried with the prefix first, then as written.
    pub fn tensor_any<const D: usize>(
        &self,
        names: &[&str],
        expected: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>> {
        let found = names.iter().find_map(|name| {
            let full = self.full_name(name);
            if let Some(&file) = self.index.get(&full) {
                Some((full, file))
            } else {
                self.index
                    .get(*name)
                    .map(|&file| ((*name).to_owned(), file))
            }
        });
        let Some((full, file)) = found else {
            return Err(ModelError::MissingTensor {
                name: self.full_name(names[0]),
                file: self.files[0].0.clone(),
            });
        };
        let (path, bytes) = &self.files[file];
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| ModelError::format(path, e))?;
        let view = tensors
            .tensor(&full)
            .map_err(|e| ModelError::format(path, e))?;
        if view.shape() != expected {
            return Err(ModelError::ShapeMismatch {
                name: full,
                file: path.clone(),
                expected: expected.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let values = to_f32(view.dtype(), view.data()).ok_or_else(|| {
            ModelError::format(
                path,
                format!("tensor `{full}` has unsupported dtype {:?}", view.dtype()),
            )
        })?;
        Ok(Tensor::from_data(TensorData::new(values, expected), device))
    }
}

fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    let values = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(values)
}
