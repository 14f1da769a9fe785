//! Saving and loading compressed models, in a file whose size is the model's real size.
//!
//! One file: the 8 bytes `KILNCZ01`, a little-endian u64 header length, a JSON header (the
//! model's config and an index of the tensors), then the tensors' bytes. Each tensor is stored
//! in the smallest of four encodings:
//!
//! | encoding | bytes |
//! |---|---|
//! | `f32` | 4 per element |
//! | `f32_sparse` | a bitmap (1 bit per element) + 4 per non-zero |
//! | `i8` | 1 per element + 5 per channel (f32 scale, i8 zero point) |
//! | `i8_sparse` | a bitmap + 1 per non-zero + 5 per channel |
//! | `bits` | 1 bit per element (pruning masks) |
//!
//! so a 50%-sparse f32 matrix takes ~53% of its dense size and int8 ~25%.
//!
//! Reading never trusts the file: the header length, every tensor's offsets and lengths are
//! checked against the file's size with checked arithmetic, a tensor's element count
//! (a u128 product, at most kiln-model's [`PARAMS`] ceiling) must fit the bytes its encoding
//! needs before anything is allocated, int8 parameters come one per row or one per tensor, and
//! the model's config is bounded by kiln-model's ceilings; the model is built without drawing
//! its weights and every tensor is checked against its shape before it is filled in. Corrupt
//! bytes are a [`CompressError`], never a panic (`tests/fuzz.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use kiln_model::gpt::{Gpt, GptConfig};
use serde::{Deserialize, Serialize};

use crate::error::{CompressError, Result};
use crate::params::{WriteMode, param_shapes, read_params, write_params};
use crate::quantize::{QuantConfig, QuantMode, QuantParams, QuantizedTensor};
use crate::quantized_gpt::QuantizedGpt;
use crate::quantized_linear::{ActivationQuant, QuantizedLinear};
use kiln_model::limits::PARAMS;

const MAGIC: &[u8; 8] = b"KILNCZ01";

/// A tensor as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredTensor {
    /// Plain f32 values (zeros stored sparsely when that is smaller).
    F32 {
        /// Shape.
        shape: Vec<usize>,
        /// Row-major values.
        values: Vec<f32>,
    },
    /// An int8 tensor with per-row (or per-tensor) parameters.
    Int8(QuantizedTensor),
    /// A 0/1 tensor (a pruning mask): one bit per element.
    Bits {
        /// Shape.
        shape: Vec<usize>,
        /// The bits, row-major.
        values: Vec<bool>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    name: String,
    encoding: String,
    shape: Vec<usize>,
    offset: u64,
    len: u64,
    /// Number of (scale, zero point) pairs, for int8.
    #[serde(default)]
    channels: usize,
    #[serde(default)]
    asymmetric: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    meta: serde_json::Value,
    tensors: Vec<Entry>,
}

/// Named tensors plus free-form metadata (the model config), written as one file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Archive {
    /// Metadata (JSON).
    pub meta: serde_json::Value,
    /// Tensors by name.
    pub tensors: BTreeMap<String, StoredTensor>,
}

