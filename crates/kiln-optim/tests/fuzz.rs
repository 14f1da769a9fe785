//! Fuzz target: optimizer state bytes, as a checkpoint holds them (`kiln_base::fuzz`; the
//! number of inputs is `KILN_FUZZ_CASES`). Mutations of valid AdamW (AMSGrad), LAMB and SGD
//! states are loaded with `load_state` against a small model and, when accepted, stepped once:
//! a state that loads must not make the step panic.

use std::path::PathBuf;

use burn::module::{Module, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor};
use kiln_base::fuzz;
use kiln_optim::{AdamWConfig, LambConfig, OptimError, SgdConfig, load_state};
use proptest::prelude::*;

#[derive(Module, Debug)]
struct Affine {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

/// The same model (fixed parameter ids, as kiln-train's stable ids) every time.
fn affine(device: &Device) -> Affine {
    let weight = Tensor::<1, Int>::arange(0..12, device)
        .float()
        .reshape([4, 3])
        .div_scalar(10.0);
    Affine {
        weight: Param::initialized(ParamId::from(11), weight.require_grad()),
        bias: Param::initialized(ParamId::from(12), Tensor::ones([3], device).require_grad()),
    }
}

/// The corpus files and the optimizer each belongs to.
const OPTIMIZERS: [&str; 3] = ["adamw.bpk", "lamb.bpk", "sgd.bpk"];

fn optimizer(name: &str, model: &Affine) -> ModuleOptimizer {
    match name {
        "adamw.bpk" => AdamWConfig::new().with_amsgrad(true).init(model),
        "lamb.bpk" => LambConfig::new().init(model),
        _ => SgdConfig::new().with_momentum(0.9).init(model),
    }
    .unwrap()
}

fn step(model: Affine, optimizer: &mut ModuleOptimizer) -> Affine {
    let x = Tensor::<2>::ones([2, 4], &model.weight.device());
    let loss = x
        .matmul(model.weight.val())
        .add(model.bias.val().unsqueeze())
        .sum();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optimizer.step(1e-2, model, grads)
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus/optimizer_state")
}

#[test]
fn fuzz_optimizer_state() {
    let device = Device::flex().autodiff();
    let seeds: Vec<Vec<u8>> = OPTIMIZERS
        .iter()
        .map(|name| std::fs::read(corpus_dir().join(name)).expect("the committed corpus"))
        .collect();
    let strategy = (0..OPTIMIZERS.len())
        .prop_flat_map(move |i| fuzz::mutated(vec![seeds[i].clone()]).prop_map(move |b| (i, b)));
    fuzz::run("optimizer_state", strategy, |(i, bytes)| {
        let model = affine(&device);
        let fresh = optimizer(OPTIMIZERS[i], &model);
        let mut loaded = load_state(fresh, bytes, &model)?;
        step(model, &mut loaded);
        Ok::<_, OptimError>(())
    });
}

/// Writes the corpus: each optimizer's state after two steps (run with `--ignored` after a
/// change of the state format).
#[test]
#[ignore]
fn write_optimizer_state_corpus() {
    let device = Device::flex().autodiff();
    std::fs::create_dir_all(corpus_dir()).unwrap();
    for name in OPTIMIZERS {
        let mut model = affine(&device);
        let mut optim = optimizer(name, &model);
        for _ in 0..2 {
            model = step(model, &mut optim);
        }
        std::fs::write(
            corpus_dir().join(name),
            optim.into_bytes().unwrap().to_vec(),
        )
        .unwrap();
    }
}

/// The corpus loads back whole and steps, and a state of the wrong shape or of another
/// optimizer is a typed error, not a panic in the next step.
#[test]
fn optimizer_state_is_checked_against_the_model() {
    let device = Device::flex().autodiff();
    let read = |name: &str| std::fs::read(corpus_dir().join(name)).unwrap();
    for name in OPTIMIZERS {
        let model = affine(&device);
        let mut loaded = load_state(optimizer(name, &model), read(name), &model).unwrap();
        step(model, &mut loaded);
    }
    // The same parameter ids, other shapes.
    let wide = Affine {
        weight: Param::initialized(
            ParamId::from(11),
            Tensor::ones([4, 5], &device).require_grad(),
        ),
        bias: Param::initialized(ParamId::from(12), Tensor::ones([5], &device).require_grad()),
    };
    let err = load_state(optimizer("sgd.bpk", &wide), read("sgd.bpk"), &wide)
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("the parameter is F32 [4, 5]"),
        "{err}"
    );
    // SGD's momentum under AdamW: its moments are missing.
    let model = affine(&device);
    let err = load_state(optimizer("adamw.bpk", &model), read("sgd.bpk"), &model)
        .err()
        .expect("refused");
    assert!(matches!(err, OptimError::CorruptState(_)), "{err}");
}
