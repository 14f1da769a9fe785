//! Property tests (proptest, flex backend) of the invariants the issue lists.

use burn::module::{Module, Param};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use kiln_optim::schedule::Anneal;
use kiln_optim::{
    AdamWConfig, CosineWarmRestartsConfig, DecayShape, L1Mode, LambConfig, LrCurve, OneCycleConfig,
    SgdConfig, WarmupDecayConfig, clip_grad_norm, grad_norm,
};
use proptest::prelude::*;

#[derive(Module, Debug)]
struct Two {
    a: Param<Tensor<1>>,
    b: Param<Tensor<2>>,
}

fn two(a: &[f32], b: &[f32], device: &Device) -> Two {
    Two {
        a: Param::from_tensor(Tensor::from_data(
            TensorData::new(a.to_vec(), [a.len()]),
            device,
        )),
        b: Param::from_tensor(Tensor::from_data(
            TensorData::new(b.to_vec(), [2, b.len() / 2]),
            device,
        )),
    }
}

fn grads_for(model: &Two, ga: &[f32], gb: &[f32], device: &Device) -> GradientsParams {
    let mut grads = GradientsParams::new();
    grads.register(
        model.a.id,
        Tensor::<1>::from_data(TensorData::new(ga.to_vec(), [ga.len()]), device),
    );
    grads.register(
        model.b.id,
        Tensor::<2>::from_data(TensorData::new(gb.to_vec(), [2, gb.len() / 2]), device),
    );
    grads
}

fn vals(model: &Two) -> (Vec<f32>, Vec<f32>) {
    (
        model.a.val().into_data().try_into_vec_as::<f32>().unwrap(),
        model.b.val().into_data().try_into_vec_as::<f32>().unwrap(),
    )
}

