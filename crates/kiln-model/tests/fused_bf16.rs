//! The fused kernels on half-precision tensors (issue 25): bf16 and f16 inputs run the f32
//! kernels (cast at the kernel's door, the result cast back), so a half-precision step keeps
//! its activations in half precision at the f32 kernels' speed instead of Burn's composite
//! half-precision ops. Each op in bf16 and f16 against the same op in f32 on the same values
//! (rounded to the half dtype): outputs, and the gradients of a random upstream gradient,
//! within the half dtype's tolerance,
//! over random odd shapes and non-contiguous views; results and gradients stay in the half
//! dtype.

use burn::nn::{LayerNormConfig, RmsNormConfig};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use kiln_base::Precision;
use kiln_model::fused::attention::{KeyRange, attention};
use kiln_model::fused::linear::linear;
use kiln_model::fused::rope::rope;
use kiln_model::fused::swiglu::swiglu;
use kiln_model::fused::{GeluKind, gelu, layer_norm, rms_norm};
use kiln_model::rotary::RotaryEmbedding;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// bf16's tolerance of the issue: relative 1e-2 (bf16 keeps 8 significant bits, 0.4% apart).
/// f16 keeps 11 bits: 2e-3.
fn tolerance(dtype: FloatDType) -> f32 {
    match dtype {
        FloatDType::BF16 => 1e-2,
        _ => 2e-3,
    }
}

/// Values of `[..]` in f32, whatever its dtype.
fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

/// The half-precision result within `rel` of the f32 one, relative in norm:
/// `‖half − f32‖ ≤ rel·‖f32‖`. (Element by element, a value that is a difference or a sum of
/// larger terms carries their rounding, and the inputs themselves are rounded to the half
/// dtype: the norm is the measure of mixed-precision results.)
fn assert_close(what: &str, half: &[f32], reference: &[f32], rel: f32) {
    assert_eq!(half.len(), reference.len(), "{what}: lengths");
    assert!(half.iter().all(|v| v.is_finite()), "{what}: not finite");
    let norm = |v: &mut dyn Iterator<Item = f32>| {
        v.map(|x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
    };
    let error = norm(&mut half.iter().zip(reference).map(|(a, b)| a - b));
    let scale = norm(&mut reference.iter().copied());
    assert!(
        error <= f64::from(rel) * scale + 1e-30,
        "{what}: relative error {:.2e} (tolerance {rel:.0e})",
        error / scale.max(1e-30)
    );
}

fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.5f32..=1.5)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// `f` on `inputs` in `dtype` (each an f32 leaf cast inside the graph, so its gradient arrives
/// in f32 through the cast's backward, as a master weight's does), then `sum(y ⊙ upstream)`
/// backward: the output and every input's gradient, as f32 values. Checks that the output
/// stays in `dtype`.
fn run<const D: usize, const N: usize>(
    inputs: &[Tensor<D>; N],
    dtype: FloatDType,
    f: &dyn Fn([Tensor<D>; N]) -> Tensor<D>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let leaves: [Tensor<D>; N] = inputs.clone().map(|x| x.require_grad());
    let y = f(leaves.clone().map(|x| x.cast(dtype)));
    assert_eq!(
        y.dtype(),
        DType::from(dtype),
        "the output stays in {dtype:?}"
    );
    let up = random(y.dims(), 0x5eed, &y.device());
    let grads = (y.clone().cast(FloatDType::F32) * up).sum().backward();
    let grads = leaves
        .iter()
        .map(|leaf| values(leaf.grad(&grads).expect("every input gets a gradient")))
        .collect();
    (values(y), grads)
}

/// [`run`] in each half dtype against [`run`] in f32 on the same values rounded to that dtype:
/// the kernel's own error (its half-precision output and gradients), not the rounding of the
/// inputs, which an ill-conditioned case (a LayerNorm over 2 values) amplifies past any
/// tolerance whatever the kernel does (there Burn's composite bf16 op is off by 80x the values).
fn check<const D: usize, const N: usize>(
    what: &str,
    inputs: [Tensor<D>; N],
    f: &dyn Fn([Tensor<D>; N]) -> Tensor<D>,
) {
    for dtype in [FloatDType::BF16, FloatDType::F16] {
        let rel = tolerance(dtype);
        let rounded = inputs.clone().map(|x| x.cast(dtype).cast(FloatDType::F32));
        let (y, grads) = run(&rounded, FloatDType::F32, f);
        let (y_half, grads_half) = run(&inputs, dtype, f);
        assert_close(&format!("{what} {dtype:?} output"), &y_half, &y, rel);
        for (i, (g_half, g)) in grads_half.iter().zip(&grads).enumerate() {
            assert_close(&format!("{what} {dtype:?} gradient {i}"), g_half, g, rel);
        }
    }
}

