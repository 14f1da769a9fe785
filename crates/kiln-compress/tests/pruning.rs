//! Pruning: exact mask fractions, masks surviving optimizer steps, physical removal matching
//! masking, and bad arguments.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_compress::{
    Amount, Axis, CompressError, GradualPruningConfig, Norm, PruningScope, ffn_neuron_masks,
    head_masks, linear_weights, magnitude_masks, n_m_masks, read_params, remove_ffn_neurons,
    satisfies_n_m, select_ffn_neurons, select_heads, sparsity, structured_masks,
};
use kiln_model::gpt::{Gpt, GptConfig};

fn tiny(device: &Device) -> (Gpt, GptConfig) {
    let config = GptConfig::new(12)
        .with_block_size(12)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(16)
        .with_d_ff(Some(32));
    device.seed(7);
    (config.init(device).unwrap(), config)
}

fn ids(device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(
            vec![1i64, 5, 3, 10, 7, 2, 11, 4, 0, 9, 8, 6, 3, 3, 1, 2],
            [2, 8],
        ),
        device,
    )
}

fn zeros_of(gpt: &Gpt) -> Vec<(String, usize, usize)> {
    read_params(gpt, &linear_weights)
        .into_iter()
        .map(|p| {
            let z = p.values.iter().filter(|&&v| v == 0.0).count();
            (p.path, z, p.values.len())
        })
        .collect()
}

#[test]
fn layerwise_fraction_prunes_exactly_round_fraction_of_each_layer() {
    let device = Device::flex();
    let (gpt, _) = tiny(&device);
    for fraction in [0.0, 0.3, 0.5, 0.77, 1.0] {
        let masks = magnitude_masks(
            &gpt,
            &linear_weights,
            Amount::Fraction(fraction),
            PruningScope::Layerwise,
        )
        .unwrap();
        let pruned = masks.apply(gpt.clone());
        for (path, zeros, n) in zeros_of(&pruned) {
            assert_eq!(
                zeros,
                (fraction * n as f64).round() as usize,
                "{path} at {fraction}"
            );
        }
    }
}

#[test]
fn layerwise_pruning_removes_the_smallest_magnitudes() {
    let device = Device::flex();
    let (gpt, _) = tiny(&device);
    let masks = magnitude_masks(
        &gpt,
        &linear_weights,
        Amount::Fraction(0.4),
        PruningScope::Layerwise,
    )
    .unwrap();
    for p in read_params(&gpt, &linear_weights) {
        let mask = masks.get(&p.path).unwrap();
        let largest_pruned = p
            .values
            .iter()
            .zip(mask)
            .filter(|(_, m)| **m == 0.0)
            .map(|(v, _)| v.abs())
            .fold(0.0, f32::max);
        let smallest_kept = p
            .values
            .iter()
            .zip(mask)
            .filter(|(_, m)| **m == 1.0)
            .map(|(v, _)| v.abs())
            .fold(f32::INFINITY, f32::min);
        assert!(largest_pruned <= smallest_kept, "{}", p.path);
    }
}

#[test]
fn global_count_prunes_exactly_that_many_weights_across_layers() {
    let device = Device::flex();
    let (gpt, _) = tiny(&device);
    let total: usize = zeros_of(&gpt).iter().map(|r| r.2).sum();
    for count in [0, 1, 1000, total / 2, total] {
        let masks = magnitude_masks(
            &gpt,
            &linear_weights,
            Amount::Count(count),
            PruningScope::Global,
        )
        .unwrap();
        let pruned = masks.apply(gpt.clone());
        let zeros: usize = zeros_of(&pruned).iter().map(|r| r.1).sum();
        assert_eq!(zeros, count);
        assert_eq!(
            masks.sparsity().iter().map(|s| s.pruned).sum::<usize>(),
            count
        );
    }
    // Global pruning is not layerwise: the output projections (smaller init) lose more.
    let masks = magnitude_masks(
        &gpt,
        &linear_weights,
        Amount::Fraction(0.5),
        PruningScope::Global,
    )
    .unwrap();
    let rows = masks.sparsity();
    let frac = |name: &str| {
        rows.iter()
            .find(|r| r.path == name)
            .map(|r| r.pruned as f64 / r.numel as f64)
            .unwrap()
    };
    assert!(frac("blocks.0.ffn.down.weight") > frac("blocks.0.ffn.up.weight"));
}