fn vec_f32(len: usize, range: std::ops::Range<f32>) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(range, len)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Proximal L1 on SGD: after the gradient step `u = w − lr·g`, every entry with
    /// `|u| <= lr·λ` is exactly 0 and the others shrink by exactly `lr·λ` toward 0.
    #[test]
    fn proximal_l1_gives_exact_zeros(
        w in vec_f32(6, -1.0..1.0),
        g in vec_f32(6, -1.0..1.0),
        lr in 0.01f64..0.5,
        l1 in 0.0f64..2.0,
    ) {
        let device = Device::flex();
        // Optimizers step autodiff parameters; gradients live on the inner device.
        let model = two(&w[..2], &w[2..], &device.clone().autodiff());
        let mut optim = SgdConfig::new()
            .with_l1(l1)
            .with_l1_mode(L1Mode::Proximal)
            .with_no_decay(vec![])
            .init(&model)
            .unwrap();
        let grads = grads_for(&model, &g[..2], &g[2..], &device);
        let model = optim.step(lr, model, grads);
        let (a, b) = vals(&model);
        let threshold = (lr * l1) as f32;
        for ((after, w), g) in a.iter().chain(&b).zip(&w).zip(&g) {
            let u = w - lr as f32 * g;
            if u.abs() <= threshold - 1e-5 {
                prop_assert_eq!(*after, 0.0, "u {} threshold {}", u, threshold);
            } else if u.abs() > threshold + 1e-5 {
                prop_assert!((after - (u - u.signum() * threshold)).abs() < 1e-5);
                prop_assert_ne!(*after, 0.0);
            }
        }
    }

    /// Clipping never raises the global norm; below the threshold it changes nothing at all.
    #[test]
    fn clipping_never_raises_the_norm(
        ga in vec_f32(2, -3.0..3.0),
        gb in vec_f32(4, -3.0..3.0),
        max_norm in 0.01f64..10.0,
    ) {
        let device = Device::flex();
        let model = two(&[0.0; 2], &[0.0; 4], &device);
        let grads = grads_for(&model, &ga, &gb, &device);
        let before = grad_norm(&model, &grads);
        let (clipped, reported) = clip_grad_norm(&model, grads, max_norm).unwrap();
        prop_assert!((reported - before).abs() < 1e-9);
        let after = grad_norm(&model, &clipped);
        prop_assert!(after <= before + 1e-6);
        prop_assert!(after <= max_norm * (1.0 + 1e-5));
        if before <= max_norm {
            let a = clipped.get::<1>(model.a.id).unwrap().into_data().try_into_vec_as::<f32>().unwrap();
            let b = clipped.get::<2>(model.b.id).unwrap().into_data().try_into_vec_as::<f32>().unwrap();
            prop_assert_eq!(a, ga);
            prop_assert_eq!(b, gb);
        }
    }

    /// HF warmup schedules stay within [floor, peak] and the warmup never decreases.
    #[test]
    fn warmup_schedules_stay_in_range(
        peak in 1e-5f64..1.0,
        warmup in 0usize..50,
        extra in 1usize..200,
        shape in 0usize..5,
        cycles in 0.1f64..3.0,
        ratio in 0.0f64..1.0,
        power in 0.2f64..3.0,
    ) {
        let total = warmup + extra;
        let (shape, floor) = match shape {
            0 => (DecayShape::Constant, 0.0),
            1 => (DecayShape::Linear, 0.0),
            2 => (DecayShape::Cosine { num_cycles: cycles, min_lr_ratio: ratio }, 0.0),
            3 => (DecayShape::Polynomial { power, end_lr: peak * ratio * 0.99 }, peak * ratio * 0.99),
            _ => (DecayShape::InverseSqrt { timescale: None }, 0.0),
        };
        let sched = WarmupDecayConfig::new(peak, warmup).with_total_steps(Some(total)).with_shape(shape).init().unwrap();
        let curve = sched.curve();
        let mut previous = 0.0;
        for step in 0..total + 20 {
            let lr = curve.lr_at(step);
            prop_assert!(lr <= peak * (1.0 + 1e-12) && lr >= 0.0, "step {} lr {}", step, lr);
            if step < warmup {
                prop_assert!(lr >= previous);
                previous = lr;
            } else if step <= total {
                prop_assert!(lr >= floor * (1.0 - 1e-9) - 1e-15, "step {} lr {} floor {}", step, lr, floor);
            }
        }
    }

    /// SGDR stays in [eta_min, base]; one-cycle in [min_lr, max_lr].
    #[test]
    fn restart_and_one_cycle_stay_in_range(
        base in 1e-4f64..1.0,
        eta in 0.0f64..1.0,
        t_0 in 1usize..20,
        t_mult in 1usize..4,
        total in 10usize..200,
        pct in 0.1f64..0.45,
        three_phase in any::<bool>(),
    ) {
        let eta_min = base * eta;
        let sgdr = CosineWarmRestartsConfig::new(base, t_0).with_t_mult(t_mult).with_eta_min(eta_min).init().unwrap();
        for step in 0..300 {
            let lr = sgdr.curve().lr_at(step);
            prop_assert!(lr >= eta_min - 1e-12 && lr <= base + 1e-12);
        }
        let cycle = OneCycleConfig::new(base).with_total_steps(Some(total))
            .with_pct_start(pct)
            .with_three_phase(three_phase)
            .with_anneal(if three_phase { Anneal::Linear } else { Anneal::Cos })
            .init()
            .unwrap();
        let min = base / 25.0 / 1e4;
        for step in 0..total + 5 {
            let lr = cycle.curve().lr_at(step);
            prop_assert!(lr >= min * (1.0 - 1e-9) && lr <= base * (1.0 + 1e-12), "step {} lr {}", step, lr);
        }
    }

    /// save → load → step equals step, for AdamW and LAMB, at any point of training.
    #[test]
    fn save_load_step_equals_step(
        grads in prop::collection::vec(vec_f32(6, -2.0..2.0), 2..6),
        split in 1usize..5,
        lamb in any::<bool>(),
    ) {
        let device = Device::flex();
        let make = |model: &Two| -> ModuleOptimizer {
            if lamb {
                LambConfig::new().with_no_decay(vec![]).init(model).unwrap()
            } else {
                AdamWConfig::new().with_amsgrad(true).init(model).unwrap()
            }
        };
        let split = split.min(grads.len() - 1);
        let mut model = two(&[0.5, -0.25], &[0.1, 0.2, -0.3, 0.4], &device.clone().autodiff());
        let mut optim = make(&model);
        let mut sched = WarmupDecayConfig::cosine(0.1, 1, grads.len()).init().unwrap();
        for g in &grads[..split] {
            let gr = grads_for(&model, &g[..2], &g[2..], &device);
            model = optim.step(sched.step(), model, gr);
        }
        let mut restored = make(&model).from_bytes(optim.into_bytes().unwrap()).unwrap();
        let mut restored_sched = WarmupDecayConfig::cosine(0.1, 1, grads.len()).init().unwrap();
        restored_sched.load_record(sched.to_record());
        let (mut m1, mut m2) = (model.clone(), model);
        for g in &grads[split..] {
            let g1 = grads_for(&m1, &g[..2], &g[2..], &device);
            let g2 = grads_for(&m2, &g[..2], &g[2..], &device);
            m1 = optim.step(sched.step(), m1, g1);
            m2 = restored.step(restored_sched.step(), m2, g2);
        }
        prop_assert_eq!(vals(&m1), vals(&m2));
    }
}