/// `x` or its transpose (a view that is not contiguous).
fn oriented(x: Tensor<2>, transposed: bool) -> Tensor<2> {
    if transposed { x.swap_dims(0, 1) } else { x }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn linear_in_half_precision_matches_f32(
        rows in 1usize..40, d_in in 1usize..70, d_out in 1usize..50, seed in 0u64..1000,
        transposed in any::<bool>(),
    ) {
        let device = Device::flex().autodiff();
        let x = random([rows, d_in], seed, &device);
        let w = random([d_in, d_out], seed + 1, &device);
        let b = random([1, d_out], seed + 2, &device);
        check("linear", [x, w, b], &|[x, w, b]| {
            let x = oriented(oriented(x, transposed), transposed);
            linear(x, w, Some(b.reshape([d_out])))
        });
    }

    #[test]
    fn elementwise_ops_in_half_precision_match_f32(
        rows in 1usize..30, cols in 1usize..90, seed in 0u64..1000, transposed in any::<bool>(),
    ) {
        let device = Device::flex().autodiff();
        let x = random([rows, cols], seed, &device);
        for kind in [GeluKind::Exact, GeluKind::Tanh] {
            check(&format!("gelu {kind:?}"), [x.clone()], &|[x]| gelu(oriented(x, transposed), kind));
        }
        let up = random([rows, cols], seed + 1, &device);
        check("swiglu", [x.clone(), up], &|[g, u]| {
            swiglu(oriented(g, transposed), oriented(u, transposed))
        });
        // The norms' weights are master parameters cast per step, as `Precision` casts them.
        let width = if transposed { rows } else { cols };
        let ln = LayerNormConfig::new(width).init(&device);
        let rms = RmsNormConfig::new(width).init(&device);
        check("layer_norm", [x.clone()], &|[x]| {
            let dtype = x.dtype();
            let ln = if dtype == DType::F32 { ln.clone() } else { precision(dtype).compute_model(&ln) };
            layer_norm(&ln, oriented(x, transposed))
        });
        check("rms_norm", [x], &|[x]| {
            let dtype = x.dtype();
            let rms = if dtype == DType::F32 { rms.clone() } else { precision(dtype).compute_model(&rms) };
            rms_norm(&rms, oriented(x, transposed))
        });
    }

    #[test]
    fn attention_and_rope_in_half_precision_match_f32(
        b in 1usize..3, kv_heads in 1usize..3, group in 1usize..3, t in 1usize..20,
        d in prop::sample::select(vec![4usize, 8, 16]), causal in any::<bool>(), seed in 0u64..1000,
    ) {
        let device = Device::flex().autodiff();
        let h = kv_heads * group;
        let q = random([b, h, t, d], seed, &device);
        let k = random([b, kv_heads, t, d], seed + 1, &device);
        let v = random([b, kv_heads, t, d], seed + 2, &device);
        let keys = if causal { KeyRange::CAUSAL } else { KeyRange::ALL };
        check("attention", [q.clone(), k, v], &|[q, k, v]| {
            attention(q, k, v, 1.0 / (d as f64).sqrt(), keys, None)
        });
        let rotary = RotaryEmbedding::new(d, t + 3, 10_000.0, None, &device);
        check("rope", [q], &|[x]| rope(x, &rotary.cos, &rotary.sin, 3));
    }
}

fn precision(dtype: DType) -> Precision {
    match dtype {
        DType::BF16 => Precision::Bf16,
        _ => Precision::F16,
    }
}