fn bitmap(nonzero: impl Iterator<Item = bool>, n: usize) -> Vec<u8> {
    let mut bits = vec![0u8; n.div_ceil(8)];
    for (i, nz) in nonzero.enumerate() {
        if nz {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    bits
}

fn bit(bits: &[u8], i: usize) -> bool {
    bits[i / 8] >> (i % 8) & 1 == 1
}

fn encode(name: &str, tensor: &StoredTensor, blob: &mut Vec<u8>) -> Entry {
    let offset = blob.len() as u64;
    let (encoding, shape, channels, asymmetric) = match tensor {
        StoredTensor::F32 { shape, values } => {
            let n = values.len();
            let nnz = values.iter().filter(|&&v| v != 0.0).count();
            if n.div_ceil(8) + 4 * nnz < 4 * n {
                blob.extend(bitmap(values.iter().map(|&v| v != 0.0), n));
                values
                    .iter()
                    .filter(|&&v| v != 0.0)
                    .for_each(|v| blob.extend(v.to_le_bytes()));
                ("f32_sparse", shape.clone(), 0, false)
            } else {
                values.iter().for_each(|v| blob.extend(v.to_le_bytes()));
                ("f32", shape.clone(), 0, false)
            }
        }
        StoredTensor::Bits { shape, values } => {
            blob.extend(bitmap(values.iter().copied(), values.len()));
            ("bits", shape.clone(), 0, false)
        }
        StoredTensor::Int8(q) => {
            // The codes of exact zeros: the zero point of their row.
            let zero_of = |i: usize| q.params_of(i / q.shape[1]).zero_point as i8;
            let n = q.values.len();
            let nnz = q
                .values
                .iter()
                .enumerate()
                .filter(|&(i, &v)| v != zero_of(i))
                .count();
            let sparse = n.div_ceil(8) + nnz < n;
            if sparse {
                blob.extend(bitmap(
                    q.values.iter().enumerate().map(|(i, &v)| v != zero_of(i)),
                    n,
                ));
                q.values
                    .iter()
                    .enumerate()
                    .filter(|&(i, &v)| v != zero_of(i))
                    .for_each(|(_, &v)| blob.push(v as u8));
            } else {
                blob.extend(q.values.iter().map(|&v| v as u8));
            }
            q.params
                .iter()
                .for_each(|p| blob.extend(p.scale.to_le_bytes()));
            q.params
                .iter()
                .for_each(|p| blob.push(p.zero_point as i8 as u8));
            let encoding = if sparse { "i8_sparse" } else { "i8" };
            (
                encoding,
                q.shape.to_vec(),
                q.params.len(),
                q.mode == QuantMode::Asymmetric,
            )
        }
    };
    Entry {
        name: name.into(),
        encoding: encoding.into(),
        shape,
        offset,
        len: blob.len() as u64 - offset,
        channels,
        asymmetric,
    }
}

fn decode(entry: &Entry, bytes: &[u8], file: &Path) -> Result<StoredTensor> {
    let bad = |m: &str| CompressError::format(file, format!("tensor `{}`: {m}", entry.name));
    let dims: Vec<u64> = entry.shape.iter().map(|&d| d as u64).collect();
    let n = PARAMS.check_product(&format!("the size of tensor `{}`", entry.name), &dims)?;
    // Every encoding takes at least a bit per element: a count the bytes cannot hold is
    // refused before anything of its size is allocated.
    if n.div_ceil(8) > bytes.len() {
        return Err(bad("truncated"));
    }
    let mut at = 0usize;
    let mut take = |len: Option<usize>| -> Result<&[u8]> {
        let s = len
            .and_then(|len| bytes.get(at..at.checked_add(len)?))
            .ok_or_else(|| bad("truncated"))?;
        at += s.len();
        Ok(s)
    };
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    match entry.encoding.as_str() {
        "f32" => Ok(StoredTensor::F32 {
            shape: entry.shape.clone(),
            values: f32s(take(n.checked_mul(4))?),
        }),
        "f32_sparse" => {
            let bits = take(Some(n.div_ceil(8)))?.to_vec();
            let nnz = (0..n).filter(|&i| bit(&bits, i)).count();
            let mut nz = f32s(take(nnz.checked_mul(4))?).into_iter();
            let values = (0..n)
                .map(|i| {
                    if bit(&bits, i) {
                        nz.next().unwrap_or(0.0)
                    } else {
                        0.0
                    }
                })
                .collect();
            Ok(StoredTensor::F32 {
                shape: entry.shape.clone(),
                values,
            })
        }
        "bits" => {
            let bits = take(Some(n.div_ceil(8)))?;
            Ok(StoredTensor::Bits {
                shape: entry.shape.clone(),
                values: (0..n).map(|i| bit(bits, i)).collect(),
            })
        }
        "i8" | "i8_sparse" => {
            if entry.shape.len() != 2 || !(entry.channels == 1 || entry.channels == entry.shape[0])
            {
                return Err(bad(
                    "int8 tensors are [channels, len] with one parameter pair per channel or one \
                     for the tensor",
                ));
            }
            let len = entry.shape[1];
            let channels = entry.channels;
            // The parameters sit after the codes; read the codes' bitmap first when sparse.
            let (bits, nnz) = if entry.encoding == "i8_sparse" {
                let bits = take(Some(n.div_ceil(8)))?.to_vec();
                let nnz = (0..n).filter(|&i| bit(&bits, i)).count();
                (Some(bits), nnz)
            } else {
                (None, n)
            };
            let codes: Vec<i8> = take(Some(nnz))?.iter().map(|&b| b as i8).collect();
            let scales = f32s(take(channels.checked_mul(4))?);
            let zero_points: Vec<i32> = take(Some(channels))?
                .iter()
                .map(|&b| b as i8 as i32)
                .collect();
            let params: Vec<QuantParams> = scales
                .into_iter()
                .zip(zero_points)
                .map(|(scale, zero_point)| QuantParams { scale, zero_point })
                .collect();
            let values = match bits {
                None => codes,
                Some(bits) => {
                    let mut nz = codes.into_iter();
                    (0..n)
                        .map(|i| {
                            if bit(&bits, i) {
                                nz.next().unwrap_or(0)
                            } else {
                                params[(i / len).min(channels - 1)].zero_point as i8
                            }
                        })
                        .collect()
                }
            };
            let mode = if entry.asymmetric {
                QuantMode::Asymmetric
            } else {
                QuantMode::Symmetric
            };
            Ok(StoredTensor::Int8(QuantizedTensor {
                shape: [entry.shape[0], len],
                values,
                params,
                mode,
            }))
        }
        other => Err(bad(&format!("unknown encoding `{other}`"))),
    }
}

impl Archive {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut blob = Vec::new();
        let tensors = self
            .tensors
            .iter()
            .map(|(name, t)| encode(name, t, &mut blob))
            .collect();
        let header = serde_json::to_vec(&Header {
            meta: self.meta.clone(),
            tensors,
        })
        .map_err(|e| CompressError::arg(format!("cannot encode the header: {e}")))?;
        let mut bytes = Vec::with_capacity(16 + header.len() + blob.len());
        bytes.extend(MAGIC);
        bytes.extend((header.len() as u64).to_le_bytes());
        bytes.extend(header);
        bytes.extend(blob);
        Ok(bytes)
    }

    /// Writes the archive to `path` atomically; returns the number of bytes written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<u64> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| CompressError::Io {
                file: dir.into(),
                source,
            })?;
        }
        kiln_model::store::write_atomic(path, &bytes)?;
        Ok(bytes.len() as u64)
    }

    /// Parses an archive from bytes (`file` names it in errors).
    pub fn from_bytes(bytes: &[u8], file: &Path) -> Result<Self> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(CompressError::format(file, "not a kiln-compress archive"));
        }
        let header_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
        let header_end = usize::try_from(header_len)
            .ok()
            .and_then(|len| len.checked_add(16))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| CompressError::format(file, "truncated header"))?;
        let header: Header = serde_json::from_slice(&bytes[16..header_end])
            .map_err(|e| CompressError::format(file, e))?;
        let blob = &bytes[header_end..];
        let mut tensors = BTreeMap::new();
        for entry in &header.tensors {
            let range = usize::try_from(entry.offset)
                .ok()
                .zip(usize::try_from(entry.len).ok())
                .and_then(|(start, len)| Some(start..start.checked_add(len)?));
            let slice = range.and_then(|r| blob.get(r)).ok_or_else(|| {
                CompressError::format(file, format!("tensor `{}` is truncated", entry.name))
            })?;
            tensors.insert(entry.name.clone(), decode(entry, slice, file)?);
        }
        Ok(Self {
            meta: header.meta,
            tensors,
        })
    }

    /// Reads an archive written by [`save`](Self::save).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        kiln_base::files::regular_file(path)?;
        let bytes = std::fs::read(path).map_err(|source| CompressError::Io {
            file: path.into(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }
}

/// The config that rebuilds `gpt`'s shapes: `config` with `d_ff` set to the (possibly pruned)
/// feed-forward width. Errors when blocks differ in width or heads differ from the config.
pub fn config_of(gpt: &Gpt, config: &GptConfig) -> Result<GptConfig> {
    let widths: Vec<usize> = gpt
        .blocks
        .iter()
        .map(|b| b.ffn.up.weight.dims()[1])
        .collect();
    let Some(&d_ff) = widths.first() else {
        return Err(CompressError::EmptyModel("the model has no blocks".into()));
    };
    if widths.iter().any(|&w| w != d_ff) {
        return Err(CompressError::arg(format!(
            "blocks have different feed-forward widths {widths:?}; a GptConfig has one d_ff"
        )));
    }
    if let Some(b) = gpt
        .blocks
        .iter()
        .position(|b| b.attn.n_head != config.n_head)
    {
        return Err(CompressError::arg(format!(
            "block {b} has {} heads, the config {}: a GptConfig has one head count, so a GPT \
             with heads removed cannot be saved yet",
            gpt.blocks[b].attn.n_head, config.n_head
        )));
    }
    Ok(config.clone().with_d_ff(Some(d_ff)))
}

/// Saves a (pruned) f32 GPT: zeros are stored sparsely, so pruning shows on disk.
pub fn save_gpt(gpt: &Gpt, config: &GptConfig, path: impl AsRef<Path>) -> Result<u64> {
    let config = config_of(gpt, config)?;
    let mut archive = Archive {
        meta: serde_json::json!({ "kind": "gpt", "config": serde_json::to_value(&config).map_err(|e| CompressError::arg(e.to_string()))? }),
        tensors: BTreeMap::new(),
    };
    for p in read_params(gpt, &|_, _| true) {
        archive.tensors.insert(
            p.path,
            StoredTensor::F32 {
                shape: p.shape,
                values: p.values,
            },
        );
    }
    archive.save(path)
}

fn gpt_config(archive: &Archive, path: &Path) -> Result<GptConfig> {
    serde_json::from_value(archive.meta["config"].clone())
        .map_err(|e| CompressError::format(path, format!("bad config: {e}")))
}

/// Builds a `Gpt` from `config` on `device` without drawing its weights, and fills every
/// parameter from `archive`'s f32 tensors, each checked against the parameter's shape first.
/// With `int8_linears`, the linear layers' weights are left to the caller (they are int8 in
/// the archive); every other parameter must be there as f32.
fn fill_gpt(
    archive: &Archive,
    config: &GptConfig,
    device: &Device,
    path: &Path,
    int8_linears: bool,
) -> Result<Gpt> {
    let gpt = config.init_lazy(device)?;
    let skipped: Vec<String> = if int8_linears {
        gpt.linears()
            .into_iter()
            .map(|(name, _)| format!("{name}.weight"))
            .collect()
    } else {
        Vec::new()
    };
    let shapes = param_shapes(&gpt);
    // Every tensor of the archive has a place in the model, or the config does not describe
    // the weights (fewer layers, no bias): refused, never ignored. A tied model's int8 head
    // copy is the one optional tensor.
    let tied_head = int8_linears && gpt.lm_head.is_none();
    let mut unused: Vec<&str> = archive
        .tensors
        .keys()
        .map(String::as_str)
        .filter(|name| {
            let known = shapes.iter().any(|(p, _)| p == name)
                || skipped.iter().any(|p| p == name)
                || (tied_head && *name == "lm_head.weight");
            !known
        })
        .collect();
    if !unused.is_empty() {
        unused.sort_unstable();
        return Err(CompressError::format(
            path,
            format!(
                "{} tensor(s) the model of its config has no place for: {}",
                unused.len(),
                unused.join(", ")
            ),
        ));
    }
    let mut values = BTreeMap::new();
    for (param, expected) in shapes {
        if skipped.contains(&param) {
            continue;
        }
        match archive.tensors.get(&param) {
            Some(StoredTensor::F32 { shape, values: v }) => {
                if shape != &expected {
                    return Err(CompressError::ShapeMismatch {
                        path: param,
                        expected,
                        found: shape.clone(),
                    });
                }
                values.insert(param, (shape.clone(), v.clone()));
            }
            _ => {
                return Err(CompressError::format(
                    path,
                    format!("missing f32 tensor `{param}`"),
                ));
            }
        }
    }
    Ok(write_params(gpt, &values, WriteMode::Replace))
}

/// Loads a GPT saved by [`save_gpt`].
pub fn load_gpt(path: impl AsRef<Path>, device: &Device) -> Result<(Gpt, GptConfig)> {
    let path = path.as_ref();
    let archive = Archive::load(path)?;
    if archive.meta["kind"] != "gpt" {
        return Err(CompressError::format(path, "not an f32 GPT archive"));
    }
    let config = gpt_config(&archive, path)?;
    Ok((fill_gpt(&archive, &config, device, path, false)?, config))
}

/// Saves a quantized GPT: int8 codes as bytes, f32 for the rest. `config` is the config of
/// the `Gpt` it was made from (see [`config_of`] for pruned ones).
pub fn save_quantized_gpt(
    model: &QuantizedGpt,
    config: &GptConfig,
    path: impl AsRef<Path>,
) -> Result<u64> {
    let mut tensors = BTreeMap::new();
    let mut activations = BTreeMap::new();
    for (name, layer) in model.linears() {
        tensors.insert(
            format!("{name}.weight"),
            StoredTensor::Int8(layer.weight.as_ref().clone()),
        );
        if let Some(b) = &layer.bias {
            tensors.insert(
                format!("{name}.bias"),
                StoredTensor::F32 {
                    shape: vec![b.len()],
                    values: b.clone(),
                },
            );
        }
        activations.insert(name, layer.activations);
    }
    let mut others = vec![("token_embedding", model.gpt.token_embedding.weight.val())];
    if let Some(p) = &model.gpt.position_embedding {
        others.push(("position_embedding", p.weight.val()));
    }
    for (name, t) in others {
        tensors.insert(
            format!("{name}.weight"),
            StoredTensor::F32 {
                shape: t.dims().to_vec(),
                values: crate::quantized_linear::to_host(t),
            },
        );
    }
    let mut norms = vec![("final_norm".to_string(), &model.gpt.final_norm)];
    for (i, b) in model.gpt.blocks.iter().enumerate() {
        norms.push((format!("blocks.{i}.attn_norm"), &b.attn_norm));
        norms.push((format!("blocks.{i}.ffn_norm"), &b.ffn_norm));
    }
    for (name, norm) in norms {
        for p in read_params(norm, &|_, _| true) {
            tensors.insert(
                format!("{name}.{}", p.path),
                StoredTensor::F32 {
                    shape: p.shape,
                    values: p.values,
                },
            );
        }
    }
    let meta = serde_json::json!({
        "kind": "quantized_gpt",
        "config": serde_json::to_value(config).map_err(|e| CompressError::arg(e.to_string()))?,
        "activations": serde_json::to_value(&activations).map_err(|e| CompressError::arg(e.to_string()))?,
    });
    Archive { meta, tensors }.save(path)
}

/// Loads a quantized GPT saved by [`save_quantized_gpt`].
pub fn load_quantized_gpt(path: impl AsRef<Path>, device: &Device) -> Result<QuantizedGpt> {
    let path = path.as_ref();
    let archive = Archive::load(path)?;
    if archive.meta["kind"] != "quantized_gpt" {
        return Err(CompressError::format(path, "not a quantized GPT archive"));
    }
    let config = gpt_config(&archive, path)?;
    let activations: BTreeMap<String, ActivationQuant> =
        serde_json::from_value(archive.meta["activations"].clone())
            .map_err(|e| CompressError::format(path, format!("bad activations: {e}")))?;
    // The f32 parts go into a Gpt of the right shapes; the linear layers come from the codes,
    // each checked against its layer's shape before the skeleton's layers are touched.
    let skeleton = fill_gpt(&archive, &config, device, path, true)?;
    let mut weights = BTreeMap::new();
    for (name, layer) in skeleton.linears() {
        let [d_in, d_out] = layer.weight.lazy_shape().dims::<2>();
        let weight = match archive.tensors.get(&format!("{name}.weight")) {
            Some(StoredTensor::Int8(q)) => q.clone(),
            _ => {
                return Err(CompressError::format(
                    path,
                    format!("missing int8 tensor `{name}.weight`"),
                ));
            }
        };
        if weight.shape != [d_out, d_in] {
            return Err(CompressError::ShapeMismatch {
                path: format!("{name}.weight"),
                expected: vec![d_out, d_in],
                found: weight.shape.to_vec(),
            });
        }
        weights.insert(name, weight);
    }
    // A tied output projection has its own int8 copy (`QuantizedGpt::from_gpt_with`), checked
    // against the embedding's shape. Archives written before kiln quantized it have none: it is
    // quantized from the stored embedding then, per channel, as `QuantizedGpt::from_gpt` does.
    let tied = skeleton.lm_head.is_none();
    if tied {
        let [vocab, d_model] = skeleton.token_embedding.weight.lazy_shape().dims::<2>();
        match archive.tensors.get("lm_head.weight") {
            Some(StoredTensor::Int8(q)) if q.shape == [vocab, d_model] => {
                weights.insert("lm_head".to_string(), q.clone());
            }
            Some(StoredTensor::Int8(q)) => {
                return Err(CompressError::ShapeMismatch {
                    path: "lm_head.weight".into(),
                    expected: vec![vocab, d_model],
                    found: q.shape.to_vec(),
                });
            }
            Some(_) => {
                return Err(CompressError::format(
                    path,
                    "`lm_head.weight` is not an int8 tensor",
                ));
            }
            None => {}
        }
    }
    QuantizedGpt::from_gpt_with(&skeleton, |name, layer| {
        let act = activations
            .get(name)
            .copied()
            .unwrap_or(ActivationQuant::Dynamic);
        if tied && name == "lm_head" && !weights.contains_key(name) {
            return QuantizedLinear::from_linear(layer, &QuantConfig::new(), act);
        }
        let weight = weights
            .remove(name)
            .ok_or_else(|| CompressError::format(path, format!("missing layer `{name}`")))?;
        // The bias is the skeleton's, filled from the archive's f32 tensor and shape-checked.
        let bias = layer
            .bias
            .as_ref()
            .map(|b| crate::quantized_linear::to_host(b.val()));
        Ok(QuantizedLinear::from_parts(weight, bias, act))
    })
}
