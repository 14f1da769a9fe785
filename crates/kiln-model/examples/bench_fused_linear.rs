//! Times kiln's fused Linear against Burn's `linear` on flex at the probe config's shapes
//! (x `[16, 128, d_in]`, weights `[256, 256]`, `[256, 1024]`, `[1024, 256]`): forward + backward
//! on the autodiff device, and forward alone on the plain one. The two alternate within one run,
//! so that other load on the machine hits both alike; the medians are printed.
//!
//! Then the decoding shapes of GPT-2 small (one token per sequence, batch 1 and 8: x `[b, 1,
//! d_in]`): its four block layers and the tied LM head (the `[50257, 768]` embedding read
//! transposed), forward on the plain device, where kiln reads the weight once (`skinny.rs`) and
//! Burn runs gemm; and the same layers with bf16 weights against f32. One layer is about 9 MB
//! and the head 154 MB, which a server's (or a VM's) last-level cache may hold across repeated
//! calls, so these are partly cache rates. The rate from memory comes next: one decoding step's
//! products of GPT-2 small, every weight a distinct tensor (497 MB in f32), kiln in f32 and bf16
//! against Burn's gemm.
//!
//! Last, the rate of the fused forward's gemm at the d-512 config's shapes (x `[8, 256, d_in]`,
//! the block's four weights) in GFLOP/s: what `scripts/bench_gemm_torch.py` prints for
//! PyTorch's `F.linear` on the same shapes, so that the two can be read side by side.
//!
//! `cargo run --release -p kiln-model --example bench_fused_linear [iterations]`

use std::time::Instant;

use burn::tensor::{Device, Distribution, FloatDType, Tensor};
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

    let device = Device::flex();
    println!("\ndecoding, x [b, 1, d_in], forward, median of {iterations} alternating runs (ms)");
    println!("weight                 b  fused   burn   speedup  fused GB/s");
    let head = Tensor::<2>::random([50257, 768], Distribution::Default, &device);
    for batch in [1, 8] {
        let shapes: [(&str, Tensor<2>); 5] = [
            (
                "[768, 2304]",
                Tensor::random([768, 2304], Distribution::Default, &device),
            ),
            (
                "[768, 768]",
                Tensor::random([768, 768], Distribution::Default, &device),
            ),
            (
                "[768, 3072]",
                Tensor::random([768, 3072], Distribution::Default, &device),
            ),
            (
                "[3072, 768]",
                Tensor::random([3072, 768], Distribution::Default, &device),
            ),
            ("head [50257, 768]ᵀ", head.clone().transpose()),
        ];
        for (name, w) in shapes {
            let [d_in, d_out] = w.dims();
            let x = Tensor::<3>::random([batch, 1, d_in], Distribution::Default, &device);
            let (fused, burn) = alternate(iterations, |fused| {
                let y = if fused {
                    linear(x.clone(), w.clone(), None)
                } else {
                    burn::tensor::module::linear(x.clone(), w.clone(), None)
                };
                assert_eq!(y.dims()[2], d_out);
            });
            let gbs = (d_in * d_out * 4) as f64 / (fused * 1e-3) / 1e9;
            println!(
                "{name:<20} {batch:>3} {fused:>6.2} {burn:>6.2} {:>7.2}x {gbs:>9.1}",
                burn / fused
            );
        }
    }

    println!(
        "\ndecoding in bf16 (weight and x in bf16) against f32, kiln's fused forward, median of {iterations} alternating runs (ms)"
    );
    println!("weight                 b    f32   bf16  bf16/f32  f32 GB/s  bf16 GB/s");
    for batch in [1, 2, 8] {
        let layer = Tensor::<2>::random([768, 3072], Distribution::Default, &device);
        // Each cast where it is stored, then seen as the product needs it: the head stays a
        // transposed view in bf16 too, as a bf16 model's tied head is.
        for (name, w, w16) in [
            (
                "[768, 3072]",
                layer.clone(),
                layer.clone().cast(FloatDType::BF16),
            ),
            (
                "head [50257, 768]ᵀ",
                head.clone().transpose(),
                head.clone().cast(FloatDType::BF16).transpose(),
            ),
        ] {
            let [d_in, d_out] = w.dims();
            let x = Tensor::<3>::random([batch, 1, d_in], Distribution::Default, &device);
            let x16 = x.clone().cast(FloatDType::BF16);
            let (f32_ms, bf16_ms) = alternate(iterations, |in_f32| {
                let y = if in_f32 {
                    linear(x.clone(), w.clone(), None)
                } else {
                    linear(x16.clone(), w16.clone(), None)
                };
                assert_eq!(y.dims()[2], d_out);
            });
            let gbs = |bytes: usize, ms: f64| (d_in * d_out * bytes) as f64 / (ms * 1e-3) / 1e9;
            println!(
                "{name:<20} {batch:>3} {f32_ms:>6.2} {bf16_ms:>6.2} {:>8.2}x {:>9.1} {:>10.1}",
                bf16_ms / f32_ms,
                gbs(4, f32_ms),
                gbs(2, bf16_ms)
            );
        }
    }

    step_from_memory(iterations.min(10), &device);

    println!(
        "\nthe d-512 config's layers, x [8, 256, d_in], forward, median of {iterations} alternating runs"
    );
    println!("weight         fused ms  GFLOP/s | burn ms  GFLOP/s");
    for [d_in, d_out] in [[512, 1536], [512, 512], [512, 2048], [2048, 512]] {
        let x = Tensor::<3>::random([8, 256, d_in], Distribution::Default, &device);
        let w = Tensor::<2>::random([d_in, d_out], Distribution::Default, &device);
        let b = Tensor::<1>::random([d_out], Distribution::Default, &device);
        let (fused, burn) = alternate(iterations, |fused| {
            let y = layer(x.clone(), w.clone(), b.clone(), fused);
            assert_eq!(y.dims()[2], d_out);
        });
        let gflops = |ms: f64| 2.0 * (8 * 256 * d_in * d_out) as f64 / (ms * 1e-3) / 1e9;
        println!(
            "[{d_in:>4}, {d_out:>4}]  {fused:>8.2} {:>8.0} | {burn:>7.2} {:>8.0}",
            gflops(fused),
            gflops(burn)
        );
    }
}

