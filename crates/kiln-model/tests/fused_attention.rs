//! The fused masked softmax and cross-entropy against Burn's composite ops, on flex with and
//! without autodiff: outputs and gradients (of a random upstream gradient) within 1e-5 of the
//! reference's largest magnitude.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use kiln_model::fused::cross_entropy::{cross_entropy, cross_entropy_composite};
use kiln_model::fused::softmax::{masked_softmax, masked_softmax_composite};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOLERANCE: f32 = 1e-5;

fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data().convert::<f32>().try_to_vec().unwrap()
}

/// `max |a − b| <= 1e-5 · max |b|` (and no NaN on either side).
fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let (at, worst) = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold(
            (0, 0.0f32),
            |(i, w), (j, d)| if d > w { (j, d) } else { (i, w) },
        );
    assert!(
        a.iter().chain(b).all(|v| v.is_finite()),
        "{what}: non-finite values"
    );
    assert!(
        worst <= TOLERANCE * scale,
        "{what}: |{} - {}| at {at} is {worst}, over {TOLERANCE} of {scale}",
        a[at],
        b[at]
    );
}

fn random<const D: usize>(
    rng: &mut ChaCha8Rng,
    dims: [usize; D],
    std: f32,
    device: &Device,
) -> Tensor<D> {
    let n = dims.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std)
        .collect();
    Tensor::from_data(TensorData::new(data, dims), device)
}

/// A `[batch, keys]` padding mask expanded to `[batch, heads, q, k]` as attention builds it;
/// `padded` keys masked at the end of each row (every key of batch row 0 when `padded == k`).
fn padding(
    batch: usize,
    heads: usize,
    q: usize,
    k: usize,
    padded: usize,
    device: &Device,
) -> Tensor<4, Bool> {
    let mask: Vec<bool> = (0..batch * k).map(|i| i % k >= k - padded.min(k)).collect();
    Tensor::<2, Bool>::from_data(TensorData::new(mask, [batch, k]), device)
        .reshape([batch, 1, 1, k])
        .expand([batch, heads, q, k])
}

type Softmax = fn(Tensor<4>, f64, bool, Option<Tensor<4, Bool>>) -> Tensor<4>;

/// Probabilities and the gradient of `sum(P ⊙ G)` for the scores, through `f`, on autodiff flex.
/// `transposed` feeds a non-contiguous view (the scores built as `[b, h, k, q]`, swapped).
fn softmax_and_grad(
    f: Softmax,
    seed: u64,
    [b, h, q, k]: [usize; 4],
    causal: bool,
    padded: Option<usize>,
    transposed: bool,
) -> (Vec<f32>, Vec<f32>) {
    let device = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let leaf = if transposed {
        random(&mut rng, [b, h, k, q], 3.0, &device)
    } else {
        random(&mut rng, [b, h, q, k], 3.0, &device)
    }
    .require_grad();
    let scores = if transposed {
        leaf.clone().swap_dims(2, 3)
    } else {
        leaf.clone()
    };
    let upstream = random(&mut rng, [b, h, q, k], 1.0, &device);
    let mask = padded.map(|p| padding(b, h, q, k, p, &device));
    let probs = f(scores, 0.3, causal, mask);
    let grads = (probs.clone() * upstream).sum().backward();
    let grad = leaf.grad(&grads).expect("the scores get a gradient");
    (values(probs), values(grad))
}

fn check_softmax(
    seed: u64,
    dims: [usize; 4],
    causal: bool,
    padded: Option<usize>,
    transposed: bool,
) {
    let fused = softmax_and_grad(masked_softmax, seed, dims, causal, padded, transposed);
    let composite = softmax_and_grad(
        masked_softmax_composite,
        seed,
        dims,
        causal,
        padded,
        transposed,
    );
    let what = format!("{dims:?} causal {causal} padded {padded:?} transposed {transposed}");
    assert_close(&format!("probabilities {what}"), &fused.0, &composite.0);
    assert_close(&format!("gradient {what}"), &fused.1, &composite.1);
}

#[test]
fn masked_softmax_matches_composite_at_the_probe_shape() {
    check_softmax(1, [2, 4, 128, 128], true, None, false);
    check_softmax(2, [2, 4, 128, 128], false, Some(17), false);
}

