//! The fused attention, masked softmax and cross-entropy against Burn's composite ops, on flex
//! with and without autodiff: outputs and gradients (of a random upstream gradient) within 1e-5
//! of the reference's largest magnitude.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use kiln_model::fused::attention::{KeyRange, attention, attention_composite};
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

type Attention =
    fn(Tensor<4>, Tensor<4>, Tensor<4>, f64, KeyRange, Option<&Tensor<2, Bool>>) -> Tensor<4>;

/// What an attention case varies besides the sizes: key/value heads (grouped-query attention
/// when fewer than the query heads), the keys a query sees, the padding.
#[derive(Debug, Clone)]
struct Case {
    kv_heads: usize,
    keys: KeyRange,
    padding: Option<Vec<bool>>,
}

fn causal(causal: bool) -> KeyRange {
    KeyRange {
        causal,
        window: None,
    }
}

/// How q, k and v are laid out in memory.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Contiguous `[batch, heads, seq, dim]`.
    Heads,
    /// `[batch, seq, heads, dim]` swapped to `[batch, heads, seq, dim]`: what the model's
    /// projections give.
    Projections,
    /// `[batch, heads, dim, seq]` swapped: no unit stride along `dim`.
    Transposed,
}

/// A `[b, h, t, d]` leaf to differentiate and the view of it in `layout` that attention reads.
fn leaf(
    rng: &mut ChaCha8Rng,
    [b, h, t, d]: [usize; 4],
    layout: Layout,
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let (leaf, view): (Tensor<4>, fn(Tensor<4>) -> Tensor<4>) = match layout {
        Layout::Heads => (random(rng, [b, h, t, d], 1.5, device), |x| x),
        Layout::Projections => (random(rng, [b, t, h, d], 1.5, device), |x| {
            x.swap_dims(1, 2)
        }),
        Layout::Transposed => (random(rng, [b, h, d, t], 1.5, device), |x| {
            x.swap_dims(2, 3)
        }),
    };
    let leaf = leaf.require_grad();
    (leaf.clone(), view(leaf))
}

/// The output and the gradients of `sum(O ⊙ G)` for q, k and v (in their leaves' layout),
/// through `f` on autodiff flex; k and v have `case.kv_heads` heads.
fn attention_and_grads(
    f: Attention,
    seed: u64,
    [b, h, tq, tk, d]: [usize; 5],
    case: &Case,
    layout: Layout,
) -> [Vec<f32>; 4] {
    let device = Device::flex().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kh = case.kv_heads;
    let (q_leaf, q) = leaf(&mut rng, [b, h, tq, d], layout, &device);
    let (k_leaf, k) = leaf(&mut rng, [b, kh, tk, d], layout, &device);
    let (v_leaf, v) = leaf(&mut rng, [b, kh, tk, d], layout, &device);
    let mask = case
        .padding
        .clone()
        .map(|m| Tensor::<2, Bool>::from_data(TensorData::new(m, [b, tk]), &device));
    let upstream = random(&mut rng, [b, h, tq, d], 1.0, &device);
    let out = f(q, k, v, 0.4, case.keys, mask.as_ref());
    let grads = (out.clone() * upstream).sum().backward();
    let grad = |x: &Tensor<4>| values(x.grad(&grads).expect("q, k and v get gradients"));
    [values(out), grad(&q_leaf), grad(&k_leaf), grad(&v_leaf)]
}

/// The last `padded` keys of every batch row masked.
fn tail_padding(batch: usize, keys: usize, padded: usize) -> Vec<bool> {
    (0..batch * keys)
        .map(|i| i % keys >= keys - padded.min(keys))
        .collect()
}

/// Multi-head attention (as many key/value heads as query heads) of `keys`, the last `padded`
/// keys of each row masked.
fn mha(dims: [usize; 5], keys: KeyRange, padded: Option<usize>) -> Case {
    Case {
        kv_heads: dims[1],
        keys,
        padding: padded.map(|p| tail_padding(dims[0], dims[3], p)),
    }
}

fn check_attention(seed: u64, dims: [usize; 5], case: &Case, layout: Layout) {
    let fused = attention_and_grads(attention, seed, dims, case, layout);
    let composite = attention_and_grads(attention_composite, seed, dims, case, layout);
    let what = format!("[b, h, tq, tk, d] {dims:?} {case:?} {layout:?}");
    for (name, (a, b)) in ["output", "dq", "dk", "dv"]
        .iter()
        .zip(fused.iter().zip(&composite))
    {
        assert_close(&format!("{name} {what}"), a, b);
    }
}