/// One decoding step's products of GPT-2 small: every block's six weights (query, key, value,
/// out `[768, 768]`, up `[768, 3072]`, down `[3072, 768]`) as distinct tensors, 12 blocks, and
/// the tied head, 497 MB in f32: more than this machine's caches (a VM's L3 can hold a single
/// layer, and even the head, which makes the per-layer figures above partly cache rates), so
/// this is the rate at which a step streams its weights from memory. kiln's fused forward in
/// f32 and bf16, and Burn's `linear` (gemm: its single-threaded gemv at one row), the blocks'
/// 72 products and the head's timed apart, on rayon's pool as `Gpt::generate` runs them.
fn step_from_memory(iterations: usize, device: &Device) {
    println!(
        "\none decoding step's products of GPT-2 small from memory (12 blocks of distinct weights, the tied head), median of {iterations} alternating runs (ms)"
    );
    println!("part    b   kiln f32  GB/s | burn f32  GB/s | kiln bf16  GB/s");
    let blocks: Vec<Tensor<2>> = [[768, 768]; 4]
        .into_iter()
        .chain([[768, 3072], [3072, 768]])
        .cycle()
        .take(12 * 6)
        .map(|shape| Tensor::random(shape, Distribution::Default, device))
        .collect();
    let head = vec![Tensor::<2>::random([50257, 768], Distribution::Default, device).transpose()];
    for batch in [1, 8] {
        for (part, weights) in [("blocks", &blocks), ("head", &head)] {
            let halves: Vec<Tensor<2>> = weights
                .iter()
                .map(|w| w.clone().cast(FloatDType::BF16))
                .collect();
            let elements: usize = weights.iter().map(|w| w.shape().num_elements()).sum();
            let xs: Vec<Tensor<3>> = weights
                .iter()
                .map(|w| Tensor::random([batch, 1, w.dims()[0]], Distribution::Default, device))
                .collect();
            let x16: Vec<Tensor<3>> = xs
                .iter()
                .map(|x| x.clone().cast(FloatDType::BF16))
                .collect();
            // On rayon's pool, as `Gpt::generate` runs: each product's caller works a share.
            let run = |which: usize| {
                rayon::scope(|_| {
                    let start = Instant::now();
                    for (i, x) in xs.iter().enumerate() {
                        let y = match which {
                            0 => linear(x.clone(), weights[i].clone(), None),
                            1 => burn::tensor::module::linear(x.clone(), weights[i].clone(), None),
                            _ => linear(x16[i].clone(), halves[i].clone(), None),
                        };
                        assert_eq!(y.dims()[2], weights[i].dims()[1]);
                    }
                    start.elapsed().as_secs_f64() * 1e3
                })
            };
            let mut times = [Vec::new(), Vec::new(), Vec::new()];
            for which in 0..3 {
                run(which);
            }
            for _ in 0..iterations {
                for (which, t) in times.iter_mut().enumerate() {
                    t.push(run(which));
                }
            }
            let [f, b, h] = times.map(median);
            let gbs = |bytes: usize, ms: f64| (elements * bytes) as f64 / (ms * 1e-3) / 1e9;
            println!(
                "{part:<7} {batch:<3} {f:>8.2} {:>5.1} | {b:>8.2} {:>5.1} | {h:>9.2} {:>5.1}",
                gbs(4, f),
                gbs(4, b),
                gbs(2, h)
            );
        }
    }
}
