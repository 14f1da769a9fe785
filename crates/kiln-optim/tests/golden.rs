//! kiln's optimizers and schedules against PyTorch / timm / transformers trajectories made by
//! `scripts/make_optim_fixtures.py` (fixtures in `tests/fixtures/`).

use burn::module::{Module, Param};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use kiln_optim::schedule::Anneal;
use kiln_optim::{
    AdamConfig, AdamWConfig, CosineWarmRestartsConfig, DecayShape, ExponentialDecayConfig,
    LambConfig, OneCycleConfig, SgdConfig, StepDecayConfig, WarmupDecayConfig,
};
use serde_json::Value;

#[derive(Module, Debug)]
struct Dense {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
struct Norm {
    gamma: Param<Tensor<1>>,
}

/// Four parameters of ranks 1-3; `dense.bias` and `norm.gamma` fall in the default no-decay
/// group, as in the Python script's second parameter group.
#[derive(Module, Debug)]
struct Net {
    dense: Dense,
    norm: Norm,
    kernel: Param<Tensor<3>>,
}

const NAMES: [&str; 4] = ["dense.weight", "dense.bias", "norm.gamma", "kernel"];

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn net(init: &Value, device: &Device) -> Net {
    let v = |n: &str| floats(&init[n]["values"]);
    Net {
        dense: Dense {
            weight: Param::from_tensor(tensor(v("dense.weight"), [4, 3], device)),
            bias: Param::from_tensor(tensor(v("dense.bias"), [4], device)),
        },
        norm: Norm {
            gamma: Param::from_tensor(tensor(v("norm.gamma"), [3], device)),
        },
        kernel: Param::from_tensor(tensor(v("kernel"), [2, 3, 2], device)),
    }
}

/// The gradients of `loss = Σ param·G`, which are exactly the stored `G`s.
fn grads(model: &Net, g: &Value, device: &Device) -> GradientsParams {
    let loss = (model.dense.weight.val() * tensor(floats(&g["dense.weight"]), [4, 3], device))
        .sum()
        + (model.dense.bias.val() * tensor(floats(&g["dense.bias"]), [4], device)).sum()
        + (model.norm.gamma.val() * tensor(floats(&g["norm.gamma"]), [3], device)).sum()
        + (model.kernel.val() * tensor(floats(&g["kernel"]), [2, 3, 2], device)).sum();
    GradientsParams::from_grads(loss.backward(), model)
}

fn values(model: &Net) -> [Vec<f32>; 4] {
    let v = |t: TensorData| t.try_into_vec_as::<f32>().unwrap();
    [
        v(model.dense.weight.val().into_data()),
        v(model.dense.bias.val().into_data()),
        v(model.norm.gamma.val().into_data()),
        v(model.kernel.val().into_data()),
    ]
}

enum Built {
    Plain(ModuleOptimizer),
    Lamb(ModuleOptimizer, LambConfig),
}

fn build(kiln: &Value, model: &Net) -> Built {
    let f = |key: &str, default: f64| kiln.get(key).and_then(Value::as_f64).unwrap_or(default);
    let b = |key: &str| kiln.get(key).and_then(Value::as_bool).unwrap_or(false);
    match kiln["optimizer"].as_str().unwrap() {
        "adamw" => Built::Plain(
            AdamWConfig::new()
                .with_weight_decay(f("weight_decay", 0.0))
                .with_amsgrad(b("amsgrad"))
                .init(model)
                .unwrap(),
        ),
        "adam" => Built::Plain(
            AdamConfig::new()
                .with_weight_decay(f("weight_decay", 0.0))
                .init(model)
                .unwrap(),
        ),
        "sgd" => Built::Plain(
            SgdConfig::new()
                .with_momentum(f("momentum", 0.0))
                .with_dampening(f("dampening", 0.0))
                .with_nesterov(b("nesterov"))
                .with_weight_decay(f("weight_decay", 0.0))
                .init(model)
                .unwrap(),
        ),
        "lamb" => {
            let config = LambConfig::new()
                .with_weight_decay(f("weight_decay", 0.0))
                .with_bias_correction(
                    kiln.get("bias_correction")
                        .is_none_or(|v| v.as_bool().unwrap()),
                )
                .with_gamma_lower(f("gamma_lower", 0.0))
                .with_gamma_upper(kiln.get("gamma_upper").and_then(Value::as_f64))
                .with_max_grad_norm(kiln.get("max_grad_norm").and_then(Value::as_f64));
            Built::Lamb(config.init(model).unwrap(), config)
        }
        other => panic!("unknown optimizer {other}"),
    }
}

#[test]
fn optimizers_follow_pytorch_and_timm_trajectories() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/optimizers.json")).unwrap();
    let device = Device::flex().autodiff();
    let lrs = floats(&fixture["lrs"]);
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut model = net(&fixture["init"], &device);
        let mut built = build(&case["kiln"], &model);
        let trajectory = case["trajectory"].as_array().unwrap();
        assert!(trajectory.len() >= 10);
        let mut worst = 0f32;
        for (step, expected) in trajectory.iter().enumerate() {
            let g = grads(&model, &fixture["grads"][step], &device);
            let lr = lrs[step] as f64;
            model = match &mut built {
                Built::Plain(optim) => optim.step(lr, model, g),
                Built::Lamb(optim, config) => {
                    let (g, _norm) = config.clip_gradients(&model, g).unwrap();
                    optim.step(lr, model, g)
                }
            };
            for (actual, param) in values(&model).iter().zip(NAMES) {
                let expected = floats(&expected[param]);
                for (a, e) in actual.iter().zip(&expected) {
                    let diff = (a - e).abs();
                    worst = worst.max(diff);
                    assert!(
                        diff <= 1e-5,
                        "{name} step {step} {param}: kiln {a} torch {e} (diff {diff})"
                    );
                }
            }
        }
        println!("{name}: max abs diff {worst:e}");
    }
}