#[test]
fn two_four_keeps_the_two_largest_of_every_group_of_four() {
    let device = Device::flex();
    let (gpt, _) = tiny(&device);
    let masks = n_m_masks(&gpt, &linear_weights, 2, 4).unwrap();
    let pruned = masks.apply(gpt.clone());
    for (before, after) in read_params(&gpt, &linear_weights)
        .iter()
        .zip(read_params(&pruned, &linear_weights))
    {
        let (rows, cols) = (after.shape[0], after.shape[1]);
        assert!(
            satisfies_n_m(&after.values, rows, cols, 2, 4),
            "{}",
            after.path
        );
        assert_eq!(
            after.values.iter().filter(|&&v| v == 0.0).count(),
            rows * cols / 2
        );
        // In each group the kept weights are at least as large as the dropped ones.
        for c in 0..cols {
            for g in (0..rows).step_by(4) {
                let idx: Vec<usize> = (g..g + 4).map(|r| r * cols + c).collect();
                let kept = idx
                    .iter()
                    .filter(|&&i| after.values[i] != 0.0)
                    .map(|&i| before.values[i].abs())
                    .fold(f32::INFINITY, f32::min);
                let dropped = idx
                    .iter()
                    .filter(|&&i| after.values[i] == 0.0)
                    .map(|&i| before.values[i].abs())
                    .fold(0.0, f32::max);
                assert!(dropped <= kept);
            }
        }
    }
}

#[test]
fn structured_masks_zero_whole_rows_or_columns() {
    let device = Device::flex();
    let (gpt, _) = tiny(&device);
    for (axis, norm) in [(Axis::Rows, Norm::L1), (Axis::Columns, Norm::L2)] {
        let masks =
            structured_masks(&gpt, &linear_weights, axis, norm, Amount::Fraction(0.25)).unwrap();
        let pruned = masks.apply(gpt.clone());
        for p in read_params(&pruned, &linear_weights) {
            let (rows, cols) = (p.shape[0], p.shape[1]);
            let dead_rows = (0..rows)
                .filter(|&r| (0..cols).all(|c| p.values[r * cols + c] == 0.0))
                .count();
            let dead_cols = (0..cols)
                .filter(|&c| (0..rows).all(|r| p.values[r * cols + c] == 0.0))
                .count();
            match axis {
                Axis::Rows => assert_eq!(dead_rows, (rows as f64 * 0.25).round() as usize),
                Axis::Columns => assert_eq!(dead_cols, (cols as f64 * 0.25).round() as usize),
            }
        }
    }
}

#[test]
fn pruned_weights_stay_exactly_zero_through_adamw_steps() {
    let device = Device::flex().autodiff();
    let (gpt, _) = tiny(&device);
    let masks = magnitude_masks(
        &gpt,
        &linear_weights,
        Amount::Fraction(0.5),
        PruningScope::Layerwise,
    )
    .unwrap();
    let mut gpt = masks.apply(gpt);
    let before = read_params(&gpt, &linear_weights);
    let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
    let targets = ids(&device);
    for _ in 0..3 {
        let logits = gpt.forward(ids(&device)).unwrap();
        let loss = gpt.loss(logits, targets.clone(), None);
        let grads = GradientsParams::from_grads(loss.backward(), &gpt);
        gpt = optim.step(1e-2, gpt, grads);
        gpt = masks.apply(gpt);
    }
    let after = read_params(&gpt, &linear_weights);
    for (b, a) in before.iter().zip(&after) {
        let mask = masks.get(&a.path).unwrap();
        for (m, v) in mask.iter().zip(&a.values) {
            if *m == 0.0 {
                assert_eq!(*v, 0.0, "{}", a.path);
            }
        }
        // The surviving weights did train.
        assert!(
            a.values.iter().zip(&b.values).any(|(x, y)| x != y),
            "{} did not change",
            a.path
        );
    }
    // Without the hook the optimizer moves them off zero (the hook is what keeps them there).
    let logits = gpt.forward(ids(&device)).unwrap();
    let loss = gpt.loss(logits, targets, None);
    let grads = GradientsParams::from_grads(loss.backward(), &gpt);
    let gpt = optim.step(1e-2, gpt, grads);
    let total_zeros: usize = zeros_of(&gpt).iter().map(|r| r.1).sum();
    let masked: usize = masks.sparsity().iter().map(|s| s.pruned).sum();
    assert!(total_zeros < masked);
}

