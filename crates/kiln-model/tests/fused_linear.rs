//! Issue 12: the fused Linear (one gemm, bias in the epilogue, its own backward) against Burn's
//! `linear` on flex, forward and the gradients of x, the weight and the bias, within 1e-5
//! relative.

use burn::tensor::{Device, Tensor, TensorData};
use kiln_model::fused::linear::linear;
use proptest::prelude::*;

/// `n` values in [-1, 1) from a small LCG: reproducible without a device seed.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, seed), shape), device)
}

/// `max |a - b| / max |b|`: the error relative to the tensor's scale (an element-wise ratio
/// would divide by the near-zero sums that cancellation produces).
fn relative_error<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.into_data().try_to_vec::<f32>().unwrap();
    let b = b.into_data().try_to_vec::<f32>().unwrap();
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// How the input reaches the layer.
#[derive(Clone, Copy, Debug)]
enum Input {
    Contiguous,
    /// `[seq, batch, d_in]` with its first two dimensions swapped: rows not foldable by strides.
    Swapped,
    /// A `[batch, seq, d_in + 3]` tensor narrowed to its first `d_in` columns.
    Narrowed,
}

/// The input `[batch, seq, d_in]`, a leaf that requires a gradient, laid out as `input` says;
/// returns the leaf and the view the layer sees.
fn input([batch, seq, d_in]: [usize; 3], layout: Input, device: &Device) -> (Tensor<3>, Tensor<3>) {
    match layout {
        Input::Contiguous => {
            let x = tensor([batch, seq, d_in], 1, device).require_grad();
            (x.clone(), x)
        }
        Input::Swapped => {
            let x = tensor([seq, batch, d_in], 1, device).require_grad();
            (x.clone(), x.swap_dims(0, 1))
        }
        Input::Narrowed => {
            let x = tensor([batch, seq, d_in + 3], 1, device).require_grad();
            (x.clone(), x.narrow(2, 0, d_in))
        }
    }
}

/// Forward and every gradient of the fused layer against Burn's `linear` on the autodiff flex
/// device, for a random upstream gradient. `transposed_weight`: the weight is a `[d_out, d_in]`
/// tensor seen through `swap_dims` (a tied embedding's layout).
fn check(shape: [usize; 3], d_out: usize, bias: bool, layout: Input, transposed_weight: bool) {
    let device = Device::flex().autodiff();
    let d_in = shape[2];
    let run = |fused: bool| {
        let (x_leaf, x) = input(shape, layout, &device);
        let w_leaf = if transposed_weight {
            tensor([d_out, d_in], 2, &device).require_grad()
        } else {
            tensor([d_in, d_out], 2, &device).require_grad()
        };
        let w = if transposed_weight {
            w_leaf.clone().swap_dims(0, 1)
        } else {
            w_leaf.clone()
        };
        let b_leaf = bias.then(|| tensor([d_out], 3, &device).require_grad());
        let y = if fused {
            linear(x, w, b_leaf.clone())
        } else {
            burn::tensor::module::linear(x, w, b_leaf.clone())
        };
        let upstream = tensor([shape[0], shape[1], d_out], 4, &device);
        let grads = (y.clone() * upstream).sum().backward();
        (
            y.inner(),
            x_leaf.grad(&grads).unwrap(),
            w_leaf.grad(&grads).unwrap(),
            b_leaf.map(|b| b.grad(&grads).unwrap()),
        )
    };
    let (y, dx, dw, db) = run(true);
    let (y_ref, dx_ref, dw_ref, db_ref) = run(false);
    let what = format!("{shape:?} x {d_out}, bias {bias}, {layout:?}, w^T {transposed_weight}");
    assert!(relative_error(y, y_ref) <= 1e-5, "y: {what}");
    assert!(relative_error(dx, dx_ref) <= 1e-5, "dx: {what}");
    assert!(relative_error(dw, dw_ref) <= 1e-5, "dw: {what}");
    if let (Some(db), Some(db_ref)) = (db, db_ref) {
        assert!(relative_error(db, db_ref) <= 1e-5, "db: {what}");
    }
}

#[test]
fn matches_burn_with_and_without_bias() {
    for bias in [true, false] {
        check([2, 5, 7], 3, bias, Input::Contiguous, false);
    }
}

#[test]
fn matches_burn_on_a_batch_of_one() {
    check([1, 1, 9], 13, true, Input::Contiguous, false);
    check([1, 33, 17], 5, true, Input::Contiguous, false);
}

