//! Whole-model gradient utilities against hand-computed norms.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use kiln_optim::{OptimError, add_grads, clip_grad_norm, grad_norm, scale_grads};

#[derive(Module, Debug)]
struct Tiny {
    linear: Linear,
    scale: Param<Tensor<1>>,
}

fn tiny(device: &Device) -> Tiny {
    Tiny {
        linear: LinearConfig::new(3, 2).init(device),
        scale: Param::from_tensor(Tensor::ones([2], device)),
    }
}

/// Gradients set by hand: weight all `w`, bias all `b`, scale all `s`.
fn grads(model: &Tiny, device: &Device, w: f32, b: f32, s: f32) -> GradientsParams {
    let mut grads = GradientsParams::new();
    grads.register(model.linear.weight.id, Tensor::<2>::full([3, 2], w, device));
    grads.register(
        model.linear.bias.as_ref().unwrap().id,
        Tensor::<1>::full([2], b, device),
    );
    grads.register(model.scale.id, Tensor::<1>::full([2], s, device));
    grads
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

#[test]
fn norm_is_one_l2_norm_over_all_parameters() {
    let device = Device::flex();
    let model = tiny(&device);
    let g = grads(&model, &device, 1.0, 2.0, 3.0);
    // 6·1 + 2·4 + 2·9 = 32
    assert!((grad_norm(&model, &g) - 32f64.sqrt()).abs() < 1e-5);
    assert_eq!(grad_norm(&model, &GradientsParams::new()), 0.0);
}

#[test]
fn clipping_scales_everything_by_one_factor_and_returns_the_old_norm() {
    let device = Device::flex();
    let model = tiny(&device);
    let (clipped, norm) =
        clip_grad_norm(&model, grads(&model, &device, 1.0, 2.0, 3.0), 1.0).unwrap();
    assert!((norm - 32f64.sqrt()).abs() < 1e-5);
    let factor = (1.0 / (32f64.sqrt() + 1e-6)) as f32;
    let w = values(clipped.get::<2>(model.linear.weight.id).unwrap());
    let s = values(clipped.get::<1>(model.scale.id).unwrap());
    assert!(w.iter().all(|v| (v - factor).abs() < 1e-6));
    assert!(s.iter().all(|v| (v - 3.0 * factor).abs() < 1e-6));
    assert!((grad_norm(&model, &clipped) - 1.0).abs() < 1e-5);
}

#[test]
fn clipping_leaves_small_gradients_untouched() {
    let device = Device::flex();
    let model = tiny(&device);
    let (clipped, norm) =
        clip_grad_norm(&model, grads(&model, &device, 0.1, 0.1, 0.1), 1.0).unwrap();
    assert!(norm < 1.0);
    assert_eq!(
        values(clipped.get::<2>(model.linear.weight.id).unwrap()),
        vec![0.1f32; 6]
    );
}

#[test]
fn bad_max_norm_is_an_error() {
    let device = Device::flex();
    let model = tiny(&device);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = clip_grad_norm(&model, grads(&model, &device, 1.0, 1.0, 1.0), bad).unwrap_err();
        assert!(matches!(err, OptimError::InvalidHyperparameter { .. }));
    }
}

#[test]
fn scale_and_add() {
    let device = Device::flex();
    let model = tiny(&device);
    let half = scale_grads(&model, grads(&model, &device, 2.0, 4.0, 6.0), 0.5);
    assert_eq!(values(half.get::<1>(model.scale.id).unwrap()), vec![3.0; 2]);

    let mut partial = GradientsParams::new();
    partial.register(
        model.scale.id,
        Tensor::<1>::from_data(TensorData::from([1.0f32, -1.0]), &device),
    );
    let sum = add_grads(&model, grads(&model, &device, 1.0, 2.0, 3.0), partial);
    assert_eq!(
        values(sum.get::<1>(model.scale.id).unwrap()),
        vec![4.0, 2.0]
    );
    // A parameter missing on one side keeps the other's gradient.
    assert_eq!(
        values(sum.get::<2>(model.linear.weight.id).unwrap()),
        vec![1.0; 6]
    );
    let sum = add_grads(
        &model,
        GradientsParams::new(),
        grads(&model, &device, 1.0, 2.0, 3.0),
    );
    assert_eq!(sum.len(), 3);
}