/// A whole GPT's step in bf16 and f16 (the Trainer's mixed precision: f32 master weights cast
/// inside the graph, the loss on f32 logits): the master weights' gradients within the half
/// dtype's tolerance of the f32 step's, in norm over the whole model.
#[test]
fn a_gpt_step_in_half_precision_matches_f32() {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::Int;
    use kiln_model::gpt::GptConfig;
    let device = Device::flex().autodiff();
    device.seed(3);
    let gpt = GptConfig::new(20)
        .with_block_size(16)
        .with_n_layer(2)
        .with_n_head(4)
        .with_d_model(128)
        .init(&device)
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let ids: Vec<i64> = (0..32 * 17).map(|_| rng.random_range(0..20)).collect();
    let all = Tensor::<2, Int>::from_data(TensorData::new(ids, [32, 17]), &device);
    let (inputs, targets) = (all.clone().narrow(1, 0, 16), all.narrow(1, 1, 16));
    /// Every parameter's gradient, in module order, one flat vector.
    struct Flat<'a>(&'a GradientsParams, Vec<f32>);
    impl ModuleVisitor for Flat<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let grad = self.0.get::<D>(param.id).expect("every parameter trains");
            self.1.extend(values(grad));
        }
    }
    let gradient = |precision: Precision| {
        let model = precision.compute_model(&gpt);
        let logits = model.forward(inputs.clone()).unwrap();
        assert_eq!(logits.dtype(), DType::from(precision.dtype()));
        let loss =
            kiln_model::loss::cross_entropy(logits.cast(FloatDType::F32), targets.clone(), None);
        let grads = GradientsParams::from_grads(loss.backward(), &gpt);
        let mut flat = Flat(&grads, Vec::new());
        gpt.visit(&mut flat);
        flat.1
    };
    let reference = gradient(Precision::F32);
    for precision in [Precision::Bf16, Precision::F16] {
        let rel = tolerance(precision.dtype());
        assert_close(
            &format!("{precision:?} gradients"),
            &gradient(precision),
            &reference,
            rel,
        );
    }
}

/// Decoding's products (a few rows) read a bf16 or f16 weight in place, widening a row at a time
/// (`skinny.rs`): the f32 arithmetic of the same product on the widened values, so at 1 and 2
/// rows, where f32 takes the same product, the result is f32's rounded once, bit for bit; with
/// the weight seen transposed too (the tied LM head).
#[test]
fn a_few_rows_against_a_half_weight_are_the_f32_product_rounded_once() {
    let device = Device::flex();
    for dtype in [FloatDType::BF16, FloatDType::F16] {
        for (rows, d_in, d_out, transposed) in [(1, 70, 300, false), (2, 33, 129, true)] {
            let x = random([rows, d_in], 7, &device).cast(dtype);
            // Stored `[d_out, d_in]` and seen transposed, or stored `[d_in, d_out]`; the f32
            // reference holds the same values in the same layout.
            let stored = if transposed {
                random([d_out, d_in], 8, &device)
            } else {
                random([d_in, d_out], 8, &device)
            }
            .cast(dtype);
            let w = oriented(stored.clone(), transposed);
            let w_f32 = oriented(stored.cast(FloatDType::F32), transposed);
            let b = random([d_out], 9, &device).cast(dtype);
            let half = linear(x.clone(), w, Some(b.clone()));
            assert_eq!(half.dtype(), DType::from(dtype));
            let f32 = |t: Tensor<2>| t.cast(FloatDType::F32);
            let reference = linear(f32(x), w_f32, Some(b.cast(FloatDType::F32))).cast(dtype);
            assert_eq!(
                values(half),
                values(reference),
                "{dtype:?} {rows}x{d_in}x{d_out}"
            );
        }
    }
}

/// A GPT decoding token by token through its KV cache in bf16 and f16 (weights and activations
/// in the half dtype, as `bench_generate` runs it) gives its own full forward's logits, and
/// both stay within the half dtype's tolerance of the f32 model's.
#[test]
fn decoding_in_half_precision_matches_its_full_forward_and_f32() {
    use burn::tensor::Int;
    use kiln_model::gpt::GptConfig;
    let device = Device::flex();
    device.seed(11);
    let gpt = GptConfig::new(50)
        .with_block_size(16)
        .with_n_layer(2)
        .with_n_head(4)
        .with_d_model(64)
        .init(&device)
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (batch, len) = (3, 10);
    let ids: Vec<i64> = (0..batch * len).map(|_| rng.random_range(0..50)).collect();
    let all = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, len]), &device);
    let reference = values(gpt.forward(all.clone()).unwrap());
    for precision in [Precision::Bf16, Precision::F16] {
        let model = precision.compute_model(&gpt);
        let full = model.forward(all.clone()).unwrap();
        assert_eq!(full.dtype(), DType::from(precision.dtype()));
        let full = values(full);
        let mut cache = model.new_cache();
        let mut steps = Vec::new();
        for t in 0..len {
            let step = model
                .forward_cached(all.clone().narrow(1, t, 1), &mut cache)
                .unwrap();
            steps.push(step);
        }
        let decoded = values(Tensor::cat(steps, 1));
        let rel = tolerance(precision.dtype());
        assert_close(&format!("{precision:?} cached"), &decoded, &full, rel);
        assert_close(&format!("{precision:?} vs f32"), &full, &reference, rel);
    }
}