#[test]
fn matches_burn_on_non_contiguous_inputs_and_weights() {
    for layout in [Input::Swapped, Input::Narrowed] {
        check([3, 6, 11], 9, true, layout, false);
        check([3, 6, 11], 9, false, layout, true);
    }
}

#[test]
fn matches_burn_above_the_multi_threading_thresholds() {
    // 512 rows x 257 x 300 multiply-adds: the gemms run on rayon, the bias fill and the column
    // sums in parallel blocks (rows not a multiple of the block, width not of the SIMD width).
    check([4, 128, 300], 257, true, Input::Contiguous, false);
    check([3, 100, 129], 1030, true, Input::Swapped, true);
}

#[test]
fn plain_flex_forward_matches_burn() {
    let device = Device::flex();
    let x = tensor([2, 9, 19], 1, &device);
    let w = tensor([19, 23], 2, &device);
    let b = tensor([23], 3, &device);
    for bias in [Some(b.clone()), None] {
        let fused = linear(x.clone(), w.clone(), bias.clone());
        let burn = burn::tensor::module::linear(x.clone(), w.clone(), bias);
        assert!(relative_error(fused, burn) <= 1e-5);
    }
}

#[test]
fn rank_one_and_rank_two_inputs_match_burn() {
    let device = Device::flex().autodiff();
    let w = tensor([6, 4], 2, &device);
    let b = tensor([4], 3, &device);
    let x1 = tensor([6], 1, &device);
    let x2 = tensor([5, 6], 1, &device);
    let y1 = linear(x1.clone(), w.clone(), Some(b.clone()));
    assert!(
        relative_error(
            y1,
            burn::tensor::module::linear(x1, w.clone(), Some(b.clone()))
        ) <= 1e-5
    );
    let y2 = linear(x2.clone(), w.clone(), Some(b.clone()));
    assert!(relative_error(y2, burn::tensor::module::linear(x2, w, Some(b))) <= 1e-5);
}

#[test]
fn the_bias_gradient_sums_every_row() {
    // An upstream gradient of ones: db is exactly the number of rows in every column (a
    // row block lost or counted twice would show).
    let device = Device::flex().autodiff();
    let rows = [5, 300];
    let x = tensor([rows[0], rows[1], 8], 1, &device);
    let w = tensor([8, 70], 2, &device);
    let b = Tensor::<1>::zeros([70], &device).require_grad();
    let grads = linear(x, w, Some(b.clone())).sum().backward();
    let db = b
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(db.iter().all(|&v| v == 1500.0), "{db:?}");
}

#[test]
fn matches_burn_under_balanced_gradient_checkpointing() {
    // Burn's Balanced strategy may recompute the checkpointed x (here the output of a GELU, a
    // memory-bound op) in the backward pass instead of keeping it.
    let device = Device::flex().autodiff().gradient_checkpointing();
    let run = |fused: bool| {
        let x = tensor([2, 7, 12], 1, &device).require_grad();
        let w = tensor([12, 10], 2, &device).require_grad();
        let b = tensor([10], 3, &device).require_grad();
        let h = burn::tensor::activation::gelu(x.clone());
        let y = if fused {
            linear(h, w.clone(), Some(b.clone()))
        } else {
            burn::tensor::module::linear(h, w.clone(), Some(b.clone()))
        };
        let upstream = tensor([2, 7, 10], 4, &device);
        let grads = (y * upstream).sum().backward();
        [
            x.grad(&grads).unwrap().flatten::<1>(0, 2),
            w.grad(&grads).unwrap().flatten::<1>(0, 1),
            b.grad(&grads).unwrap(),
        ]
    };
    for (fused, burn) in run(true).into_iter().zip(run(false)) {
        assert!(relative_error(fused, burn) <= 1e-5);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Shapes that are not multiples of the kernels' widths, every input layout.
    #[test]
    fn matches_burn_over_shapes(
        batch in 1usize..4,
        seq in 1usize..40,
        d_in in 1usize..70,
        d_out in 1usize..70,
        bias: bool,
        layout in prop_oneof![Just(Input::Contiguous), Just(Input::Swapped), Just(Input::Narrowed)],
        transposed_weight: bool,
    ) {
        check([batch, seq, d_in], d_out, bias, layout, transposed_weight);
    }
}
