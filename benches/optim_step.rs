//! Criterion bench of one optimizer step (no forward/backward) on a ~10M-parameter kiln Gpt
//! (d_model 256, 12 layers, vocab 1024) on the CPU: kiln's AdamW, kiln's LAMB (with and
//! without apex-style global clipping) and, as the baseline in the same run, Burn's own AdamW.
//!
//! ```text
//! cargo bench --bench optim_step
//! ```
//!
//! Gradients are fresh random tensors made outside the timed region; the timed region is the
//! `ModuleOptimizer::step` plus a device sync.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Distribution;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kiln::optim::{AdamWConfig, LambConfig};
use kiln::prelude::*;

#[derive(Default)]
struct Shapes(Vec<(ParamId, Vec<usize>)>);

impl ModuleVisitor for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, param.val().dims().to_vec()));
    }
}

fn random_grads(shapes: &[(ParamId, Vec<usize>)], device: &Device) -> GradientsParams {
    let mut grads = GradientsParams::new();
    let dist = Distribution::Normal(0.0, 0.01);
    for (id, dims) in shapes {
        match dims.len() {
            1 => grads.register(*id, Tensor::<1>::random([dims[0]], dist, device)),
            2 => grads.register(*id, Tensor::<2>::random([dims[0], dims[1]], dist, device)),
            rank => panic!("no rank-{rank} parameters in Gpt"),
        }
    }
    grads
}

fn optimizer_step(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let grad_device = Device::flex();
    let config = GptConfig::new(1024)
        .with_block_size(128)
        .with_n_layer(12)
        .with_n_head(4)
        .with_d_model(256);
    let gpt = config.init(&device).unwrap();
    let mut shapes = Shapes::default();
    gpt.visit(&mut shapes);
    let params: usize = shapes
        .0
        .iter()
        .map(|(_, d)| d.iter().product::<usize>())
        .sum();
    eprintln!(
        "optim_step: Gpt with {params} parameters in {} tensors",
        shapes.0.len()
    );

    let lamb = LambConfig::new().with_max_grad_norm(Some(1.0));
    let candidates: Vec<(&str, ModuleOptimizer, bool)> = vec![
        (
            "burn_adamw_baseline",
            burn::optim::AdamWConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(0.01)
                .init(),
            false,
        ),
        ("kiln_adamw", AdamWConfig::new().init(&gpt).unwrap(), false),
        ("kiln_lamb", LambConfig::new().init(&gpt).unwrap(), false),
        ("kiln_lamb_global_clip", lamb.init(&gpt).unwrap(), true),
    ];

    let mut group = c.benchmark_group(format!("optim_step_gpt_{:.1}M", params as f64 / 1e6));
    group.sample_size(10);
    for (name, mut optim, clip) in candidates {
        let mut model = Some(gpt.clone());
        group.bench_function(name, |b| {
            b.iter_batched(
                || random_grads(&shapes.0, &grad_device),
                |grads| {
                    let m = model.take().unwrap();
                    let grads = if clip {
                        lamb.clip_gradients(&m, grads).unwrap().0
                    } else {
                        grads
                    };
                    model = Some(optim.step(1e-4, m, grads));
                    device.sync().unwrap();
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, optimizer_step);
criterion_main!(benches);
