//! Bad hyperparameters are an `OptimError`, never a panic or a silently wrong result.

use burn::module::{Module, Param};
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::{Device, Tensor};
use kiln_optim::{
    AdamConfig, AdamWConfig, CosineWarmRestartsConfig, DecayShape, ExponentialDecayConfig,
    GroupRule, LambConfig, OneCycleConfig, OptimError, Regularization, ScheduleConfig, SgdConfig,
    StepDecayConfig, WarmupDecayConfig, validate_lr,
};

#[derive(Module, Debug)]
struct Layer {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

fn layer() -> Layer {
    let device = Device::flex();
    Layer {
        weight: Param::from_tensor(Tensor::ones([2, 2], &device)),
        bias: Param::from_tensor(Tensor::zeros([2], &device)),
    }
}

fn is_hyper(r: Result<impl Sized, OptimError>, field: &str) -> bool {
    matches!(r, Err(OptimError::InvalidHyperparameter { name, .. }) if name == field)
}

#[test]
fn betas_eps_and_decay_are_checked() {
    let m = layer();
    for beta in [-0.1, 1.0, 1.5, f64::NAN] {
        assert!(is_hyper(
            AdamWConfig::new().with_beta_1(beta).init(&m),
            "beta_1"
        ));
        assert!(is_hyper(
            AdamConfig::new().with_beta_2(beta).init(&m),
            "beta_2"
        ));
        assert!(is_hyper(
            LambConfig::new().with_beta_2(beta).init(&m),
            "beta_2"
        ));
    }
    for eps in [0.0, -1e-8, f64::NAN] {
        assert!(is_hyper(
            AdamWConfig::new().with_epsilon(eps).init(&m),
            "epsilon"
        ));
        assert!(is_hyper(
            LambConfig::new().with_epsilon(eps).init(&m),
            "epsilon"
        ));
    }
    assert!(is_hyper(
        AdamWConfig::new().with_weight_decay(-0.1).init(&m),
        "weight_decay"
    ));
    assert!(is_hyper(
        AdamConfig::new().with_weight_decay(f64::NAN).init(&m),
        "l2"
    ));
    assert!(is_hyper(SgdConfig::new().with_l1(-1.0).init(&m), "l1"));
    assert!(is_hyper(
        SgdConfig::new().with_momentum(-0.5).init(&m),
        "momentum"
    ));
    assert!(is_hyper(
        SgdConfig::new()
            .with_momentum(0.9)
            .with_dampening(1.5)
            .init(&m),
        "dampening"
    ));
    assert!(is_hyper(
        SgdConfig::new().with_nesterov(true).init(&m),
        "nesterov"
    ));
    assert!(is_hyper(
        SgdConfig::new()
            .with_momentum(0.9)
            .with_dampening(0.1)
            .with_nesterov(true)
            .init(&m),
        "nesterov"
    ));
    assert!(is_hyper(
        LambConfig::new().with_gamma_upper(Some(0.0)).init(&m),
        "gamma_upper"
    ));
    assert!(is_hyper(
        LambConfig::new().with_max_grad_norm(Some(-1.0)).init(&m),
        "max_grad_norm"
    ));
    let bad_group = AdamWConfig::new().with_groups(vec![
        GroupRule::new("weight".into()).with_regularization(Some(Regularization::coupled_l2(-1.0))),
    ]);
    assert!(is_hyper(bad_group.init(&m), "l2"));
}

#[test]
fn group_patterns_must_match() {
    let m = layer();
    let r = SgdConfig::new()
        .with_groups(vec![
            GroupRule::new("^encoder".into()).with_lr_multiplier(Some(0.1)),
        ])
        .init(&m);
    match r {
        Err(OptimError::PatternMatchesNothing { pattern, example }) => {
            assert_eq!(pattern, "^encoder");
            assert_eq!(example, "weight");
        }
        other => panic!("expected PatternMatchesNothing, got {:?}", other.err()),
    }
    assert!(matches!(
        AdamWConfig::new().with_no_decay(vec!["[".into()]).init(&m),
        Err(OptimError::InvalidPattern { .. })
    ));
}

#[test]
fn schedules_that_decay_to_the_end_need_the_run_length() {
    let message = |r: Result<Box<dyn LrScheduler>, OptimError>| match r {
        Err(OptimError::InvalidSchedule(m)) => m,
        other => panic!("expected InvalidSchedule, got {:?}", other.err()),
    };
    let shapes = [
        DecayShape::Linear,
        DecayShape::Cosine {
            num_cycles: 0.5,
            min_lr_ratio: 0.0,
        },
        DecayShape::Polynomial {
            power: 1.0,
            end_lr: 0.0,
        },
    ];
    let mut without_length: Vec<ScheduleConfig> = shapes
        .into_iter()
        .map(|shape| WarmupDecayConfig::new(0.1, 10).with_shape(shape).into())
        .collect();
    without_length.push(OneCycleConfig::new(0.1).into());
    for config in without_length {
        let m = message(config.init());
        assert!(m.contains("total_steps") && m.contains("Trainer"), "{m}");
        assert!(config.init_for_run(100).is_ok());
    }
    // Constant and inverse-sqrt decay never end, so they need no length.
    for shape in [
        DecayShape::Constant,
        DecayShape::InverseSqrt { timescale: None },
    ] {
        let mut schedule = WarmupDecayConfig::new(0.1, 10)
            .with_shape(shape)
            .init()
            .unwrap();
        assert_eq!((0..11).map(|_| schedule.step()).last(), Some(0.1));
    }
    // A run shorter than the warmup is caught once the length is known.
    assert!(matches!(
        WarmupDecayConfig::cosine(0.1, 10, None).init_for_run(5),
        Err(OptimError::InvalidSchedule(_))
    ));
}

#[test]
fn schedules_refuse_bad_learning_rates_and_lengths() {
    for lr in [-0.1, f64::NAN, f64::INFINITY] {
        assert!(is_hyper(
            WarmupDecayConfig::new(lr, 10)
                .with_total_steps(Some(100))
                .init(),
            "peak_lr"
        ));
        assert!(is_hyper(
            CosineWarmRestartsConfig::new(lr, 10).init(),
            "base_lr"
        ));
        assert!(is_hyper(
            OneCycleConfig::new(lr).with_total_steps(Some(100)).init(),
            "max_lr"
        ));
        assert!(is_hyper(StepDecayConfig::new(lr, 10).init(), "base_lr"));
        assert!(is_hyper(
            ExponentialDecayConfig::new(lr, 0.9).init(),
            "base_lr"
        ));
        assert!(validate_lr(lr).is_err());
    }
    assert!(validate_lr(0.0).is_ok());
    assert!(matches!(
        WarmupDecayConfig::new(0.1, 101)
            .with_total_steps(Some(100))
            .init(),
        Err(OptimError::InvalidSchedule(_))
    ));
    assert!(matches!(
        WarmupDecayConfig::new(0.1, 0)
            .with_total_steps(Some(0))
            .init(),
        Err(OptimError::InvalidSchedule(_))
    ));
    assert!(is_hyper(
        WarmupDecayConfig::new(0.1, 10)
            .with_total_steps(Some(100))
            .with_shape(DecayShape::Polynomial {
                power: 1.0,
                end_lr: 0.2
            })
            .init(),
        "end_lr"
    ));
    assert!(is_hyper(
        WarmupDecayConfig::new(0.1, 10)
            .with_total_steps(Some(100))
            .with_shape(DecayShape::Cosine {
                num_cycles: 0.5,
                min_lr_ratio: 1.5
            })
            .init(),
        "min_lr_ratio"
    ));
    assert!(is_hyper(
        CosineWarmRestartsConfig::new(0.1, 10)
            .with_eta_min(0.2)
            .init(),
        "eta_min"
    ));
    assert!(matches!(
        CosineWarmRestartsConfig::new(0.1, 0).init(),
        Err(OptimError::InvalidSchedule(_))
    ));
    assert!(is_hyper(
        OneCycleConfig::new(0.1)
            .with_total_steps(Some(100))
            .with_pct_start(1.0)
            .init(),
        "pct_start"
    ));
    assert!(matches!(
        OneCycleConfig::new(0.1).with_total_steps(Some(2)).init(),
        Err(OptimError::InvalidSchedule(_))
    ));
    assert!(is_hyper(
        ExponentialDecayConfig::new(0.1, 0.0).init(),
        "gamma"
    ));
    assert!(matches!(
        StepDecayConfig::new(0.1, 0).init(),
        Err(OptimError::InvalidSchedule(_))
    ));
}