#[test]
fn causal_mask_uses_the_offset_of_a_kv_cache() {
    // 5 new queries over 12 keys: query i sees keys 0..=i + 7.
    check_softmax(3, [1, 2, 5, 12], true, None, false);
    check_softmax(4, [1, 2, 5, 12], true, Some(3), false);
    let device = Device::flex();
    let scores = Tensor::<4>::zeros([1, 1, 5, 12], &device);
    let probs = values(masked_softmax(scores, 1.0, true, None));
    for i in 0..5 {
        let row = &probs[i * 12..(i + 1) * 12];
        let seen = i + 8;
        assert!(
            row[..seen]
                .iter()
                .all(|&p| (p - 1.0 / seen as f32).abs() < 1e-6)
        );
        assert!(row[seen..].iter().all(|&p| p == 0.0), "row {i}: {row:?}");
    }
}

#[test]
fn rows_with_every_key_masked_are_zero_with_zero_gradient() {
    // Batch row 0 is all padding. Before the fused op, the explicit attention path (mask_fill
    // with -inf, then softmax) gave NaN here; the composite reference now zeroes the row too.
    for softmax in [masked_softmax as Softmax, masked_softmax_composite] {
        for causal in [false, true] {
            let device = Device::flex().autodiff();
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let scores = random(&mut rng, [2, 3, 7, 7], 2.0, &device).require_grad();
            let mask: Vec<bool> = (0..14).map(|i| i < 7 || i == 13).collect();
            let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [2, 7]), &device)
                .reshape([2, 1, 1, 7])
                .expand([2, 3, 7, 7]);
            let probs = softmax(scores.clone(), 0.5, causal, Some(mask));
            let upstream = random(&mut rng, [2, 3, 7, 7], 1.0, &device);
            let grad = values(
                scores
                    .grad(&(probs.clone() * upstream).sum().backward())
                    .unwrap(),
            );
            let probs = values(probs);
            let half = 3 * 7 * 7;
            assert!(
                probs[..half].iter().all(|&p| p == 0.0),
                "masked rows are zero"
            );
            assert!(
                grad[..half].iter().all(|&g| g == 0.0),
                "and get no gradient"
            );
            assert!(probs.iter().chain(&grad).all(|v| v.is_finite()));
            for row in probs[half..].chunks(7) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                assert_eq!(row[6], 0.0, "the padded key gets nothing");
            }
        }
    }
}

#[test]
fn masked_softmax_without_autodiff_matches_composite() {
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let scores = random(&mut rng, [3, 2, 9, 33], 4.0, &device);
    for padded in [None, Some(5)] {
        let mask = || padded.map(|p| padding(3, 2, 9, 33, p, &device));
        let fused = values(masked_softmax(scores.clone(), 0.7, true, mask()));
        let composite = values(masked_softmax_composite(scores.clone(), 0.7, true, mask()));
        assert_close("inference probabilities", &fused, &composite);
    }
}

type CrossEntropy = fn(Tensor<2>, Tensor<1, Int>, Option<i64>) -> Tensor<1>;

/// The loss and the gradient of `g · loss` for the logits, through `f`, on autodiff flex.
/// Every `ignore_every`-th target is -100; `transposed` feeds a `[vocab, tokens]` view.
fn loss_and_grad(
    f: CrossEntropy,
    seed: u64,
    [tokens, vocab]: [usize; 2],
    ignore: Option<usize>,
    transposed: bool,
) -> (Vec<f32>, Vec<f32>) {
    let device = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let leaf = if transposed {
        random(&mut rng, [vocab, tokens], 4.0, &device)
    } else {
        random(&mut rng, [tokens, vocab], 4.0, &device)
    }
    .require_grad();
    let logits = if transposed {
        leaf.clone().swap_dims(0, 1)
    } else {
        leaf.clone()
    };
    let targets: Vec<i64> = (0..tokens)
        .map(|i| match ignore {
            Some(every) if i % every == 0 => -100,
            _ => rng.random_range(0..vocab as i64),
        })
        .collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [tokens]), &device);
    let g: f32 = rng.random_range(0.5..2.0);
    let loss = f(logits, targets, ignore.map(|_| -100));
    let grads = (loss.clone() * g).backward();
    (
        values(loss),
        values(leaf.grad(&grads).expect("the logits get a gradient")),
    )
}