#[test]
fn attention_matches_composite_at_the_probe_shape() {
    // seq 128: two query blocks, the second seeing every key under the causal mask.
    let dims = [2, 4, 128, 128, 64];
    check_attention(
        21,
        dims,
        &mha(dims, causal(true), None),
        Layout::Projections,
    );
    check_attention(22, dims, &mha(dims, causal(false), Some(17)), Layout::Heads);
}

#[test]
fn attention_with_fewer_queries_than_keys_sees_the_cache_offset() {
    // 70 new queries over 100 keys: query i sees keys 0..=i + 30, across a block boundary.
    let (a, b) = ([1, 2, 70, 100, 8], [2, 1, 70, 100, 8]);
    check_attention(23, a, &mha(a, causal(true), None), Layout::Projections);
    check_attention(24, b, &mha(b, causal(true), Some(9)), Layout::Transposed);
}

#[test]
fn grouped_query_attention_matches_composite_at_a_llama_shape() {
    // 8 query heads over 2 key/value heads (Llama 3's ratio of 4), two query blocks; and
    // multi-query attention (one key/value head).
    let dims = [2, 8, 128, 128, 32];
    for kv_heads in [2, 1] {
        let case = Case {
            kv_heads,
            keys: KeyRange::CAUSAL,
            padding: None,
        };
        check_attention(31, dims, &case, Layout::Projections);
    }
}

#[test]
fn a_sliding_window_matches_composite_and_hides_the_older_keys() {
    // A window of 20 over 128 keys: blocks whose first query's window starts past 0, with a
    // cache offset (fewer queries than keys) and with grouped heads.
    for (dims, kv_heads) in [([1, 4, 128, 128, 16], 4), ([2, 4, 70, 100, 8], 2)] {
        let case = Case {
            kv_heads,
            keys: KeyRange {
                causal: true,
                window: Some(20),
            },
            padding: None,
        };
        check_attention(32, dims, &case, Layout::Heads);
    }
    // A query's output does not depend on keys outside its window.
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(33);
    let q = random(&mut rng, [1, 1, 10, 4], 1.0, &device);
    let k = random(&mut rng, [1, 1, 10, 4], 1.0, &device);
    let v = random(&mut rng, [1, 1, 10, 4], 1.0, &device);
    let window = KeyRange {
        causal: true,
        window: Some(3),
    };
    let out = values(attention(
        q.clone(),
        k.clone(),
        v.clone(),
        0.5,
        window,
        None,
    ));
    // Change key and value 0: only queries 0..=2 (whose windows include position 0) move.
    let k2 = k.clone().slice_assign(
        [0..1, 0..1, 0..1, 0..4],
        Tensor::ones([1, 1, 1, 4], &device),
    );
    let v2 = v.clone().slice_assign(
        [0..1, 0..1, 0..1, 0..4],
        Tensor::ones([1, 1, 1, 4], &device),
    );
    let moved = values(attention(q, k2, v2, 0.5, window, None));
    for i in 0..10 {
        let same = out[i * 4..(i + 1) * 4] == moved[i * 4..(i + 1) * 4];
        assert_eq!(same, i >= 3, "query {i}");
    }
}

#[test]
fn attention_over_one_key_has_zero_query_and_key_gradients() {
    // P = 1, so dS = P ⊙ (dP − Σ P ⊙ dP) is exactly 0: both forms must give exact zeros (a
    // row sum taken as Σ dO ⊙ O instead left rounding noise that a relative check rejects).
    for (dims, is_causal) in [([1, 2, 1, 1, 16], true), ([2, 3, 5, 1, 8], false)] {
        let case = mha(dims, causal(is_causal), None);
        check_attention(27, dims, &case, Layout::Projections);
        let [_, dq, dk, dv] = attention_and_grads(attention, 27, dims, &case, Layout::Projections);
        assert!(dq.iter().chain(&dk).all(|&g| g == 0.0), "{dims:?}");
        assert!(dv.iter().any(|&g| g != 0.0), "{dims:?}: v still learns");
    }
}