#[test]
fn gradual_pruning_follows_the_cubic_schedule_to_the_final_sparsity() {
    let config = GradualPruningConfig::new(0.8, 10).with_frequency(2);
    assert_eq!(config.sparsity_at(0), 0.0);
    assert!((config.sparsity_at(5) - (0.8 - 0.8 * 0.5f64.powi(3))).abs() < 1e-12);
    assert_eq!(config.sparsity_at(10), 0.8);
    assert_eq!(config.sparsity_at(50), 0.8);
    let device = Device::flex().autodiff();
    let (mut gpt, _) = tiny(&device);
    let mut hook = config.init().unwrap();
    let mut optim = AdamWConfig::new().init();
    let mut last = 0.0;
    for step in 0..=10 {
        let logits = gpt.forward(ids(&device)).unwrap();
        let loss = gpt.loss(logits, ids(&device), None);
        let grads = GradientsParams::from_grads(loss.backward(), &gpt);
        gpt = optim.step(1e-3, gpt, grads);
        gpt = hook.after_optimizer_step(step, gpt).unwrap();
        let s = hook.masks().total_sparsity();
        assert!(s >= last, "sparsity went down at step {step}");
        last = s;
    }
    for (path, zeros, n) in zeros_of(&gpt) {
        assert_eq!(zeros, (0.8 * n as f64).round() as usize, "{path}");
    }
}

#[test]
fn removing_ffn_neurons_gives_the_outputs_of_masking_them() {
    let device = Device::flex();
    let (gpt, _) = tiny(&device);
    for norm in [Norm::L1, Norm::L2] {
        let kept = select_ffn_neurons(&gpt, 0.3, norm).unwrap();
        assert!(kept.iter().all(|k| k.len() == 32 - 10));
        let masked = ffn_neuron_masks(&gpt, &kept).unwrap().apply(gpt.clone());
        let removed = remove_ffn_neurons(gpt.clone(), &kept).unwrap();
        assert_eq!(removed.blocks[0].ffn.up.weight.dims(), [16, 22]);
        assert_eq!(removed.blocks[1].ffn.down.weight.dims(), [22, 16]);
        assert!(removed.num_params() < gpt.num_params());
        let a = masked.forward(ids(&device)).unwrap();
        let b = removed.forward(ids(&device)).unwrap();
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), burn::tensor::Tolerance::absolute(1e-5));
        // And masking changed the model (the test is not vacuous).
        let dense = gpt.forward(ids(&device)).unwrap();
        let diff: f32 = (dense - masked.forward(ids(&device)).unwrap())
            .abs()
            .max()
            .into_scalar();
        assert!(diff > 1e-6);
    }
}

#[test]
fn masked_heads_contribute_nothing() {
    let device = Device::flex();
    let (gpt, _) = tiny(&device);
    let kept = select_heads(&gpt, 0.5, Norm::L2).unwrap();
    assert!(kept.iter().all(|k| k.len() == 1));
    let masked = head_masks(&gpt, &kept).unwrap().apply(gpt.clone());
    // Silencing a head = zeroing its slice of the output projection alone.
    let mut out_only = kiln_compress::PruningMasks::new();
    for (b, kept) in kept.iter().enumerate() {
        let keep: Vec<bool> = (0..16 * 16).map(|i| kept.contains(&(i / 16 / 8))).collect();
        out_only
            .insert(&format!("blocks.{b}.attn.out.weight"), &[16, 16], &keep)
            .unwrap();
    }
    let a = masked.forward(ids(&device)).unwrap();
    let b = out_only.apply(gpt.clone()).forward(ids(&device)).unwrap();
    a.into_data()
        .assert_approx_eq::<f32>(&b.into_data(), burn::tensor::Tolerance::absolute(1e-5));
}

