//! Criterion bench of one full training step (forward, backward, AdamW) of kiln's Gpt on the
//! CPU, at the size of `examples/bench_gpt.rs` (d_model 256, 4 layers, 4 heads, seq 128,
//! batch 16, vocab 256).

use burn::optim::{AdamWConfig, GradientsParams};
use criterion::{Criterion, criterion_group, criterion_main};
use kiln::model::loss::cross_entropy;
use kiln::prelude::*;

fn training_step(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let (vocab, seq, batch) = (256, 128, 16);
    let config = GptConfig::new(vocab)
        .with_block_size(seq)
        .with_n_layer(4)
        .with_n_head(4)
        .with_d_model(256);
    let mut gpt = Some(config.init(&device).unwrap());
    let mut optim = AdamWConfig::new().init();
    let data: Vec<i64> = (0..batch * (seq + 1))
        .map(|i| (i * 7919 % vocab) as i64)
        .collect();
    let all = Tensor::<2, Int>::from_data(TensorData::new(data, [batch, seq + 1]), &device);
    let (inputs, targets) = (all.clone().narrow(1, 0, seq), all.narrow(1, 1, seq));

    let mut group = c.benchmark_group("gpt_train_step");
    group.sample_size(10);
    group.bench_function("d256_l4_seq128_b16", |b| {
        b.iter(|| {
            let model = gpt.take().unwrap();
            let loss = cross_entropy(
                model.forward(inputs.clone()).unwrap(),
                targets.clone(),
                None,
            );
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            gpt = Some(optim.step(3e-4, model, grads));
            loss.into_scalar::<f32>()
        })
    });
    group.finish();
}

criterion_group!(benches, training_step);
criterion_main!(benches);
