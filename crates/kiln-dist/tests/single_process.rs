//! kiln-dist in one process: the group of one, the flat layouts the collectives move, the
//! data-parallel pieces' bookkeeping. (Several processes: the facade's `tests/data_parallel.rs`,
//! under mpirun.)

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use kiln_dist::flat::{Layout, put_grads, read_params, take_grads, write_params};
use kiln_dist::{DataParallel, DataParallelConfig, ProcessGroup, ReduceDtype, ReduceOp};

#[derive(Module, Debug)]
struct Two {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

fn two(device: &Device) -> Two {
    Two {
        weight: Param::from_tensor(Tensor::random([3, 4], Distribution::Default, device)),
        bias: Param::from_tensor(Tensor::random([4], Distribution::Default, device)),
    }
}

#[test]
fn a_lone_process_is_a_group_of_one_whose_collectives_are_the_identity() {
    let group = ProcessGroup::from_env().unwrap();
    assert_eq!(
        (group.rank(), group.size(), group.backend()),
        (0, 1, "single")
    );
    let mut values = vec![1.5f32, -2.0];
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
        group.all_reduce_f32(&mut values, op).unwrap();
        assert_eq!(values, [1.5, -2.0]);
    }
    let mut grown = b"abc".to_vec();
    group.broadcast_vec(&mut grown, 0).unwrap();
    assert_eq!(grown, b"abc");
    assert_eq!(group.all_gather_vec(b"xy").unwrap(), vec![b"xy".to_vec()]);
    assert!(
        group.broadcast_bytes(&mut [0u8; 2], 1).is_err(),
        "rank 1 does not exist"
    );
    assert!(group.send_f32(&[1.0], 0, 0).is_err(), "no peer to send to");
    group.check_same("anything", b"x").unwrap();
    assert_eq!(group.split(3, 0).unwrap().size(), 1);
    let t = Tensor::<2>::from_floats([[1.0, 2.0]], &Device::flex());
    let gathered = group.all_gather_tensor(t.clone(), 0).unwrap();
    assert_eq!(gathered.to_data(), t.to_data());
}

#[test]
fn a_half_precision_max_is_refused() {
    let group = ProcessGroup::single();
    let mut values = vec![1.0f32];
    kiln_dist::ring::all_reduce(&group, &mut values, ReduceOp::Sum, ReduceDtype::F16).unwrap();
    assert!(
        kiln_dist::ring::all_reduce(&group, &mut values, ReduceOp::Max, ReduceDtype::Bf16).is_err()
    );
}

#[test]
fn parameters_and_gradients_round_trip_through_the_flat_buffer() {
    let device = Device::flex().autodiff();
    let model = two(&device);
    let layout = Layout::of(&model);
    assert_eq!(layout.len, 16);
    assert_eq!(layout.describe(), ["weight [3, 4] F32", "bias [4] F32"]);
    let values = read_params(&model, &layout).unwrap();

    // Write new values into the bias only: ids and the gradient requirement are kept.
    let fresh: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let written = write_params(model.clone(), &layout, &fresh, |i| i == 1);
    let back = read_params(&written, &layout).unwrap();
    assert_eq!(&back[..12], &values[..12]);
    assert_eq!(&back[12..], &fresh[12..]);
    assert_eq!(written.bias.id, model.bias.id);
    assert!(written.bias.val().is_require_grad());

    // Gradients: out to the flat buffer and back.
    let loss = (model.weight.val().sum() * 2.0) + model.bias.val().powi_scalar(2).sum();
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let (flat, present) = take_grads(&model, &layout, &mut grads).unwrap();
    assert_eq!(present, [true, true]);
    assert!(grads.is_empty(), "taken out");
    assert!(flat[..12].iter().all(|&g| g == 2.0));
    put_grads(&model, &layout, &flat, &[false, true], &mut grads);
    assert!(grads.get::<2>(model.weight.id).is_none());
    let bias: Vec<f32> = grads
        .get::<1>(model.bias.id)
        .unwrap()
        .to_data()
        .try_to_vec()
        .unwrap();
    assert_eq!(bias, flat[12..].to_vec());
}

#[test]
fn data_parallel_over_one_process_changes_nothing() {
    let device = Device::flex().autodiff();
    let model = two(&device);
    let dp = DataParallel::new(
        ProcessGroup::single(),
        DataParallelConfig::new().with_zero_stage(1),
        &model,
    )
    .unwrap();
    assert!(!dp.shards_optimizer(), "one rank owns everything");
    assert_eq!(dp.owned_elements(), dp.total_elements());
    let model = dp.check_and_broadcast(model).unwrap();
    let loss = model.weight.val().sum();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let grads = dp.all_reduce_gradients(&model, grads).unwrap();
    assert_eq!(grads.len(), 1);
}

#[test]
fn bad_settings_are_refused() {
    let model = two(&Device::flex());
    for config in [
        DataParallelConfig::new().with_bucket_mb(0.0),
        DataParallelConfig::new().with_bucket_mb(f64::NAN),
        DataParallelConfig::new().with_zero_stage(3),
    ] {
        assert!(DataParallel::new(ProcessGroup::single(), config, &model).is_err());
    }
    assert_eq!(
        DataParallelConfig::new()
            .with_bucket_mb(1.0)
            .bucket_elements(),
        250_000
    );
}
