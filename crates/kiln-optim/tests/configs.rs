//! The serializable `OptimizerConfig` / `ScheduleConfig` choices: JSON and TOML round trips,
//! same behaviour as the concrete configs, sizing to the run's length, LAMB's clipping through
//! `prepare_gradients`.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::{Device, Tensor};
use kiln_optim::schedule::Anneal;
use kiln_optim::{
    AdamConfig, AdamWConfig, CosineWarmRestartsConfig, DecayShape, ExponentialDecayConfig,
    GroupRule, L1Mode, LambConfig, LrCurve, OneCycleConfig, OptimError, OptimizerConfig,
    Regularization, ScheduleConfig, SgdConfig, StepDecayConfig, WarmupDecayConfig, grad_norm,
};

#[derive(Module, Debug)]
struct Layer {
    weight: Param<Tensor<2>>,
}

#[test]
fn optimizer_config_round_trips_through_json() {
    let configs: Vec<OptimizerConfig> = vec![
        AdamWConfig::new()
            .with_weight_decay(0.1)
            .with_groups(vec![
                GroupRule::new("weight".into()).with_lr_multiplier(Some(0.5)),
            ])
            .into(),
        SgdConfig::new()
            .with_momentum(0.9)
            .with_nesterov(true)
            .into(),
        LambConfig::new().with_max_grad_norm(Some(1.0)).into(),
    ];
    let device = Device::flex();
    let layer = Layer {
        weight: Param::from_tensor(Tensor::ones([2, 2], &device)),
    };
    for config in configs {
        let json = serde_json::to_string(&config).unwrap();
        let back: OptimizerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        back.init(&layer).unwrap();
    }
    let bad: OptimizerConfig = AdamWConfig::new().with_beta_1(1.0).into();
    assert!(matches!(
        bad.init(&layer),
        Err(OptimError::InvalidHyperparameter { name: "beta_1", .. })
    ));
}

#[test]
fn prepare_gradients_clips_only_for_lamb_with_max_grad_norm() {
    let device = Device::flex();
    let layer = Layer {
        weight: Param::from_tensor(Tensor::ones([2, 2], &device)),
    };
    let grads = || {
        let mut g = GradientsParams::new();
        g.register(layer.weight.id, Tensor::<2>::full([2, 2], 3.0, &device));
        g
    };
    let lamb: OptimizerConfig = LambConfig::new().with_max_grad_norm(Some(1.0)).into();
    let (clipped, norm) = lamb.prepare_gradients(&layer, grads()).unwrap();
    assert!((norm.unwrap() - 6.0).abs() < 1e-6);
    assert!((grad_norm(&layer, &clipped) - 1.0).abs() < 1e-6);
    let adamw: OptimizerConfig = AdamWConfig::new().into();
    let (same, norm) = adamw.prepare_gradients(&layer, grads()).unwrap();
    assert_eq!(norm, None);
    assert!((grad_norm(&layer, &same) - 6.0).abs() < 1e-6);
}

#[test]
fn schedule_config_steps_like_the_concrete_schedule() {
    let concrete = WarmupDecayConfig::cosine(0.1, 5, 50);
    let direct = concrete.init().unwrap();
    let config: ScheduleConfig = concrete.into();
    let json = serde_json::to_string(&config).unwrap();
    let mut boxed = serde_json::from_str::<ScheduleConfig>(&json)
        .unwrap()
        .init()
        .unwrap();
    for step in 0..60 {
        assert_eq!(boxed.step(), direct.curve().lr_at(step));
    }
    let mut constant = ScheduleConfig::Constant(0.3).init().unwrap();
    assert_eq!(constant.step(), 0.3);
    assert!(ScheduleConfig::Constant(-1.0).init().is_err());
    let cycle: ScheduleConfig = OneCycleConfig::new(0.1).with_total_steps(Some(3)).into();
    assert!(
        cycle.init().is_err(),
        "3 steps leave an empty one-cycle phase"
    );
}

/// The first `n` learning rates of a schedule.
fn lrs(mut schedule: Box<dyn LrScheduler>, n: usize) -> Vec<f64> {
    (0..n).map(|_| schedule.step()).collect()
}

#[test]
fn init_for_run_fills_only_an_unset_length() {
    let sized: ScheduleConfig = WarmupDecayConfig::cosine(0.1, 5, None).into();
    let explicit: ScheduleConfig = WarmupDecayConfig::cosine(0.1, 5, 50).into();
    let expected = lrs(explicit.init().unwrap(), 60);
    assert_eq!(lrs(sized.init_for_run(50).unwrap(), 60), expected);
    assert_eq!(lrs(explicit.init_for_run(50).unwrap(), 60), expected);
    assert_eq!(lrs(explicit.init_for_run(40).unwrap(), 60), expected);
    // A schedule shorter than the run would leave its curve mid-run (issue 26): refused.
    let err = explicit
        .init_for_run(80)
        .err()
        .expect("shorter than the run");
    assert!(
        err.to_string().contains("shorter than the run (80 steps)"),
        "{err}"
    );
    assert_ne!(lrs(sized.init_for_run(80).unwrap(), 60), expected);
    let direct = WarmupDecayConfig::cosine(0.1, 5, None)
        .init_for_run(50)
        .unwrap();
    assert_eq!(
        (0..60).map(|s| direct.curve().lr_at(s)).collect::<Vec<_>>(),
        expected
    );

    let cycle = OneCycleConfig::new(0.1).with_anneal(Anneal::Linear);
    let expected = lrs(
        Box::new(cycle.clone().with_total_steps(Some(40)).init().unwrap()),
        45,
    );
    assert_eq!(
        lrs(
            ScheduleConfig::from(cycle.clone())
                .init_for_run(40)
                .unwrap(),
            45
        ),
        expected
    );
    assert_eq!(lrs(Box::new(cycle.init_for_run(40).unwrap()), 45), expected);
    assert_eq!(
        lrs(ScheduleConfig::Constant(0.3).init_for_run(10).unwrap(), 3),
        [0.3; 3]
    );
    // Schedules without a length build the same with or without the run's.
    let step: ScheduleConfig = StepDecayConfig::new(0.1, 7).into();
    assert_eq!(
        lrs(step.init_for_run(5).unwrap(), 20),
        lrs(step.init().unwrap(), 20)
    );
}

