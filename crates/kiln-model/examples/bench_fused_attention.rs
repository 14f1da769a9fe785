//! Fused vs composite forward + backward of attention's masked softmax and of the cross-entropy
//! at the probe config's shapes (batch 16, heads 4, seq 128, vocab 256), on flex with autodiff;
//! and the whole causal attention op (`fused::attention`) against the explicit form the model
//! ran before it (matmul, the fused masked softmax, matmul) at the probe's and the d-512
//! config's shapes, q, k and v laid out as the projections give them. Alternates the variants
//! in one run (other work on the machine hits both alike) and prints the median of each.
//!
//! `cargo run --release -p kiln-model --example bench_fused_attention [rounds]`

use std::time::Instant;

use burn::tensor::{Device, Distribution, Int, Tensor};
use kiln_model::fused::attention::{KeyRange, attention};
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

/// `[b, h, t, d]` q, k, v (views of `[b, t, h, d]` buffers, as the projections give them) and
/// an upstream gradient.
struct Heads {
    qkv: [Tensor<4>; 3],
    upstream: Tensor<4>,
}

impl Heads {
    fn new([b, h, t, d]: [usize; 4], device: &Device) -> Self {
        let normal = Distribution::Normal(0.0, 1.0);
        let one = || Tensor::<4>::random([b, t, h, d], normal, device);
        Self {
            qkv: [one(), one(), one()],
            upstream: Tensor::<4>::random([b, h, t, d], normal, device),
        }
    }
}

/// Seconds of one forward + backward of causal attention: the fused op, or the explicit form.
fn attention_step(fused: bool, x: &Heads) -> f64 {
    let start = Instant::now();
    let [q, k, v] = x.qkv.clone().map(|t| t.require_grad());
    let view = |t: &Tensor<4>| t.clone().swap_dims(1, 2);
    let scale = 1.0 / (q.dims()[3] as f64).sqrt();
    let out = if fused {
        attention(view(&q), view(&k), view(&v), scale, KeyRange::CAUSAL, None)
    } else {
        let scores = view(&q).matmul(view(&k).swap_dims(2, 3));
        masked_softmax(scores, scale, true, None).matmul(view(&v))
    };
    let grads = (out * x.upstream.clone()).sum().backward();
    for t in [q, k, v] {
        let grad = t.grad(&grads).expect("gradient");
        let _: f32 = grad.slice([0..1, 0..1, 0..1, 0..1]).into_scalar();
    }
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

    let probe = Heads::new([16, 4, 128, 64], &device);
    let wide = Heads::new([8, 8, 256, 64], &device);

    let mut times = vec![vec![]; 8];
    for round in 0..rounds + 3 {
        let round_times = [
            softmax_step(true, &scores, &upstream),
            softmax_step(false, &scores, &upstream),
            loss_step(true, &logits, &targets),
            loss_step(false, &logits, &targets),
            attention_step(true, &probe),
            attention_step(false, &probe),
            attention_step(true, &wide),
            attention_step(false, &wide),
        ];
        if round >= 3 {
            // The first rounds warm the allocator and the thread pool.
            for (all, t) in times.iter_mut().zip(round_times) {
                all.push(t);
            }
        }
    }
    let mut times = times.into_iter().map(median);
    for (what, reference) in [
        ("masked softmax [16, 4, 128, 128] causal", "composite"),
        ("cross-entropy [2048, 256]", "composite"),
        ("causal attention [16, 4, 128, 64]", "explicit"),
        ("causal attention [8, 8, 256, 64]", "explicit"),
    ] {
        let (f, c) = (times.next().unwrap(), times.next().unwrap());
        println!(
            "{what}: fused {:.3} ms, {reference} {:.3} ms, {:.2}x (forward + backward, median of {rounds})",
            f * 1e3,
            c * 1e3,
            c / f
        );
    }
}
