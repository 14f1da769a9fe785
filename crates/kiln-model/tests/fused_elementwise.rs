//! The fused GELU, LayerNorm and RMSNorm kernels against the composite Burn ops they replace: outputs
//! and gradients (of a random upstream gradient) on `Device::flex().autodiff()`, over random
//! shapes (not multiples of the vector width, a single row, views that are not contiguous,
//! tensors large enough to be split across threads), and the plain (inference) path.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Tensor, TensorData, activation};
use kiln_model::fused::rope::{rope, rope_composite};
use kiln_model::fused::swiglu::swiglu;
use kiln_model::fused::{GeluKind, gelu, layer_norm, rms_norm};
use kiln_model::rotary::{RopeScaling, RotaryEmbedding};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Relative tolerance of the issue. Each element is compared relative to its own magnitude,
/// or to the tensor's root mean square when it is smaller: an element that is a difference or
/// a long sum of larger terms (a LayerNorm's `dx`, `dγ` over many rows) carries the rounding
/// of those terms, so two f32 computations of it agree in absolute, not relative, terms.
const REL: f32 = 1e-5;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, fused: &[f32], composite: &[f32]) {
    assert_close_to_scale(what, fused, composite, &vec![0.0; composite.len()]);
}

/// [`assert_close`], each element also allowed `REL` of its own `scale` (the size of the terms
/// it is the difference of).
fn assert_close_to_scale(what: &str, fused: &[f32], composite: &[f32], scale: &[f32]) {
    assert_eq!(fused.len(), composite.len(), "{what}: lengths");
    let n = composite.len().max(1) as f32;
    let rms = (composite.iter().map(|v| v * v).sum::<f32>() / n).sqrt();
    for (i, (a, b)) in fused.iter().zip(composite).enumerate() {
        let tol = REL * b.abs().max(rms).max(scale[i]) + f32::MIN_POSITIVE;
        assert!(
            (a - b).abs() <= tol,
            "{what}[{i}]: fused {a} vs composite {b} (tolerance {tol})"
        );
    }
}

