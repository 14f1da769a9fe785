//! Times kiln's fused Linear against Burn's `linear` on flex at the probe config's shapes
//! (x `[16, 128, d_in]`, weights `[256, 256]`, `[256, 1024]`, `[1024, 256]`): forward + backward
//! on the autodiff device, and forward alone on the plain one. The two alternate within one run,
//! so that other load on the machine hits both alike; the medians are printed.
//!
//! `cargo run --release -p kiln-model --example bench_fused_linear [iterations]`

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use kiln_model::fused::linear::linear;

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Milliseconds of one call of `step`, for the fused layer and Burn's, alternating.
fn alternate(iterations: usize, mut step: impl FnMut(bool)) -> (f64, f64) {
    let (mut fused, mut burn) = (Vec::new(), Vec::new());
    // One untimed call of each first: allocator and rayon pool warm.
    step(true);
    step(false);
    for _ in 0..iterations {
        for (is_fused, times) in [(true, &mut fused), (false, &mut burn)] {
            let start = Instant::now();
            step(is_fused);
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    (median(fused), median(burn))
}

fn layer(x: Tensor<3>, w: Tensor<2>, b: Tensor<1>, fused: bool) -> Tensor<3> {
    if fused {
        linear(x, w, Some(b))
    } else {
        burn::tensor::module::linear(x, w, Some(b))
    }
}

fn main() {
    let iterations = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    println!("x [16, 128, d_in], f32, median of {iterations} alternating runs (ms)");
    println!("weight         fwd+bwd fused  burn   speedup | fwd fused  burn   speedup");
    for [d_in, d_out] in [[256, 256], [256, 1024], [1024, 256]] {
        let train = Device::flex().autodiff();
        let x = Tensor::<3>::random([16, 128, d_in], Distribution::Default, &train).require_grad();
        let w = Tensor::<2>::random([d_in, d_out], Distribution::Default, &train).require_grad();
        let b = Tensor::<1>::random([d_out], Distribution::Default, &train).require_grad();
        let (train_fused, train_burn) = alternate(iterations, |fused| {
            let grads = layer(x.clone(), w.clone(), b.clone(), fused).backward();
            // The gradients exist (and are computed) before the clock stops.
            assert!(w.grad(&grads).is_some() && x.grad(&grads).is_some());
        });

        let (x, w, b) = (x.clone().inner(), w.clone().inner(), b.clone().inner());
        let (infer_fused, infer_burn) = alternate(iterations, |fused| {
            let y = layer(x.clone(), w.clone(), b.clone(), fused);
            assert_eq!(y.dims()[2], d_out);
        });
        println!(
            "[{d_in:>4}, {d_out:>4}]   {train_fused:>8.2} {train_burn:>7.2} {:>7.2}x | {infer_fused:>8.2} {infer_burn:>6.2} {:>6.2}x",
            train_burn / train_fused,
            infer_burn / infer_fused,
        );
    }
}