#[test]
fn attention_rows_that_see_no_key_are_zero_with_zero_gradients() {
    // Every key of batch row 0 is padding, and the last key of row 1.
    let padding: Vec<bool> = (0..14).map(|i| i < 7 || i == 13).collect();
    for is_causal in [false, true] {
        let case = Case {
            kv_heads: 3,
            keys: causal(is_causal),
            padding: Some(padding.clone()),
        };
        let [out, dq, dk, dv] =
            attention_and_grads(attention, 25, [2, 3, 7, 7, 5], &case, Layout::Heads);
        let half = 3 * 7 * 5;
        for (name, v) in [("output", &out), ("dq", &dq), ("dk", &dk), ("dv", &dv)] {
            assert!(v.iter().all(|x| x.is_finite()), "{name}: finite");
            assert!(
                v[..half].iter().all(|&x| x == 0.0),
                "{name}: zero on the padded row"
            );
            assert!(
                v[half..].iter().any(|&x| x != 0.0),
                "{name}: not zero elsewhere"
            );
        }
    }
}

#[test]
fn attention_without_autodiff_matches_composite() {
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(26);
    let q = random(&mut rng, [2, 3, 65, 16], 1.5, &device);
    let k = random(&mut rng, [2, 3, 80, 16], 1.5, &device);
    let v = random(&mut rng, [2, 3, 80, 16], 1.5, &device);
    let mask: Vec<bool> = (0..160).map(|i| i % 80 >= 75).collect();
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [2, 80]), &device);
    let window = KeyRange {
        causal: true,
        window: Some(30),
    };
    for (keys, mask) in [
        (causal(true), None),
        (causal(false), Some(&mask)),
        (causal(true), Some(&mask)),
        (window, Some(&mask)),
    ] {
        let args = || (q.clone(), k.clone(), v.clone());
        let (q1, k1, v1) = args();
        let (q2, k2, v2) = args();
        let fused = values(attention(q1, k1, v1, 0.25, keys, mask));
        let composite = values(attention_composite(q2, k2, v2, 0.25, keys, mask));
        assert_close(&format!("inference output {keys:?}"), &fused, &composite);
    }
    // Grouped-query attention at inference (the KV-cache path): 6 query heads over 3.
    let q6 = random(&mut rng, [2, 6, 1, 16], 1.5, &device);
    let fused = values(attention(
        q6.clone(),
        k.clone(),
        v.clone(),
        0.25,
        KeyRange::CAUSAL,
        Some(&mask),
    ));
    let composite = values(attention_composite(
        q6,
        k,
        v,
        0.25,
        KeyRange::CAUSAL,
        Some(&mask),
    ));
    assert_close("inference grouped-query output", &fused, &composite);
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
    fn attention_matches_composite_on_any_shape(
        seed in 0u64..1000,
        batch in 1usize..3,
        kv_heads in 1usize..3,
        group in 1usize..4,
        q in 1usize..80,
        extra in 0usize..20,
        dim in 1usize..20,
        causal: bool,
        window in proptest::option::of(1usize..40),
        padded in proptest::option::of(0usize..8),
        layout in prop_oneof![Just(Layout::Heads), Just(Layout::Projections), Just(Layout::Transposed)],
    ) {
        let k = q + extra;
        let dims = [batch, kv_heads * group, q, k, dim];
        let case = Case {
            kv_heads,
            keys: KeyRange { causal, window },
            padding: padded.map(|p| tail_padding(batch, k, p.min(k - 1))),
        };
        check_attention(seed, dims, &case, layout);
    }

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
    let qkv = random(&mut rng, [1, 2, 5, 4], 1.5, &device);
    for dtype in [DType::F16, DType::BF16] {
        let half = qkv.clone().cast(dtype).require_grad();
        let out = attention(
            half.clone(),
            half.clone(),
            half.clone(),
            0.5,
            KeyRange::CAUSAL,
            None,
        );
        assert_eq!(out.dtype(), dtype);
        assert_eq!(
            half.grad(&out.clone().sum().backward()).unwrap().dtype(),
            dtype
        );
        let want = values(attention_composite(
            qkv.clone(),
            qkv.clone(),
            qkv.clone(),
            0.5,
            KeyRange::CAUSAL,
            None,
        ));
        assert!(
            values(out)
                .iter()
                .zip(&want)
                .all(|(a, b)| (a - b).abs() < 2e-2),
            "attention {dtype:?}"
        );

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