/// Uniform values in `[-spread, spread]` plus `offset`, from `seed`.
fn random<const D: usize>(
    shape: [usize; D],
    spread: f32,
    offset: f32,
    seed: u64,
    device: &Device,
) -> Tensor<D> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-spread..=spread) + offset)
        .collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Output and input gradient of `f` at `x` (`[rows, cols]`, viewed transposed when
/// `transposed`), for a random upstream gradient.
fn forward_backward(
    f: impl Fn(Tensor<2>) -> Tensor<2>,
    x: &Tensor<2>,
    transposed: bool,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let leaf = x.clone().require_grad();
    let y = f(oriented(leaf.clone(), transposed));
    let up = random(y.dims(), 1.0, 0.0, seed ^ 0x5eed, &y.device());
    let grads = (y.clone() * up).sum().backward();
    (values(y), values(leaf.grad(&grads).unwrap()))
}

/// `x` as the kernels see it: itself, or its transpose (a non-contiguous view).
fn oriented(x: Tensor<2>, transposed: bool) -> Tensor<2> {
    if transposed { x.swap_dims(0, 1) } else { x }
}

fn check_gelu(kind: GeluKind, shape: [usize; 2], transposed: bool, seed: u64) {
    let device = Device::flex().autodiff();
    let x = random(shape, 6.0, 0.0, seed, &device);
    let composite = |x: Tensor<2>| match kind {
        GeluKind::Exact => activation::gelu(x),
        GeluKind::Tanh => kiln_model::activation::gelu_tanh(x),
    };
    let (y, dx) = forward_backward(|x| gelu(x, kind), &x, transposed, seed);
    let (y_ref, dx_ref) = forward_backward(composite, &x, transposed, seed);
    assert_close(&format!("{kind:?} gelu {shape:?}"), &y, &y_ref);
    assert_close(&format!("{kind:?} gelu' {shape:?}"), &dx, &dx_ref);

    // Without autodiff (inference): the same kernel, the same values.
    let plain = oriented(x.inner(), transposed);
    assert_close(
        &format!("{kind:?} gelu, plain"),
        &values(gelu(plain.clone(), kind)),
        &values(composite(plain)),
    );
}

/// The norm under test: LayerNorm with or without β, or RMSNorm.
#[derive(Debug, Clone, Copy)]
enum Norm {
    Layer { bias: bool },
    Rms,
}

/// A LayerNorm or RMSNorm of width `d` with random γ (and β, for a LayerNorm with bias).
enum NormModule {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl NormModule {
    fn new(kind: Norm, d: usize, seed: u64, device: &Device) -> Self {
        let gamma = Param::from_tensor(random([d], 0.5, 1.0, seed + 1, device));
        match kind {
            Norm::Layer { bias } => {
                let mut norm = LayerNormConfig::new(d)
                    .with_epsilon(1e-5)
                    .with_bias(bias)
                    .init(device);
                norm.gamma = gamma;
                if bias {
                    norm.beta = Some(Param::from_tensor(random([d], 0.5, 0.0, seed + 2, device)));
                }
                Self::Layer(norm)
            }
            Norm::Rms => {
                let mut norm = RmsNormConfig::new(d).with_epsilon(1e-5).init(device);
                norm.gamma = gamma;
                Self::Rms(norm)
            }
        }
    }

    fn forward(&self, x: Tensor<2>, fused: bool) -> Tensor<2> {
        match (self, fused) {
            (Self::Layer(norm), true) => layer_norm(norm, x),
            (Self::Layer(norm), false) => norm.forward(x),
            (Self::Rms(norm), true) => rms_norm(norm, x),
            (Self::Rms(norm), false) => norm.forward(x),
        }
    }

    fn gamma(&self) -> &Param<Tensor<1>> {
        match self {
            Self::Layer(norm) => &norm.gamma,
            Self::Rms(norm) => &norm.gamma,
        }
    }

    fn beta(&self) -> Option<&Param<Tensor<1>>> {
        match self {
            Self::Layer(norm) => norm.beta.as_ref(),
            Self::Rms(_) => None,
        }
    }
}

fn check_norm(kind: Norm, shape: [usize; 2], transposed: bool, seed: u64) {
    let device = Device::flex().autodiff();
    let d = if transposed { shape[0] } else { shape[1] };
    let x = random(shape, 3.0, 0.5, seed, &device);
    let norm = NormModule::new(kind, d, seed, &device);
    let run = |fused: bool| {
        let leaf = x.clone().require_grad();
        let y = norm.forward(oriented(leaf.clone(), transposed), fused);
        let up = random(y.dims(), 1.0, 0.0, seed ^ 0x5eed, &device);
        let grads = (y.clone() * up).sum().backward();
        let dgamma = values(norm.gamma().grad(&grads).unwrap());
        let dbeta = norm.beta().map(|b| values(b.grad(&grads).unwrap()));
        (values(y), values(leaf.grad(&grads).unwrap()), dgamma, dbeta)
    };
    let (fused, composite) = (run(true), run(false));
    let what = format!("{kind:?} {shape:?} transposed {transposed}");
    assert_close(&format!("{what}: y"), &fused.0, &composite.0);
    // dx_j = rstd · (gγ_j - mean(gγ) - x̂_j · mean(gγ · x̂)) (no mean(gγ) for RMSNorm): a
    // difference of terms of size rstd · |gγ|, whose rounding it carries (a row of nearly
    // equal values has a large rstd and a dx near zero).
    let up = values(random(
        [shape[0] * shape[1]],
        1.0,
        0.0,
        seed ^ 0x5eed,
        &device,
    ));
    let gamma = values(norm.gamma().val());
    let xs = values(x.clone());
    let rows = shape[0] * shape[1] / d;
    let at = |r: usize, j: usize| if transposed { j * rows + r } else { r * d + j };
    let mut scale = vec![0.0f32; xs.len()];
    for r in 0..rows {
        let row: Vec<f64> = (0..d).map(|j| xs[at(r, j)] as f64).collect();
        let mean = match kind {
            Norm::Layer { .. } => row.iter().sum::<f64>() / d as f64,
            Norm::Rms => 0.0,
        };
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + 1e-5).sqrt();
        // `up` is laid out as the normalized input, rows of `d`.
        let terms = (0..d)
            .map(|j| (up[r * d + j] * gamma[j]).abs() as f64)
            .fold(0.0, f64::max);
        for j in 0..d {
            scale[at(r, j)] = (rstd * terms) as f32;
        }
    }
    assert_close_to_scale(&format!("{what}: dx"), &fused.1, &composite.1, &scale);
    assert_close(&format!("{what}: dgamma"), &fused.2, &composite.2);
    match (fused.3, composite.3) {
        (Some(a), Some(b)) => assert_close(&format!("{what}: dbeta"), &a, &b),
        (a, b) => assert_eq!(a.is_some(), b.is_some()),
    }

    // Without autodiff.
    let plain_norm = NormModule::new(kind, d, seed, &Device::flex());
    let plain = oriented(x.inner(), transposed);
    assert_close(
        &format!("{what}: plain"),
        &values(plain_norm.forward(plain.clone(), true)),
        &values(plain_norm.forward(plain, false)),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn gelu_matches_composite(
        tanh: bool, rows in 1usize..40, cols in 1usize..300, transposed: bool, seed in 0u64..1000,
    ) {
        let kind = if tanh { GeluKind::Tanh } else { GeluKind::Exact };
        check_gelu(kind, [rows, cols], transposed, seed);
    }

    #[test]
    fn layer_norm_matches_composite(
        rows in 1usize..40, d in 1usize..300, bias: bool, transposed: bool, seed in 0u64..1000,
    ) {
        let shape = if transposed { [d, rows] } else { [rows, d] };
        check_norm(Norm::Layer { bias }, shape, transposed, seed);
    }

    #[test]
    fn rms_norm_matches_composite(
        rows in 1usize..40, d in 1usize..300, transposed: bool, seed in 0u64..1000,
    ) {
        let shape = if transposed { [d, rows] } else { [rows, d] };
        check_norm(Norm::Rms, shape, transposed, seed);
    }
}

/// SwiGLU's `silu(gate)·up` and both gradients against the composite form.
fn check_swiglu(shape: [usize; 2], transposed: bool, seed: u64) {
    let device = Device::flex().autodiff();
    let gate = random(shape, 6.0, 0.0, seed, &device).require_grad();
    let up = random(shape, 2.0, 0.3, seed + 1, &device).require_grad();
    let run = |fused: bool| {
        let (g, u) = (
            oriented(gate.clone(), transposed),
            oriented(up.clone(), transposed),
        );
        let y = if fused {
            swiglu(g, u)
        } else {
            activation::silu(g) * u
        };
        let upstream = random(y.dims(), 1.0, 0.0, seed ^ 0x5eed, &device);
        let grads = (y.clone() * upstream).sum().backward();
        [
            values(y),
            values(gate.grad(&grads).unwrap()),
            values(up.grad(&grads).unwrap()),
        ]
    };
    let (fused, composite) = (run(true), run(false));
    for (name, (a, b)) in ["swiglu", "d gate", "d up"]
        .iter()
        .zip(fused.iter().zip(&composite))
    {
        assert_close(&format!("{name} {shape:?} transposed {transposed}"), a, b);
    }
}

/// The fused rotation, forward and backward, bit for bit the composite one: queries in the
/// projections' layout (a strided view), at a cache offset, with llama3-scaled tables.
fn check_rope([b, h, t, d]: [usize; 4], offset: usize, seed: u64) {
    let device = Device::flex().autodiff();
    let scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    };
    let table = RotaryEmbedding::new(d, offset + t, 10000.0, Some(&scaling), &device);
    let leaf = random([b, t, h, d], 2.0, 0.0, seed, &device).require_grad();
    let run = |fused: bool| {
        let x = leaf.clone().swap_dims(1, 2);
        let y = if fused {
            rope(x, &table.cos, &table.sin, offset)
        } else {
            rope_composite(x, &table.cos, &table.sin, offset)
        };
        let upstream = random(y.dims(), 1.0, 0.0, seed ^ 0x5eed, &device);
        let grads = (y.clone() * upstream).sum().backward();
        (values(y), values(leaf.grad(&grads).unwrap()))
    };
    let (fused, composite) = (run(true), run(false));
    assert_eq!(
        fused.0,
        composite.0,
        "rope {:?} offset {offset}",
        [b, h, t, d]
    );
    assert_close(
        &format!("d rope {:?}", [b, h, t, d]),
        &fused.1,
        &composite.1,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn swiglu_matches_composite(rows in 1usize..40, cols in 1usize..300, transposed: bool, seed in 0u64..1000) {
        check_swiglu([rows, cols], transposed, seed);
    }

    #[test]
    fn rope_matches_composite(b in 1usize..3, h in 1usize..4, t in 1usize..20, half in 1usize..17, offset in 0usize..9, seed in 0u64..1000) {
        check_rope([b, h, t, 2 * half], offset, seed);
    }
}

/// Large enough for the kernels to split the work across threads (and, for GELU, far enough
/// out that `σ` and `Φ` saturate).
#[test]
fn large_tensors_split_across_threads() {
    for kind in [GeluKind::Exact, GeluKind::Tanh] {
        check_gelu(kind, [129, 517], false, 7);
        check_gelu(kind, [517, 129], true, 8);
    }
    check_norm(Norm::Layer { bias: true }, [301, 259], false, 9);
    check_norm(Norm::Layer { bias: true }, [259, 301], true, 10);
    check_norm(Norm::Rms, [301, 259], false, 11);
    check_norm(Norm::Rms, [259, 301], true, 12);
    check_swiglu([301, 259], false, 13);
    check_rope([4, 8, 130, 64], 3, 14);
}

/// GELU far into both tails: `x·Φ(x)` keeps its relative precision where `1 + erf` is tiny,
/// and the tanh form does not overflow.
#[test]
fn gelu_tails() {
    let device = Device::flex();
    let xs = [
        -30.0f32, -12.0, -6.0, -3.0, -1e-3, 0.0, 1e-3, 3.0, 6.0, 12.0, 30.0,
    ];
    let x = Tensor::<1>::from_floats(xs, &device);
    let exact = values(gelu(x.clone(), GeluKind::Exact));
    let tanh = values(gelu(x, GeluKind::Tanh));
    for ((x, e), t) in xs.iter().zip(exact).zip(tanh) {
        let reference = 0.5 * *x as f64 * libm_erfc(-*x as f64 / std::f64::consts::SQRT_2);
        let rel = |v: f32| (v as f64 - reference).abs() / reference.abs().max(1e-300);
        assert!(e.is_finite() && t.is_finite(), "gelu({x}) = {e}, {t}");
        if reference.abs() > 1e-30 {
            assert!(rel(e) < 1e-5, "exact gelu({x}) = {e}, expected {reference}");
        } else {
            assert!(e.abs() < 1e-30, "exact gelu({x}) = {e}");
        }
        // The approximation is within 1e-3 of the exact GELU everywhere.
        assert!((t as f64 - reference).abs() < 1e-3, "tanh gelu({x}) = {t}");
    }
}

/// `erfc` in f64 by its continued fraction (x > 0.5) or series (small x): a reference
/// independent of the kernels' fit.
fn libm_erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - libm_erfc(-x);
    }
    if x < 2.0 {
        // erf(x) = 2/√π Σ (−1)ⁿ x^{2n+1} / (n! (2n+1))
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        return 1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum;
    }
    // erfc(x) = e^{−x²}/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
    let mut f = x;
    for k in (1..200).rev() {
        f = x + k as f64 / 2.0 / f;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}
