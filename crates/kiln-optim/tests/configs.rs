//! The serializable `OptimizerConfig` / `ScheduleConfig` choices: JSON round trip, same
//! behaviour as the concrete configs, LAMB's clipping through `prepare_gradients`.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use kiln_optim::{
    AdamWConfig, GroupRule, LambConfig, LrCurve, OneCycleConfig, OptimError, OptimizerConfig,
    ScheduleConfig, SgdConfig, WarmupDecayConfig, grad_norm,
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
    let cycle: ScheduleConfig = OneCycleConfig::new(0.1, 3).into();
    assert!(
        cycle.init().is_err(),
        "3 steps leave an empty one-cycle phase"
    );
}