/// What a run file holding both configs looks like to serde (the lead's `run.toml`).
#[derive(serde::Serialize, serde::Deserialize)]
struct RunFile {
    optimizer: OptimizerConfig,
    schedule: ScheduleConfig,
}

#[test]
fn configs_round_trip_through_toml_and_json() {
    let optimizers: Vec<OptimizerConfig> = vec![
        AdamWConfig::new()
            .with_weight_decay(0.1)
            .with_groups(vec![
                GroupRule::new("wte".into())
                    .with_lr_multiplier(Some(0.5))
                    .with_regularization(Some(
                        Regularization::new()
                            .with_l1(1e-4)
                            .with_l1_mode(L1Mode::Subgradient),
                    )),
                GroupRule::new("ln".into()).with_layer_adaptation(Some(false)),
            ])
            .into(),
        AdamConfig::new().with_amsgrad(true).into(),
        SgdConfig::new().with_momentum(0.9).into(),
        LambConfig::new().with_max_grad_norm(Some(1.0)).into(),
    ];
    let schedules: Vec<ScheduleConfig> = vec![
        ScheduleConfig::Constant(0.3),
        WarmupDecayConfig::cosine(6e-4, 10, None).into(),
        WarmupDecayConfig::new(0.1, 10)
            .with_total_steps(Some(90))
            .with_shape(DecayShape::Polynomial {
                power: 2.0,
                end_lr: 1e-4,
            })
            .into(),
        WarmupDecayConfig::new(0.1, 10)
            .with_shape(DecayShape::InverseSqrt { timescale: None })
            .into(),
        WarmupDecayConfig::new(0.1, 10)
            .with_shape(DecayShape::InverseSqrt {
                timescale: Some(25),
            })
            .into(),
        CosineWarmRestartsConfig::new(0.1, 7).with_t_mult(2).into(),
        StepDecayConfig::new(0.1, 7).into(),
        ExponentialDecayConfig::new(0.1, 0.95).into(),
        OneCycleConfig::new(0.1)
            .with_three_phase(true)
            .with_anneal(Anneal::Linear)
            .into(),
    ];
    for optimizer in &optimizers {
        for schedule in &schedules {
            let run = RunFile {
                optimizer: optimizer.clone(),
                schedule: schedule.clone(),
            };
            let toml_text = toml::to_string(&run).unwrap();
            let json_text = serde_json::to_string(&run).unwrap();
            for back in [
                toml::from_str::<RunFile>(&toml_text).unwrap(),
                serde_json::from_str::<RunFile>(&json_text).unwrap(),
            ] {
                // Debug shows every field, `None`s included, and f64s exactly.
                assert_eq!(format!("{:?}", back.optimizer), format!("{optimizer:?}"));
                assert_eq!(format!("{:?}", back.schedule), format!("{schedule:?}"));
                assert_eq!(
                    lrs(back.schedule.init_for_run(90).unwrap(), 110),
                    lrs(schedule.init_for_run(90).unwrap(), 110)
                );
            }
        }
    }
}

/// `warmup_ratio` (HF's): with `warmup_steps` 0 the warmup is `ceil(ratio · run)` steps, so it
/// follows the run's length; explicit steps win, and a ratio without a length is refused.
#[test]
fn warmup_ratio_follows_the_run() {
    let by_ratio = WarmupDecayConfig::new(1.0, 0).with_warmup_ratio(Some(0.05));
    for total in [20, 100, 1800] {
        let warmup = (total as f64 * 0.05).ceil() as usize;
        let explicit = WarmupDecayConfig::new(1.0, warmup);
        assert_eq!(
            lrs(
                ScheduleConfig::from(by_ratio.clone())
                    .init_for_run(total)
                    .unwrap(),
                total
            ),
            lrs(
                ScheduleConfig::from(explicit).init_for_run(total).unwrap(),
                total
            ),
            "{total} steps"
        );
    }
    let steps_win = WarmupDecayConfig::new(1.0, 4).with_warmup_ratio(Some(0.5));
    let lr = lrs(
        ScheduleConfig::from(steps_win).init_for_run(100).unwrap(),
        5,
    );
    assert_eq!(lr[4], 1.0, "warmup of 4 steps, not 50");
    assert!(
        by_ratio
            .clone()
            .with_shape(DecayShape::Constant)
            .init()
            .is_err()
    );
    assert!(
        by_ratio
            .with_warmup_ratio(Some(1.5))
            .init_for_run(10)
            .is_err()
    );
}
