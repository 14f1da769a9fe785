//! Optimizer + schedule state save/load: a restored pair takes the identical next steps, both
//! on the same model instance and on a model re-loaded from a burnpack checkpoint.
//!
//! Burn keys optimizer state by `ParamId`. A freshly initialized model has new random ids, so a
//! record saved from one model instance does not apply to another; a model loaded with
//! `load_from` (burn-store, kiln's `load_model`) gets the persisted ids back, so resuming from a
//! checkpoint works, as the second test shows.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_model::gpt::{Gpt, GptConfig};
use kiln_optim::{
    AdamWConfig, GroupRule, LambConfig, LrCurve, Scheduler, SgdConfig, WarmupDecayConfig,
    clip_grad_norm, schedule::WarmupDecay,
};

fn config() -> GptConfig {
    GptConfig::new(11)
        .with_block_size(8)
        .with_n_layer(1)
        .with_n_head(2)
        .with_d_model(8)
}

/// Fixed pseudo-random tokens per step.
fn batch(step: usize, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let ids: Vec<i64> = (0..2 * 7)
        .map(|i| ((i * 7 + step * 3 + i * i) % 11) as i64)
        .collect();
    let targets: Vec<i64> = ids.iter().map(|t| (t + 1) % 11).collect();
    (
        Tensor::from_data(TensorData::new(ids, [2, 7]), device),
        Tensor::from_data(TensorData::new(targets, [2, 7]), device),
    )
}

fn train(
    mut gpt: Gpt,
    optim: &mut ModuleOptimizer,
    schedule: &mut Scheduler<WarmupDecay>,
    steps: std::ops::Range<usize>,
    device: &Device,
) -> Gpt {
    for step in steps {
        let (ids, targets) = batch(step, device);
        let logits = gpt.forward(ids).unwrap();
        let loss = gpt.loss(logits, targets, None);
        let grads = GradientsParams::from_grads(loss.backward(), &gpt);
        let (grads, _) = clip_grad_norm(&gpt, grads, 1.0).unwrap();
        gpt = optim.step(schedule.step(), gpt, grads);
    }
    gpt
}

#[derive(Default)]
struct Values(Vec<f32>, Vec<ParamId>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0
            .extend(param.val().into_data().try_into_vec_as::<f32>().unwrap());
        self.1.push(param.id);
    }
}

fn values(gpt: &Gpt) -> Values {
    let mut v = Values::default();
    gpt.visit(&mut v);
    v
}

/// Builds a fresh optimizer for a model.
type MakeOptim = Box<dyn Fn(&Gpt) -> ModuleOptimizer>;

fn optimizers() -> Vec<(&'static str, MakeOptim)> {
    vec![
        (
            "adamw",
            Box::new(|gpt: &Gpt| {
                AdamWConfig::new()
                    .with_groups(vec![
                        GroupRule::new(r"^blocks\.0\.".into()).with_lr_multiplier(Some(0.5)),
                    ])
                    .init(gpt)
                    .unwrap()
            }),
        ),
        (
            "lamb",
            Box::new(|gpt: &Gpt| LambConfig::new().init(gpt).unwrap()),
        ),
        (
            "sgd",
            Box::new(|gpt: &Gpt| {
                SgdConfig::new()
                    .with_momentum(0.9)
                    .with_nesterov(true)
                    .init(gpt)
                    .unwrap()
            }),
        ),
    ]
}

fn schedule() -> Scheduler<WarmupDecay> {
    WarmupDecayConfig::cosine(0.05, 2, 8).init().unwrap()
}

#[test]
fn restored_optimizer_and_schedule_take_identical_steps() {
    let device = Device::flex().autodiff();
    for (name, make) in optimizers() {
        let gpt = config().init(&device).unwrap();
        let mut optim = make(&gpt);
        let mut sched = schedule();
        let gpt = train(gpt, &mut optim, &mut sched, 0..3, &device);

        let bytes = optim.into_bytes().unwrap();
        let sched_record = sched.to_record();
        let mut restored_optim = make(&gpt).from_bytes(bytes).unwrap();
        let mut restored_sched = schedule();
        restored_sched.load_record(sched_record);
        assert_eq!(
            restored_sched.clone().step(),
            restored_sched.curve().lr_at(3)
        );

        let original = train(gpt.clone(), &mut optim, &mut sched, 3..6, &device);
        let restored = train(
            gpt.clone(),
            &mut restored_optim,
            &mut restored_sched,
            3..6,
            &device,
        );
        assert_eq!(values(&original).0, values(&restored).0, "{name}");

        // Not vacuous: a fresh optimizer (moments lost) lands elsewhere.
        let mut fresh_optim = make(&gpt);
        let mut resync = schedule();
        for _ in 0..3 {
            resync.step();
        }
        let fresh = train(gpt, &mut fresh_optim, &mut resync, 3..6, &device);
        assert_ne!(values(&original).0, values(&fresh).0, "{name}");
    }
}