fn check_cross_entropy(seed: u64, dims: [usize; 2], ignore: Option<usize>, transposed: bool) {
    let fused = loss_and_grad(cross_entropy, seed, dims, ignore, transposed);
    let composite = loss_and_grad(cross_entropy_composite, seed, dims, ignore, transposed);
    let what = format!("{dims:?} ignore every {ignore:?} transposed {transposed}");
    assert_close(&format!("loss {what}"), &fused.0, &composite.0);
    assert_close(&format!("gradient {what}"), &fused.1, &composite.1);
}

#[test]
fn cross_entropy_matches_composite_at_the_probe_shape() {
    check_cross_entropy(7, [2048, 256], Some(5), false);
    check_cross_entropy(8, [2048, 256], None, false);
}

#[test]
fn cross_entropy_of_all_ignored_targets_is_zero_with_zero_gradient() {
    let (loss, grad) = loss_and_grad(cross_entropy, 9, [6, 11], Some(1), false);
    assert_eq!(loss, [0.0]);
    assert!(grad.iter().all(|&g| g == 0.0));
}

#[test]
fn cross_entropy_without_autodiff_matches_composite() {
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let logits = random(&mut rng, [37, 19], 5.0, &device);
    let targets: Vec<i64> = (0..37)
        .map(|i| if i % 4 == 1 { -100 } else { i % 19 })
        .collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [37]), &device);
    for ignore in [Some(-100), None] {
        let targets = if ignore.is_some() {
            targets.clone()
        } else {
            targets.clone().clamp_min(0)
        };
        let fused = values(cross_entropy(logits.clone(), targets.clone(), ignore));
        let composite = values(cross_entropy_composite(logits.clone(), targets, ignore));
        assert_close("inference loss", &fused, &composite);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn masked_softmax_matches_composite_on_any_shape(
        seed in 0u64..1000,
        batch in 1usize..4,
        heads in 1usize..4,
        q in 1usize..40,
        extra in 0usize..20,
        causal: bool,
        padded in proptest::option::of(0usize..8),
        transposed: bool,
    ) {
        let k = q + extra;
        check_softmax(seed, [batch, heads, q, k], causal, padded.map(|p| p.min(k - 1)), transposed);
    }

    #[test]
    fn cross_entropy_matches_composite_on_any_shape(
        seed in 0u64..1000,
        tokens in 1usize..70,
        vocab in 1usize..300,
        ignore in proptest::option::of(2usize..6),
        transposed: bool,
    ) {
        check_cross_entropy(seed, [tokens, vocab], ignore, transposed);
    }
}

#[test]
fn half_precision_inputs_compute_in_f32_and_keep_their_dtype() {
    use burn::tensor::DType;
    let device = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let scores = random(&mut rng, [2, 2, 6, 9], 3.0, &device);
    let logits = random(&mut rng, [10, 13], 3.0, &device);
    let targets = Tensor::<1, Int>::from_data(
        TensorData::new((0..10).collect::<Vec<i64>>(), [10]),
        &device,
    );
    for dtype in [DType::F16, DType::BF16] {
        let half = scores.clone().cast(dtype).require_grad();
        let probs = masked_softmax(half.clone(), 0.5, true, None);
        assert_eq!(probs.dtype(), dtype);
        let grad = half.grad(&probs.clone().sum().backward()).unwrap();
        assert_eq!(grad.dtype(), dtype);
        let reference = masked_softmax_composite(scores.clone(), 0.5, true, None);
        let (got, want) = (values(probs), values(reference));
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-2),
            "{dtype:?}"
        );

        let half = logits.clone().cast(dtype).require_grad();
        let loss = cross_entropy(half.clone(), targets.clone(), Some(-100));
        assert_eq!(loss.dtype(), dtype);
        assert_eq!(half.grad(&loss.clone().backward()).unwrap().dtype(), dtype);
        let want = values(cross_entropy_composite(
            logits.clone(),
            targets.clone(),
            Some(-100),
        ));
        assert!(
            (values(loss)[0] - want[0]).abs() < 2e-2 * want[0].abs(),
            "{dtype:?}"
        );
    }
}
