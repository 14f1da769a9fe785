//! Small models and datasets shared by the trainer tests.

#![allow(dead_code)]

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_data::{IGNORE_INDEX, LmBatch};
use kiln_model::gpt::{Gpt, GptConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const VOCAB: usize = 13;
pub const SEQ: usize = 6;

/// A tiny GPT on `device` whose weights depend only on `seed`. Tests run in parallel threads
/// that share the backend's generator, so the weights are drawn from a local one.
pub fn tiny_gpt(device: &Device, seed: u64) -> Gpt {
    let gpt = GptConfig::new(VOCAB)
        .with_block_size(SEQ)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(16)
        .init(device)
        .unwrap();
    gpt.map(&mut Redraw(StdRng::seed_from_u64(seed)))
}

/// Redraws every float parameter uniformly in ±0.3 from its own generator, keeping which ones
/// train.
pub struct Redraw(pub StdRng);

impl ModuleMapper for Redraw {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let rng = &mut self.0;
        param.map(|t| refill(t, || rng.random_range(-0.3f32..0.3)))
    }
}

/// Sets every float parameter to NaN, keeping which ones train.
pub struct Poison;

impl ModuleMapper for Poison {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| refill(t, || f32::NAN))
    }
}

/// A fresh tensor of `t`'s shape and device with values drawn from `value`: a leaf of the
/// autodiff graph (as a parameter must be), requiring a gradient when `t` did.
fn refill<const D: usize>(t: Tensor<D>, mut value: impl FnMut() -> f32) -> Tensor<D> {
    let shape = t.shape();
    let values: Vec<f32> = (0..shape.num_elements()).map(|_| value()).collect();
    let fresh = Tensor::<D>::from_data(TensorData::new(values, shape), &t.device());
    if t.is_require_grad() {
        fresh.require_grad()
    } else {
        fresh
    }
}

/// Random sequences whose targets are partly ignored, so micro-batches carry different
/// numbers of loss tokens.
#[derive(Clone)]
pub struct RandomLm {
    items: Vec<(Vec<i64>, Vec<i64>)>,
}

impl RandomLm {
    pub fn new(len: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let items = (0..len)
            .map(|_| {
                let inputs: Vec<i64> = (0..SEQ)
                    .map(|_| rng.random_range(0..VOCAB as i64))
                    .collect();
                let kept = rng.random_range(1..=SEQ);
                let targets = (0..SEQ)
                    .map(|i| {
                        if i < kept {
                            rng.random_range(0..VOCAB as i64)
                        } else {
                            IGNORE_INDEX
                        }
                    })
                    .collect();
                (inputs, targets)
            })
            .collect();
        Self { items }
    }
}

impl Dataset<(Vec<i64>, Vec<i64>)> for RandomLm {
    fn get(&self, index: usize) -> Result<(Vec<i64>, Vec<i64>), DatasetError> {
        self.items
            .get(index)
            .cloned()
            .ok_or_else(|| DatasetError::new(std::io::Error::other("out of range")))
    }
    fn len(&self) -> usize {
        self.items.len()
    }
}

#[derive(Clone, Copy)]
pub struct RandomLmBatcher;

impl Batcher<(Vec<i64>, Vec<i64>), LmBatch> for RandomLmBatcher {
    fn batch(&self, items: Vec<(Vec<i64>, Vec<i64>)>, device: &Device) -> LmBatch {
        let n = items.len();
        let (inputs, targets): (Vec<Vec<i64>>, Vec<Vec<i64>>) = items.into_iter().unzip();
        let tensor = |rows: Vec<Vec<i64>>| {
            Tensor::<2, Int>::from_data(TensorData::new(rows.concat(), [n, SEQ]), device)
        };
        LmBatch {
            inputs: tensor(inputs),
            targets: tensor(targets),
        }
    }
}

/// Every parameter value, in visiting order.
pub fn param_values<M: Module>(model: &M) -> Vec<f32> {
    #[derive(Default)]
    struct Values(Vec<f32>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(
                param
                    .val()
                    .to_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap(),
            );
        }
    }
    let mut v = Values::default();
    model.visit(&mut v);
    v.0
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Rewrites the manifest entry of `file` in the checkpoint folder `folder` to the file's
/// current length and SHA-256: a tampered file that passes the manifest, so the checks behind
/// it are reached.
pub fn rehash(folder: &std::path::Path, file: &str) {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(folder.join(file)).unwrap();
    let path = folder.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for entry in manifest["files"].as_array_mut().unwrap() {
        if entry["name"] == file {
            entry["len"] = bytes.len().into();
            entry["sha256"] = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into();
        }
    }
    std::fs::write(path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

/// Edits the JSON file `file` of the checkpoint folder `folder` and rehashes it.
pub fn edit_json(folder: &std::path::Path, file: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = folder.join(file);
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
    if file != "manifest.json" {
        rehash(folder, file);
    }
}
