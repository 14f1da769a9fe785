//! Int8 quantization: error bounds (property tests), per-channel vs per-tensor, the quantized
//! linear layer and GPT against f32, calibration, and bad input.

use burn::nn::LinearConfig;
use burn::tensor::{Device, Int, Tensor, TensorData, Tolerance};
use kiln_compress::{
    ActivationQuant, Calibration, CompressError, Granularity, QuantConfig, QuantMode, QuantParams,
    QuantizedGpt, QuantizedLinear, QuantizedTensor, calibrate,
};
use kiln_model::gpt::GptConfig;
use kiln_model::loss::token_tensor;
use kiln_model::sampling::{GenerateConfig, argmax};
use proptest::prelude::*;

fn configs() -> Vec<QuantConfig> {
    let mut out = Vec::new();
    for mode in [QuantMode::Symmetric, QuantMode::Asymmetric] {
        for granularity in [Granularity::PerTensor, Granularity::PerChannel] {
            out.push(
                QuantConfig::new()
                    .with_mode(mode)
                    .with_granularity(granularity),
            );
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dequantized_values_are_within_half_a_step(
        channels in 1usize..5,
        len in 1usize..40,
        seed in any::<u64>(),
        spread in 0.001f32..100.0,
        offset in -50.0f32..50.0,
    ) {
        let values: Vec<f32> = (0..channels * len)
            .map(|i| {
                let x = ((seed.wrapping_add(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32
                    / (1u64 << 24) as f32) * 2.0 - 1.0;
                offset + spread * x
            })
            .collect();
        for config in configs() {
            let q = QuantizedTensor::quantize(&values, [channels, len], &config).unwrap();
            let back = q.dequantize();
            for (i, (v, b)) in values.iter().zip(&back).enumerate() {
                let p = q.params_of(i / len);
                // Half a step, plus f32 rounding of the products.
                let bound = p.scale / 2.0 * (1.0 + 1e-4) + v.abs() * 1e-6;
                prop_assert!((v - b).abs() <= bound, "{config:?}: {v} -> {b}, scale {}", p.scale);
            }
        }
    }

    #[test]
    fn zero_is_exact(min in -10.0f32..0.0, max in 0.0f32..10.0) {
        for mode in [QuantMode::Symmetric, QuantMode::Asymmetric] {
            let p = QuantParams::from_range(min, max, mode);
            prop_assert_eq!(p.dequantize(p.quantize(0.0, mode)), 0.0);
        }
    }
}

/// Rows of very different magnitudes, as the output channels of a trained layer have.
fn uneven(channels: usize, len: usize) -> Vec<f32> {
    (0..channels * len)
        .map(|i| {
            let c = i / len;
            let x = ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
            x * 10f32.powf(c as f32 / channels as f32 * 2.0)
        })
        .collect()
}

#[test]
fn per_channel_error_is_at_most_per_tensor_error() {
    let (channels, len) = (16, 64);
    let values = uneven(channels, len);
    for mode in [QuantMode::Symmetric, QuantMode::Asymmetric] {
        let err = |g| {
            let q = QuantizedTensor::quantize(
                &values,
                [channels, len],
                &QuantConfig::new().with_mode(mode).with_granularity(g),
            )
            .unwrap();
            let back = q.dequantize();
            let per_row: Vec<f32> = (0..channels)
                .map(|c| {
                    (0..len)
                        .map(|j| (values[c * len + j] - back[c * len + j]).abs())
                        .fold(0.0, f32::max)
                })
                .collect();
            (q, per_row)
        };
        let (pt, pt_err) = err(Granularity::PerTensor);
        let (pc, pc_err) = err(Granularity::PerChannel);
        for (c, err) in pc_err.iter().enumerate() {
            // Each channel's own range is inside the tensor's: a finer step, a smaller bound.
            assert!(pc.params_of(c).scale <= pt.params_of(c).scale * (1.0 + 1e-6));
            assert!(*err <= pt.params_of(c).scale / 2.0 * (1.0 + 1e-4));
        }
        let total = |e: &[f32]| e.iter().sum::<f32>();
        assert!(total(&pc_err) < total(&pt_err), "{mode:?}");
    }
}

#[test]
fn percentile_calibration_clips_outliers() {
    let mut values: Vec<f32> = (0..1000).map(|i| (i as f32 / 1000.0) - 0.5).collect();
    values.push(100.0);
    let (lo, hi) = calibrate(&values, Calibration::MinMax).unwrap();
    assert_eq!((lo, hi), (-0.5, 100.0));
    let (lo, hi) = calibrate(&values, Calibration::Percentile(99.0)).unwrap();
    assert!(hi < 1.0 && lo < -0.4, "{lo} {hi}");
    assert!(calibrate(&values, Calibration::Percentile(20.0)).is_err());
    assert!(calibrate(&[], Calibration::MinMax).is_err());
}

#[test]
fn quantized_linear_matches_f32_linear() {
    let device = Device::flex();
    device.seed(3);
    let layer = LinearConfig::new(96, 40).init(&device);
    let x = Tensor::<3>::random(
        [3, 5, 96],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let want = layer.forward(x.clone());
    let scale: f32 = want.clone().abs().max().into_scalar();
    for config in configs() {
        for act in [ActivationQuant::None, ActivationQuant::Dynamic] {
            let q = QuantizedLinear::from_linear(&layer, &config, act).unwrap();
            let got = q.forward(x.clone());
            assert_eq!(got.dims(), [3, 5, 40]);
            let err: f32 = (got - want.clone()).abs().max().into_scalar();
            assert!(
                err < 0.03 * scale,
                "{config:?} {act:?}: error {err} vs output scale {scale}"
            );
        }
    }
    assert_eq!(
        QuantizedLinear::from_linear(&layer, &QuantConfig::new(), ActivationQuant::Dynamic)
            .unwrap()
            .weight
            .values
            .len(),
        96 * 40
    );
}

fn tiny_gpt(device: &Device) -> kiln_model::gpt::Gpt {
    device.seed(11);
    GptConfig::new(12)
        .with_block_size(12)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(32)
        .init(device)
        .unwrap()
}

fn ids(device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(vec![1i64, 5, 3, 10, 7, 2, 11, 4, 0, 9, 8, 6], [2, 6]),
        device,
    )
}

#[test]
fn quantized_gpt_is_close_to_the_f32_gpt_and_generates() {
    let device = Device::flex();
    let gpt = tiny_gpt(&device);
    let want = gpt.forward(ids(&device)).unwrap();
    let scale: f32 = want.clone().abs().max().into_scalar();
    let error = |got: Tensor<3>| -> f32 { (got - want.clone()).abs().max().into_scalar() };
    let mut q =
        QuantizedGpt::from_gpt(&gpt, &QuantConfig::new(), ActivationQuant::Dynamic).unwrap();
    // Dynamic: measured 0.2%-0.6% of the largest logit over 20 random models.
    let e = error(q.forward(ids(&device)).unwrap());
    assert!(
        e <= 0.01 * scale,
        "dynamic: error {e} vs logits up to {scale}"
    );
    // Static activations from calibration, asymmetric and percentile (clipping costs more:
    // measured 0.3%-2.6%).
    q.calibrate(
        &[ids(&device)],
        Calibration::Percentile(99.9),
        QuantMode::Asymmetric,
    )
    .unwrap();
    assert!(
        q.linears()
            .iter()
            .all(|(_, l)| matches!(l.activations, ActivationQuant::Static(_)))
    );
    let e = error(q.forward(ids(&device)).unwrap());
    assert!(
        e <= 0.05 * scale,
        "static: error {e} vs logits up to {scale}"
    );
    // Generation is kiln-model's loop, KV cache included: the tokens of recomputing the whole
    // sequence at every step, past the context (12 positions) too.
    let prompts = vec![vec![1, 2, 3], vec![4, 5, 6]];
    let out = q
        .generate(&prompts, &GenerateConfig::new().with_max_new_tokens(12))
        .unwrap();
    let mut reference = prompts.clone();
    for _ in 0..12 {
        let window: Vec<Vec<u32>> = reference
            .iter()
            .map(|s| s[s.len() - 12.min(s.len())..].to_vec())
            .collect();
        let logits = q.forward(token_tensor(&window, &device).unwrap()).unwrap();
        let [batch, seq, vocab] = logits.dims();
        let last: Vec<f32> = logits
            .narrow(1, seq - 1, 1)
            .reshape([batch, vocab])
            .into_data()
            .try_to_vec()
            .unwrap();
        for (s, row) in reference.iter_mut().zip(last.chunks(vocab)) {
            s.push(argmax(row) as u32);
        }
    }
    assert_eq!(out, reference);
    assert!(
        q.forward(Tensor::from_data(
            TensorData::new(vec![12i64], [1, 1]),
            &device
        ))
        .is_err()
    );
}

#[test]
fn quantizing_nothing_is_an_error() {
    let device = Device::flex();
    let mut gpt = tiny_gpt(&device);
    gpt.blocks.clear();
    assert!(matches!(
        QuantizedGpt::from_gpt(&gpt, &QuantConfig::new(), ActivationQuant::Dynamic),
        Err(CompressError::EmptyModel(_))
    ));
    assert!(QuantizedTensor::quantize(&[], [0, 0], &QuantConfig::new()).is_err());
    assert!(QuantizedTensor::quantize(&[1.0, 2.0, 3.0], [2, 2], &QuantConfig::new()).is_err());
    assert!(QuantizedTensor::quantize(&[1.0, f32::NAN], [1, 2], &QuantConfig::new()).is_err());
    let q = QuantizedGpt::from_gpt(
        &tiny_gpt(&device),
        &QuantConfig::new(),
        ActivationQuant::Dynamic,
    )
    .unwrap();
    let mut q2 = q.clone();
    assert!(
        q2.calibrate(&[], Calibration::MinMax, QuantMode::Symmetric)
            .is_err()
    );
}

#[test]
fn int8_weights_take_a_quarter_of_f32() {
    let device = Device::flex();
    let layer = LinearConfig::new(256, 128).with_bias(false).init(&device);
    let q = QuantizedLinear::from_linear(&layer, &QuantConfig::new(), ActivationQuant::Dynamic)
        .unwrap();
    let f32_bytes = 4 * 256 * 128;
    assert!(q.nbytes() as f64 <= f32_bytes as f64 / 3.9);
}

#[test]
fn removing_heads_gives_the_outputs_of_masking_them() {
    let device = Device::flex();
    device.seed(13);
    let gpt = GptConfig::new(12)
        .with_block_size(12)
        .with_n_layer(2)
        .with_n_head(4)
        .with_d_model(32)
        .init(&device)
        .unwrap();
    let kept = kiln_compress::select_heads(&gpt, 0.5, kiln_compress::Norm::L2).unwrap();
    let masked = kiln_compress::head_masks(&gpt, &kept)
        .unwrap()
        .apply(gpt.clone());
    for act in [ActivationQuant::None, ActivationQuant::Dynamic] {
        let from_masked = QuantizedGpt::from_gpt(&masked, &QuantConfig::new(), act).unwrap();
        // The same int8 weights, with the silenced heads dropped instead of zeroed.
        let removed = from_masked.clone().remove_heads(&kept).unwrap();
        assert_eq!(removed.gpt.blocks[0].attn.n_head, 2);
        assert_eq!(removed.gpt.blocks[1].attn.query.d_out(), 16);
        assert_eq!(removed.gpt.blocks[1].attn.out.d_in(), 16);
        assert!(removed.num_params() < from_masked.num_params());
        let a = from_masked.forward(ids(&device)).unwrap();
        let b = removed.forward(ids(&device)).unwrap();
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-5));
    }
    let q = QuantizedGpt::from_gpt(&gpt, &QuantConfig::new(), ActivationQuant::Dynamic).unwrap();
    assert!(q.clone().remove_heads(&[vec![0]]).is_err());
    assert!(q.remove_heads(&[vec![], vec![0]]).is_err());
}

/// kiln-compress's symmetric per-tensor int8 is Burn's `Q8S` scheme (scale = max|x| / 127):
/// the same grid, so Burn's quantize-dequantize and ours agree (up to a step where a value sits
/// exactly between two levels and the rounding rules differ).
#[test]
fn symmetric_per_tensor_matches_burns_q8s() {
    use burn::tensor::quantization::{QuantScheme, QuantValue};
    let device = Device::flex();
    let values: Vec<f32> = (0..256)
        .map(|i| ((i * 7919 % 997) as f32 / 498.5 - 1.0) * 3.0)
        .collect();
    let scheme = QuantScheme::default().with_value(QuantValue::Q8S);
    let burn: Vec<f32> = Tensor::<2>::from_data(TensorData::new(values.clone(), [16, 16]), &device)
        .quantize_dynamic(&scheme)
        .dequantize()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    let config = QuantConfig::new().with_granularity(Granularity::PerTensor);
    let ours = QuantizedTensor::quantize(&values, [16, 16], &config).unwrap();
    let scale = ours.params_of(0).scale;
    let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!((scale - max / 127.0).abs() <= 1e-7);
    let ours = ours.dequantize();
    let same = ours
        .iter()
        .zip(&burn)
        .filter(|(a, b)| (*a - *b).abs() <= 1e-6 * max)
        .count();
    assert!(same >= 250, "{same} of 256 agree");
    assert!(
        ours.iter()
            .zip(&burn)
            .all(|(a, b)| (a - b).abs() <= scale * 1.001)
    );
}

#[test]
fn quantized_linear_rejects_inputs_of_the_wrong_width() {
    let device = Device::flex();
    let layer = LinearConfig::new(8, 4).init(&device);
    let q = QuantizedLinear::from_linear(&layer, &QuantConfig::new(), ActivationQuant::Dynamic)
        .unwrap();
    assert!(q.try_forward(Tensor::<2>::zeros([3, 7], &device)).is_err());
    assert_eq!(
        q.try_forward(Tensor::<2>::zeros([3, 8], &device))
            .unwrap()
            .dims(),
        [3, 4]
    );
    assert!(q.forward_host(&[0.0; 10], 2).is_err());
    assert_eq!(q.forward_host(&[0.0; 16], 2).unwrap().len(), 8);
}
