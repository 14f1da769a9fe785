//! One-step updates computed by hand: LAMB's zero-norm rule and exclusions, learning-rate
//! multipliers, L1 subgradient, elastic net, coupled versus decoupled decay.

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use kiln_optim::{
    AdamConfig, AdamWConfig, GroupRule, L1Mode, LambConfig, Regularization, SgdConfig,
};

#[derive(Module, Debug)]
struct Lin {
    weight: Param<Tensor<1>>,
    bias: Param<Tensor<1>>,
}

const W: [f32; 3] = [0.5, -1.5, 0.25];
const B: [f32; 3] = [1.0, -2.0, 0.0];
const G: [f32; 3] = [0.2, -0.4, 0.8];
const LR: f64 = 0.1;

fn t(v: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

fn model(w: &[f32], b: &[f32]) -> Lin {
    let device = Device::flex().autodiff();
    Lin {
        weight: Param::from_tensor(t(w, &device)),
        bias: Param::from_tensor(t(b, &device)),
    }
}

/// One step with gradient `G` on both parameters; returns (weight, bias).
fn step(optim: &mut ModuleOptimizer, m: Lin) -> (Vec<f32>, Vec<f32>) {
    let device = Device::flex();
    let mut grads = GradientsParams::new();
    grads.register(m.weight.id, t(&G, &device));
    grads.register(m.bias.id, t(&G, &device));
    let m = optim.step(LR, m, grads);
    let v = |p: &Param<Tensor<1>>| p.val().into_data().try_into_vec_as::<f32>().unwrap();
    (v(&m.weight), v(&m.bias))
}

fn assert_close(actual: &[f32], expected: &[f64], what: &str) {
    for (a, e) in actual.iter().zip(expected) {
        assert!(
            (*a as f64 - e).abs() < 1e-6,
            "{what}: {actual:?} vs {expected:?}"
        );
    }
}

/// Adam's first bias-corrected step direction: `g/(|g| + eps)`.
fn adam_dir(g: f64, eps: f64) -> f64 {
    g / (g.abs() + eps)
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn lamb_trust_ratio_and_exclusions() {
    let eps = 1e-6;
    let wd = 0.01;
    let m = model(&W, &B);
    let mut optim = LambConfig::new().init(&m).unwrap();
    let (w, b) = step(&mut optim, m);
    // weight: r = dir + wd·w, scaled by ‖w‖/‖r‖.
    let r: Vec<f64> = G
        .iter()
        .zip(W)
        .map(|(&g, w)| adam_dir(g as f64, eps) + wd * w as f64)
        .collect();
    let w64: Vec<f64> = W.iter().map(|&x| x as f64).collect();
    let ratio = norm(&w64) / norm(&r);
    let expected: Vec<f64> = w64
        .iter()
        .zip(&r)
        .map(|(w, r)| w - LR * ratio * r)
        .collect();
    assert_close(&w, &expected, "adapted weight");
    // bias: excluded, plain Adam direction, no decay, no ratio.
    let expected: Vec<f64> = B
        .iter()
        .zip(G)
        .map(|(&b, g)| b as f64 - LR * adam_dir(g as f64, eps))
        .collect();
    assert_close(&b, &expected, "excluded bias");
}

#[test]
fn lamb_zero_weight_norm_gives_ratio_one() {
    // A zero-initialized decayed parameter: φ(0)/‖r‖ would be 0 and it would never move.
    let m = model(&[0.0; 3], &B);
    let mut optim = LambConfig::new().with_no_decay(vec![]).init(&m).unwrap();
    let (w, _) = step(&mut optim, m);
    let expected: Vec<f64> = G.iter().map(|&g| -LR * adam_dir(g as f64, 1e-6)).collect();
    assert_close(&w, &expected, "zero weight");
}

#[test]
fn lamb_gamma_clamps_phi() {
    let m = model(&W, &B);
    let mut optim = LambConfig::new()
        .with_weight_decay(0.0)
        .with_groups(vec![
            GroupRule::new("weight".into()).with_layer_adaptation(Some(true)),
        ])
        .with_gamma_upper(Some(0.5))
        .init(&m)
        .unwrap();
    let (w, _) = step(&mut optim, m);
    let r: Vec<f64> = G.iter().map(|&g| adam_dir(g as f64, 1e-6)).collect();
    let ratio = 0.5 / norm(&r); // ‖w‖ ≈ 1.6 clamped to 0.5
    let expected: Vec<f64> = W
        .iter()
        .zip(&r)
        .map(|(&w, r)| w as f64 - LR * ratio * r)
        .collect();
    assert_close(&w, &expected, "clamped phi");
}

#[test]
fn lr_multipliers_scale_the_step_per_group() {
    let m = model(&W, &B);
    let mut optim = SgdConfig::new()
        .with_groups(vec![
            GroupRule::new("weight".into()).with_lr_multiplier(Some(2.0)),
            GroupRule::new("bias".into()).with_lr_multiplier(Some(0.0)),
        ])
        .init(&m)
        .unwrap();
    let (w, b) = step(&mut optim, m);
    let expected: Vec<f64> = W
        .iter()
        .zip(G)
        .map(|(&w, g)| (w - 2.0 * 0.1 * g) as f64)
        .collect();
    assert_close(&w, &expected, "2x lr");
    assert_eq!(b, B.to_vec(), "multiplier 0 freezes");
}

#[test]
fn l1_subgradient_and_elastic_net_on_sgd() {
    let m = model(&W, &B);
    let mut optim = SgdConfig::new()
        .with_l1(0.5)
        .with_l1_mode(L1Mode::Subgradient)
        .init(&m)
        .unwrap();
    let (w, b) = step(&mut optim, m);
    let sign = |x: f32| {
        if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let expected: Vec<f64> = W
        .iter()
        .zip(G)
        .map(|(&w, g)| w as f64 - LR * (g as f64 + 0.5 * sign(w)))
        .collect();
    assert_close(&w, &expected, "subgradient");
    let expected: Vec<f64> = B
        .iter()
        .zip(G)
        .map(|(&b, g)| b as f64 - LR * g as f64)
        .collect();
    assert_close(&b, &expected, "bias excluded from L1");

    let m = model(&W, &B);
    let (l1, l2) = (2.6, 0.2);
    let mut optim = SgdConfig::new()
        .with_groups(vec![
            GroupRule::new("weight".into())
                .with_regularization(Some(Regularization::elastic_net(l1, l2))),
        ])
        .init(&m)
        .unwrap();
    let (w, _) = step(&mut optim, m);
    let expected: Vec<f64> = W
        .iter()
        .zip(G)
        .map(|(&w, g)| {
            let u = w as f64 - LR * (g as f64 + l2 * w as f64);
            u.signum() * (u.abs() - LR * l1).max(0.0)
        })
        .collect();
    assert_close(&w, &expected, "elastic net");
    assert!(
        w.contains(&0.0),
        "the threshold 0.26 zeroes the small weights: {w:?}"
    );
}

#[test]
fn adam_l2_is_coupled_and_adamw_decay_is_not() {
    let (eps, wd) = (1e-8, 0.5);
    let m = model(&W, &B);
    let mut adam = AdamConfig::new().with_weight_decay(wd).init(&m).unwrap();
    let (w, _) = step(&mut adam, m);
    let expected: Vec<f64> = W
        .iter()
        .zip(G)
        .map(|(&w, g)| w as f64 - LR * adam_dir(g as f64 + wd * w as f64, eps))
        .collect();
    assert_close(&w, &expected, "Adam + L2");

    let m = model(&W, &B);
    let mut adamw = AdamWConfig::new().with_weight_decay(wd).init(&m).unwrap();
    let (w, b) = step(&mut adamw, m);
    let expected: Vec<f64> = W
        .iter()
        .zip(G)
        .map(|(&w, g)| w as f64 * (1.0 - LR * wd) - LR * adam_dir(g as f64, eps))
        .collect();
    assert_close(&w, &expected, "AdamW");
    let expected: Vec<f64> = B
        .iter()
        .zip(G)
        .map(|(&b, g)| b as f64 - LR * adam_dir(g as f64, eps))
        .collect();
    assert_close(&b, &expected, "AdamW bias not decayed");
}