#[derive(Module, Debug)]
struct Odd {
    layer: Linear,
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let device = Device::flex();
    let (gpt, _) = tiny(&device);
    for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        let r = magnitude_masks(
            &gpt,
            &linear_weights,
            Amount::Fraction(bad),
            PruningScope::Global,
        );
        assert!(matches!(r, Err(CompressError::InvalidAmount(_))), "{bad}");
        assert!(matches!(
            select_ffn_neurons(&gpt, bad, Norm::L1),
            Err(CompressError::InvalidAmount(_))
        ));
        assert!(GradualPruningConfig::new(bad, 10).init().is_err());
    }
    assert!(matches!(
        magnitude_masks(
            &gpt,
            &linear_weights,
            Amount::Count(1 << 30),
            PruningScope::Layerwise
        ),
        Err(CompressError::InvalidAmount(_))
    ));
    assert!(matches!(
        n_m_masks(&gpt, &linear_weights, 3, 2),
        Err(CompressError::InvalidPattern { n: 3, m: 2 })
    ));
    assert!(matches!(
        n_m_masks(&gpt, &linear_weights, 0, 0),
        Err(CompressError::InvalidPattern { .. })
    ));
    let odd = Odd {
        layer: LinearConfig::new(6, 4).init(&device),
    };
    assert!(matches!(
        n_m_masks(&odd, &linear_weights, 2, 4),
        Err(CompressError::NotDivisible { dim: 6, m: 4, .. })
    ));
    assert!(matches!(
        magnitude_masks(
            &odd,
            &|_, _| false,
            Amount::Fraction(0.5),
            PruningScope::Global
        ),
        Err(CompressError::EmptyModel(_))
    ));
    assert!(select_ffn_neurons(&gpt, 1.0, Norm::L2).is_err());
    assert!(remove_ffn_neurons(gpt.clone(), &[vec![0, 0], vec![1]]).is_err());
    let mut masks = kiln_compress::PruningMasks::new();
    assert!(masks.insert("layer.weight", &[6, 4], &[true; 5]).is_err());
    masks.insert("layer.weight", &[4, 6], &[true; 24]).unwrap();
    assert!(matches!(
        masks.check(&odd),
        Err(CompressError::ShapeMismatch { .. })
    ));
}

#[test]
fn sparsity_report_counts_the_pruned_zeros() {
    let device = Device::flex();
    let (gpt, _) = tiny(&device);
    let masks = magnitude_masks(
        &gpt,
        &linear_weights,
        Amount::Fraction(0.5),
        PruningScope::Layerwise,
    )
    .unwrap();
    let pruned = masks.apply(gpt);
    for row in sparsity(&pruned)
        .iter()
        .filter(|r| linear_weights(&r.path, &[0, 0]) && r.path.contains("blocks"))
    {
        assert_eq!(row.fraction(), 0.5, "{}", row.path);
    }
}

#[test]
fn removing_heads_computes_what_masking_them_computes() {
    let device = Device::flex();
    let (gpt, config) = tiny(&device);
    let kept = select_heads(&gpt, 0.5, Norm::L2).unwrap();
    let masked = head_masks(&gpt, &kept).unwrap().apply(gpt.clone());
    let removed = kiln_compress::remove_heads(gpt.clone(), &kept).unwrap();
    assert!(removed.num_params() < gpt.num_params());
    assert!(removed.blocks.iter().all(|b| b.attn.n_head == 1));
    let a = masked.forward(ids(&device)).unwrap();
    let b = removed.forward(ids(&device)).unwrap();
    a.into_data()
        .assert_approx_eq::<f32>(&b.into_data(), burn::tensor::Tolerance::absolute(1e-5));
    // A GptConfig has one head count: saving refuses rather than write an unloadable file.
    let dir = tempfile::tempdir().unwrap();
    assert!(kiln_compress::save_gpt(&removed, &config, dir.path().join("g.kiln")).is_err());
    // Bad kept lists are errors, not panics.
    assert!(kiln_compress::remove_heads(gpt.clone(), &[vec![0]]).is_err());
    assert!(kiln_compress::remove_heads(gpt, &[vec![], vec![0]]).is_err());
}
