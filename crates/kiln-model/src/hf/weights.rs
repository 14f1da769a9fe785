//! Reading the tensors of a HuggingFace checkpoint (`model.safetensors`, or shards listed in
//! `model.safetensors.index.json`), with errors that name the tensor, the file and both shapes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::HfLoadConfig;
use crate::error::{ModelError, Result};
use crate::limits::read_config_text;

/// The tensors of one checkpoint, read lazily by name.
///
/// safetensors bounds what it reads: the header is at most 100 MB, and every tensor's offsets
/// must lie inside the file and cover it exactly, with its byte length equal to its shape's
/// (checked) product times its dtype's size. So a tensor read here is never larger than the file,
/// and each is checked against the shape the config implies before it is copied.
pub struct HfWeights {
    /// Each file, memory-mapped: a checkpoint is never copied whole into memory.
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
    /// Prefix the model class put before every name (`transformer.`, `bert.`), or "".
    prefix: String,
    /// Accept NaN or infinite values with a warning instead of an error.
    allow_non_finite: bool,
    /// The names read so far (as the files write them): what [`check_all_read`](Self::check_all_read)
    /// compares the checkpoint with.
    read: std::cell::RefCell<std::collections::HashSet<String>>,
    /// Names the caller leaves on purpose (`HfLoadConfig::ignore_tensors`).
    ignored: std::collections::HashSet<String>,
}

impl HfWeights {
    /// Opens `dir/model.safetensors`, or every shard named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, &HfLoadConfig::new())
    }

    /// [`open`](Self::open) with `config`'s policy for non-finite weights.
    pub fn open_with(dir: &Path, config: &HfLoadConfig) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_file = dir.join("model.safetensors.index.json");
        let paths = if single.exists() {
            vec![single]
        } else if index_file.exists() {
            let text = read_config_text(&index_file)?;
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
            if shards.is_empty() {
                return Err(ModelError::format(
                    &index_file,
                    "`weight_map` names no shard",
                ));
            }
            // Shards sit beside the index: a name with a folder in it could point anywhere.
            if let Some(bad) = shards.iter().find(|s| {
                let mut parts = Path::new(s.as_str()).components();
                !matches!(
                    (parts.next(), parts.next()),
                    (Some(std::path::Component::Normal(_)), None)
                )
            }) {
                return Err(ModelError::format(
                    &index_file,
                    format!("shard `{bad}` is not a file name in the checkpoint's folder"),
                ));
            }
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
        let mut weights = Self::from_files(paths, config.allow_non_finite)?;
        weights.ignored = config.ignore_tensors.iter().cloned().collect();
        Ok(weights)
    }

    /// Opens one safetensors file (a peft adapter's `adapter_model.safetensors`).
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::from_files(vec![path.to_path_buf()], false)
    }

    fn from_files(paths: Vec<PathBuf>, allow_non_finite: bool) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let (file, _) = kiln_base::files::open_regular(&path)?;
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
            allow_non_finite,
            read: Default::default(),
            ignored: Default::default(),
        })
    }

    /// Strips `prefix` from every name that follows, when the file's names carry it (HF stores
    /// `transformer.h.0...` for `GPT2LMHeadModel` but `h.0...` for `GPT2Model`).
    pub fn detect_prefix(&mut self, prefix: &str, probe: &str) {
        if self.index.contains_key(&format!("{prefix}{probe}")) {
            self.prefix = prefix.to_owned();
        }
    }

    /// Every tensor name in the checkpoint, as the files write them (sorted).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Fails with [`ModelError::UnexpectedTensor`] naming the first tensor of the checkpoint
    /// that no read took: a checkpoint with more layers than its config, a bias the config
    /// says the model lacks, an untied head in a tied model. `optional` names (the prefix
    /// stripped) the tensors a loader knowingly leaves: transformers' saved buffers and heads
    /// of other classes, listed in each loader; the caller's `ignore_tensors` are left too.
    pub fn check_all_read(&self, optional: impl Fn(&str) -> bool) -> Result<()> {
        let read = self.read.borrow();
        let extra = self.names().into_iter().find(|name| {
            let inner = name.strip_prefix(self.prefix.as_str()).unwrap_or(name);
            !read.contains(*name) && !optional(inner) && !self.ignored.contains(*name)
        });
        let Some(name) = extra else {
            return Ok(());
        };
        let hint = if name == "lm_head.weight" {
            " (the config ties the output layer to the embedding: tie_word_embeddings)"
        } else if name.ends_with(".bias") {
            " (the config says this layer has no bias)"
        } else {
            ""
        };
        Err(ModelError::UnexpectedTensor {
            name: format!("{name}{hint}"),
            file: self.first_file().to_path_buf(),
        })
    }

    /// The first file of the checkpoint (named in errors about the checkpoint as a whole).
    pub fn first_file(&self) -> &Path {
        self.files.first().map_or(Path::new(""), |f| f.0.as_path())
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

    /// The `[out, in]` weight of transformers' `nn.Linear` `name` (`expected` = `[out, in]`)
    /// as Burn's `[in, out]`, transposed on the host: a contiguous tensor, so that a model
    /// loaded from the checkpoint and the same model saved and read back compute bit for bit
    /// alike (a transposed view would take other paths through the gemm).
    pub fn linear_weight(
        &self,
        name: &str,
        [d_out, d_in]: [usize; 2],
        device: &Device,
    ) -> Result<Tensor<2>> {
        let values = self.values(&[name], &[d_out, d_in])?;
        let mut transposed = vec![0.0f32; values.len()];
        for (o, row) in values.chunks_exact(d_in.max(1)).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                transposed[i * d_out + o] = v;
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(transposed, [d_in, d_out]),
            device,
        ))
    }

    /// Like [`tensor`](Self::tensor) with alternative names, the first one reported if none is
    /// present. Names are tried with the prefix first, then as written.
    pub fn tensor_any<const D: usize>(
        &self,
        names: &[&str],
        expected: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>> {
        let values = self.values(names, &expected)?;
        Ok(Tensor::from_data(TensorData::new(values, expected), device))
    }

    /// The values (as f32) of the first of `names` present, checked to have shape `expected`
    /// and (unless allowed) finite values.
    fn values(&self, names: &[&str], expected: &[usize]) -> Result<Vec<f32>> {
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
            let name = names.first().map_or(String::new(), |n| self.full_name(n));
            return Err(ModelError::MissingTensor {
                name,
                file: self.files.first().map(|f| f.0.clone()).unwrap_or_default(),
            });
        };
        self.read.borrow_mut().insert(full.clone());
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
        let non_finite = values.iter().filter(|v| !v.is_finite()).count();
        if non_finite > 0 {
            if !self.allow_non_finite {
                return Err(ModelError::NonFiniteWeights {
                    name: full,
                    file: path.clone(),
                    count: non_finite,
                });
            }
            eprintln!(
                "warning: tensor `{full}` in {} has {non_finite} non-finite values (NaN or \
                 infinite); loaded anyway (allow_non_finite)",
                path.display()
            );
        }
        Ok(values)
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
