//! Fused vs composite forward + backward of attention's masked softmax and of the cross-entropy
//! at the probe config's shapes (batch 16, heads 4, seq 128, vocab 256), on flex with autodiff.
//! Alternates the two in one run (other work on the machine hits both alike) and prints the
//! median of each.
//!
//! `cargo run --release -p kiln-model --example bench_fused_attention [rounds]`

use std::time::Instant;

use burn::tensor::{Device, Distribution, Int, Tensor};
use kiln_model::fused::cross_entropy::{cross_entropy, cross_entropy_composite};
use kiln_model::fused::softmax::{masked_softmax, masked_softmax_composite};

/// Seconds of one forward + backward of the causal softmax over `scores`.
fn softmax_step(fused: bool, scores: &Tensor<4>, upstream: &Tensor<4>) -> f64 {
    let start = Instant::now();
    let x = scores.clone().require_grad();
    let probs = if fused {
        masked_softmax(x.clone(), 0.125, true, None)
    } else {
        masked_softmax_composite(x.clone(), 0.125, true, None)
    };
    let grads = (probs * upstream.clone()).sum().backward();
    let grad = x.grad(&grads).expect("gradient");
    let _: f32 = grad.slice([0..1, 0..1, 0..1, 0..1]).into_scalar();
    start.elapsed().as_secs_f64()
}

/// Seconds of one forward + backward of the cross-entropy.
fn loss_step(fused: bool, logits: &Tensor<2>, targets: &Tensor<1, Int>) -> f64 {
    let start = Instant::now();
    let x = logits.clone().require_grad();
    let loss = if fused {
        cross_entropy(x.clone(), targets.clone(), Some(-100))
    } else {
        cross_entropy_composite(x.clone(), targets.clone(), Some(-100))
    };
    let grads = loss.backward();
    let grad = x.grad(&grads).expect("gradient");
    let _: f32 = grad.slice([0..1, 0..1]).into_scalar();
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let device = Device::flex().autodiff();
    device.seed(0);
    let normal = Distribution::Normal(0.0, 1.0);
    let scores = Tensor::<4>::random([16, 4, 128, 128], normal, &device);
    let upstream = Tensor::<4>::random([16, 4, 128, 128], normal, &device);
    let logits = Tensor::<2>::random([2048, 256], normal, &device);
    let targets = Tensor::<1, Int>::random([2048], Distribution::Uniform(0.0, 256.0), &device);

    let (mut sf, mut sc, mut lf, mut lc) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds + 3 {
        let times = (
            softmax_step(true, &scores, &upstream),
            softmax_step(false, &scores, &upstream),
            loss_step(true, &logits, &targets),
            loss_step(false, &logits, &targets),
        );
        if round >= 3 {
            // The first rounds warm the allocator and the thread pool.
            sf.push(times.0);
            sc.push(times.1);
            lf.push(times.2);
            lc.push(times.3);
        }
    }
    for (what, fused, composite) in [
        ("masked softmax [16, 4, 128, 128] causal", sf, sc),
        ("cross-entropy [2048, 256]", lf, lc),
    ] {
        let (f, c) = (median(fused), median(composite));
        println!(
            "{what}: fused {:.3} ms, composite {:.3} ms, {:.2}x (forward + backward, median of {rounds})",
            f * 1e3,
            c * 1e3,
            c / f
        );
    }
}
