//! Times the fused GELU, LayerNorm and RMSNorm against the composite Burn ops, forward + backward on
//! `Device::flex().autodiff()`, at the probe config's shapes (2048 tokens, d = 256, 4d = 1024).
//! Runs alternate between the two so that other load on the machine hits both alike; the
//! median of each is printed, with that of the same step around the identity (the random
//! upstream gradient's product and sum, and the backward's bookkeeping) for reference.
//!
//! `cargo run --release -p kiln-model --example fused_elementwise_bench`

use std::time::Instant;

use burn::nn::{LayerNormConfig, RmsNormConfig};
use burn::tensor::{Device, Distribution, Tensor, activation};
use kiln_model::fused::{GeluKind, gelu, layer_norm, rms_norm};

const RUNS: usize = 15;

/// Milliseconds of one forward + backward of `f` at `x`.
fn step(f: &dyn Fn(Tensor<2>) -> Tensor<2>, x: &Tensor<2>, up: &Tensor<2>) -> f64 {
    let start = Instant::now();
    let leaf = x.clone().require_grad();
    let grads = (f(leaf.clone()) * up.clone()).sum().backward();
    let grad = leaf.grad(&grads).expect("a gradient");
    let _ = grad.into_data();
    start.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn compare(name: &str, shape: [usize; 2], ops: [&dyn Fn(Tensor<2>) -> Tensor<2>; 2]) {
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::random(shape, Distribution::Normal(0.0, 2.0), &device);
    let up = Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let identity = |x: Tensor<2>| x;
    let mut times = [vec![], vec![], vec![]];
    for run in 0..RUNS + 2 {
        for (t, f) in
            times
                .iter_mut()
                .zip([ops[0], ops[1], &identity as &dyn Fn(Tensor<2>) -> Tensor<2>])
        {
            let ms = step(f, &x, &up);
            if run >= 2 {
                t.push(ms);
            }
        }
    }
    let [fused, composite, base] = times.map(median);
    println!(
        "{name} {shape:?}: fused {fused:.2} ms, composite {composite:.2} ms ({:.2}x); \
         identity step {base:.2} ms; op alone: fused {:.2} ms, composite {:.2} ms ({:.2}x)",
        composite / fused,
        fused - base,
        composite - base,
        (composite - base) / (fused - base)
    );
}

fn main() {
    let tanh = |x| gelu(x, GeluKind::Tanh);
    compare(
        "GELU tanh",
        [2048, 1024],
        [&tanh, &kiln_model::activation::gelu_tanh],
    );
    let exact = |x| gelu(x, GeluKind::Exact);
    compare("GELU exact", [2048, 1024], [&exact, &activation::gelu]);
    let norm = LayerNormConfig::new(256).init(&Device::flex().autodiff());
    let fused = |x| layer_norm(&norm, x);
    let composite = |x| norm.forward(x);
    compare("LayerNorm", [2048, 256], [&fused, &composite]);
    let norm = RmsNormConfig::new(256).init(&Device::flex().autodiff());
    let fused = |x| rms_norm(&norm, x);
    let composite = |x| norm.forward(x);
    compare("RMSNorm", [2048, 256], [&fused, &composite]);
}