fn scheduler(kiln: &Value) -> Box<dyn LrScheduler> {
    let f = |key: &str| kiln[key].as_f64().unwrap();
    let u = |key: &str| kiln[key].as_u64().unwrap() as usize;
    if let Some(shape) = kiln.get("shape").and_then(Value::as_str) {
        let shape = match shape {
            "constant" => DecayShape::Constant,
            "linear" => DecayShape::Linear,
            "cosine" => DecayShape::Cosine {
                num_cycles: f("num_cycles"),
                min_lr_ratio: f("min_lr_ratio"),
            },
            "polynomial" => DecayShape::Polynomial {
                power: f("power"),
                end_lr: f("end_lr"),
            },
            "inverse_sqrt" => DecayShape::InverseSqrt {
                timescale: kiln.get("timescale").map(|v| v.as_u64().unwrap() as usize),
            },
            other => panic!("unknown shape {other}"),
        };
        return Box::new(
            WarmupDecayConfig::new(f("peak_lr"), u("warmup_steps"))
                .with_total_steps(Some(u("total_steps")))
                .with_shape(shape)
                .init()
                .unwrap(),
        );
    }
    match kiln["kind"].as_str().unwrap() {
        "sgdr" => Box::new(
            CosineWarmRestartsConfig::new(f("base_lr"), u("t_0"))
                .with_t_mult(u("t_mult"))
                .with_eta_min(f("eta_min"))
                .init()
                .unwrap(),
        ),
        "one_cycle" => {
            let mut config =
                OneCycleConfig::new(f("max_lr")).with_total_steps(Some(u("total_steps")));
            if let Some(p) = kiln.get("pct_start") {
                config = config.with_pct_start(p.as_f64().unwrap());
            }
            if kiln.get("three_phase").is_some() {
                config = config.with_three_phase(true);
            }
            if kiln.get("anneal").is_some() {
                config = config.with_anneal(Anneal::Linear);
            }
            Box::new(config.init().unwrap())
        }
        "step" => Box::new(
            StepDecayConfig::new(f("base_lr"), u("step_size"))
                .with_gamma(f("gamma"))
                .init()
                .unwrap(),
        ),
        "exponential" => Box::new(
            ExponentialDecayConfig::new(f("base_lr"), f("gamma"))
                .init()
                .unwrap(),
        ),
        other => panic!("unknown schedule {other}"),
    }
}

#[test]
fn schedules_match_transformers_and_pytorch_at_every_step() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/schedules.json")).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut scheduler = scheduler(&case["kiln"]);
        for (step, expected) in case["lrs"].as_array().unwrap().iter().enumerate() {
            let expected = expected.as_f64().unwrap();
            let lr = scheduler.step();
            assert!(
                (lr - expected).abs() <= 1e-12 + 1e-9 * expected.abs(),
                "{name} step {step}: kiln {lr} reference {expected}"
            );
        }
    }
}