#[test]
fn resuming_from_a_checkpoint_restores_param_ids_and_steps() {
    let device = Device::flex().autodiff();
    let gpt = config().init(&device).unwrap();
    let make = |gpt: &Gpt| LambConfig::new().init(gpt).unwrap();
    let mut optim = make(&gpt);
    let mut sched = schedule();
    let gpt = train(gpt, &mut optim, &mut sched, 0..3, &device);

    // Checkpoint: weights (burnpack, ids included), optimizer bytes, schedule record.
    let mut store = BurnpackStore::from_bytes(None);
    gpt.save_into(&mut store).unwrap();
    let weights = store.get_bytes().unwrap();
    let optim_bytes = optim.into_bytes().unwrap();
    let sched_record = sched.to_record();

    // A new process: a new model instance (new random ids) filled from the checkpoint.
    let mut loaded = config().init(&device).unwrap();
    assert_ne!(values(&loaded).1, values(&gpt).1, "fresh init has new ids");
    let mut store = BurnpackStore::from_bytes(Some(weights));
    loaded.load_from(&mut store).unwrap();
    assert_eq!(
        values(&loaded).1,
        values(&gpt).1,
        "load_from restores the ids"
    );

    let mut restored_optim = make(&loaded).from_bytes(optim_bytes).unwrap();
    let mut restored_sched = schedule();
    restored_sched.load_record(sched_record);

    let original = train(gpt, &mut optim, &mut sched, 3..6, &device);
    let resumed = train(
        loaded,
        &mut restored_optim,
        &mut restored_sched,
        3..6,
        &device,
    );
    assert_eq!(values(&original).0, values(&resumed).0);
}

/// A state split by parameter (as ZeRO-1's shards are) merges back into the whole, and the
/// whole splits any other way: a run resumed on another number of ranks takes the steps of the
/// run that wrote the shards, bit for bit. Shards that overlap are refused.
#[test]
fn sharded_state_merges_back_and_splits_any_way() {
    let device = Device::flex().autodiff();
    let (_, make) = optimizers().remove(0);
    let gpt = config().init(&device).unwrap();
    let mut optim = make(&gpt);
    let mut sched = schedule();
    let gpt = train(gpt, &mut optim, &mut sched, 0..3, &device);
    let whole = optim.into_bytes().unwrap().to_vec();
    let ids: Vec<u64> = values(&gpt).1.iter().map(|id| id.val()).collect();
    let first_half = |id: u64| ids.iter().position(|&i| i == id).unwrap() < ids.len() / 2;

    // Two "ranks" write their halves; a resumed run gathers them whole.
    let shards = [
        kiln_optim::merge_state_shards(std::slice::from_ref(&whole), None, first_half).unwrap(),
        kiln_optim::merge_state_shards(std::slice::from_ref(&whole), None, |id| !first_half(id))
            .unwrap(),
    ];
    assert!(shards.iter().all(|s| s.len() < whole.len()));
    let merged = kiln_optim::merge_state_shards(&shards, None, |_| true).unwrap();
    let mut restored = kiln_optim::load_state(make(&gpt), merged, &gpt).unwrap();

    let mut sched_a = sched.clone();
    let continued = train(gpt.clone(), &mut optim, &mut sched, 3..5, &device);
    let resumed = train(gpt.clone(), &mut restored, &mut sched_a, 3..5, &device);
    assert_eq!(values(&continued).0, values(&resumed).0, "bit for bit");

    let err = kiln_optim::merge_state_shards(&[whole.clone(), whole], None, |_| true).unwrap_err();
    assert!(err.to_string().contains("shards 0 and 1"), "{err}");

    // The owner map the shards were written with must agree with what each holds.
    let owners: std::collections::HashMap<u64, usize> = ids
        .iter()
        .map(|&id| (id, usize::from(!first_half(id))))
        .collect();
    kiln_optim::merge_state_shards(&shards, Some(&owners), |_| true).unwrap();
    let mut wrong = owners.clone();
    wrong.insert(ids[0], 1);
    let err = kiln_optim::merge_state_shards(&shards, Some(&wrong), |_| true).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "shard 0 holds parameter {}, which the owner map gives to shard 1",
            ids[0]
        )),
        "{err}"
    );
    wrong.remove(&ids[0]);
    let err = kiln_optim::merge_state_shards(&shards, Some(&wrong), |_| true).unwrap_err();
    assert!(err.to_string().contains("gives to no shard"), "{err}");
}
