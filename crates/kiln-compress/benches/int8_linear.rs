//! The int8 linear layer against Burn's f32 linear on the same input, at the shapes of the
//! addition GPT's feed-forward layer (512 sequences × 11 tokens, 128 -> 512).
//!
//! `cargo bench --workspace --bench int8_linear`

use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use kiln_compress::{ActivationQuant, QuantConfig, QuantizedLinear, gemm_i8, int8_kernel_name};

fn bench(c: &mut Criterion) {
    let device = Device::flex();
    let rows = 512 * 11;
    for (d_in, d_out) in [(128, 512), (512, 128), (128, 128)] {
        let layer = LinearConfig::new(d_in, d_out).init(&device);
        let x = Tensor::<2>::random([rows, d_in], Distribution::Normal(0.0, 1.0), &device);
        let dynamic =
            QuantizedLinear::from_linear(&layer, &QuantConfig::new(), ActivationQuant::Dynamic)
                .unwrap();
        let weight_only =
            QuantizedLinear::from_linear(&layer, &QuantConfig::new(), ActivationQuant::None)
                .unwrap();
        let mut group = c.benchmark_group(format!("linear_{rows}x{d_in}x{d_out}"));
        group.sample_size(20);
        group.bench_function("f32_burn", |b| {
            b.iter(|| layer.forward(x.clone()).into_data())
        });
        group.bench_function(format!("int8_dynamic_{}", int8_kernel_name()), |b| {
            b.iter(|| dynamic.forward(x.clone()).into_data())
        });
        group.bench_function("int8_weight_only_dequantize", |b| {
            b.iter(|| weight_only.forward(x.clone()).into_data())
        });
        let a: Vec<i8> = (0..rows * d_in).map(|i| (i % 251) as u8 as i8).collect();
        let w = &dynamic.weight.values;
        let sums: Vec<i32> = w
            .chunks(d_in)
            .map(|r| r.iter().map(|&v| v as i32).sum())
            .collect();
        group.bench_function("int8_gemm_only", |b| {
            b.iter(|| gemm_i8(&a, w, &sums, rows, d_out, d_in).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
