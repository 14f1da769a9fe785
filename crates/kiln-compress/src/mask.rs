//! Pruning masks that live beside the module: the effective weight is `w ⊙ mask`.
//!
//! A mask is a 0/1 tensor per parameter, keyed by the parameter's path. [`PruningMasks::apply`]
//! zeroes the pruned weights; calling it after every optimizer step (a kiln-train step hook)
//! keeps them exactly zero while fine-tuning, since AdamW's
//! momentum and weight decay would otherwise move them off zero. [`PruningMasks::remove`] makes
//! the pruning permanent (the zeros stay, the masks go), like `torch.nn.utils.prune.remove`.

use std::collections::BTreeMap;

use burn::module::Module;

use crate::archive::{Archive, StoredTensor};
use crate::error::{CompressError, Result};
use crate::params::{WriteMode, read_params, write_params};

/// The masks of one model: parameter path -> (shape, 0/1 values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PruningMasks {
    masks: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// How much of one mask is pruned.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskSparsity {
    /// The parameter's path.
    pub path: String,
    /// Number of elements.
    pub numel: usize,
    /// Number of pruned (masked-out) elements.
    pub pruned: usize,
}

impl PruningMasks {
    /// No masks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the mask of `path` (`keep[i]` is whether element `i` survives), combining with an
    /// existing mask by AND: once pruned, a weight stays pruned.
    pub fn insert(&mut self, path: &str, shape: &[usize], keep: &[bool]) -> Result<()> {
        let numel: usize = shape.iter().product();
        if keep.len() != numel {
            return Err(CompressError::ShapeMismatch {
                path: path.into(),
                expected: shape.to_vec(),
                found: vec![keep.len()],
            });
        }
        let values: Vec<f32> = keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
        match self.masks.get_mut(path) {
            Some((old_shape, old)) => {
                if old_shape != shape {
                    return Err(CompressError::ShapeMismatch {
                        path: path.into(),
                        expected: old_shape.clone(),
                        found: shape.to_vec(),
                    });
                }
                old.iter_mut().zip(values).for_each(|(o, v)| *o *= v);
            }
            None => {
                self.masks.insert(path.into(), (shape.to_vec(), values));
            }
        }
        Ok(())
    }

    /// Combines every mask of `other` into these (AND).
    pub fn merge(&mut self, other: &PruningMasks) -> Result<()> {
        for (path, (shape, values)) in &other.masks {
            let keep: Vec<bool> = values.iter().map(|&v| v != 0.0).collect();
            self.insert(path, shape, &keep)?;
        }
        Ok(())
    }

    /// The mask of `path` as 0/1 values, if there is one.
    pub fn get(&self, path: &str) -> Option<&[f32]> {
        self.masks.get(path).map(|(_, v)| v.as_slice())
    }

    /// The masked parameters' paths.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.masks.keys().map(String::as_str)
    }

    /// Number of masked parameters.
    pub fn len(&self) -> usize {
        self.masks.len()
    }

    /// Whether there are no masks.
    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }

    /// Pruned fraction per masked parameter.
    pub fn sparsity(&self) -> Vec<MaskSparsity> {
        self.masks
            .iter()
            .map(|(path, (_, v))| MaskSparsity {
                path: path.clone(),
                numel: v.len(),
                pruned: v.iter().filter(|&&x| x == 0.0).count(),
            })
            .collect()
    }

    /// Pruned fraction over all masked elements.
    pub fn total_sparsity(&self) -> f64 {
        let rows = self.sparsity();
        let numel: usize = rows.iter().map(|r| r.numel).sum();
        let pruned: usize = rows.iter().map(|r| r.pruned).sum();
        if numel == 0 {
            0.0
        } else {
            pruned as f64 / numel as f64
        }
    }

    /// Checks that every mask names a parameter of `model` with the same shape.
    pub fn check<M: Module>(&self, model: &M) -> Result<()> {
        let params = read_params(model, &|path, _| self.masks.contains_key(path));
        for (path, (shape, _)) in &self.masks {
            match params.iter().find(|p| &p.path == path) {
                None => {
                    return Err(CompressError::arg(format!(
                        "mask for `{path}`, which the model does not have"
                    )));
                }
                Some(p) if &p.shape != shape => {
                    return Err(CompressError::ShapeMismatch {
                        path: path.clone(),
                        expected: p.shape.clone(),
                        found: shape.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// `w ⊙ mask` for every masked parameter; the others are untouched. Parameter ids are kept,
    /// so an optimizer's state still matches the returned model.
    ///
    /// The masks are held on the host and uploaded to the parameter's device at each call (one
    /// f32 per masked weight): negligible next to a training step on the CPU; on a GPU a cached
    /// device copy would save the transfer.
    pub fn apply<M: Module>(&self, model: M) -> M {
        write_params(model, &self.masks, WriteMode::Multiply)
    }

    /// Saves the masks (to resume fine-tuning under them), one bit per weight. Returns the bytes
    /// written.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<u64> {
        let tensors = self
            .masks
            .iter()
            .map(|(p, (shape, values))| {
                let stored = StoredTensor::Bits {
                    shape: shape.clone(),
                    values: values.iter().map(|&v| v != 0.0).collect(),
                };
                (p.clone(), stored)
            })
            .collect();
        Archive {
            meta: serde_json::json!({ "kind": "pruning_masks" }),
            tensors,
        }
        .save(path)
    }

    /// Loads masks written by [`save`](Self::save).
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let archive = Archive::load(path)?;
        if archive.meta["kind"] != "pruning_masks" {
            return Err(CompressError::format(path, "not a pruning-mask archive"));
        }
        let mut masks = Self::new();
        for (name, tensor) in archive.tensors {
            let StoredTensor::Bits { shape, values } = tensor else {
                return Err(CompressError::format(
                    path,
                    format!("`{name}` is not a mask"),
                ));
            };
            let values = values.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
            masks.masks.insert(name, (shape, values));
        }
        Ok(masks)
    }

    /// Makes the pruning permanent: applies the masks and drops them.
    pub fn remove<M: Module>(self, model: M) -> M {
        self.apply(model)
    }
}
