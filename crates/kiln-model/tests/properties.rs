//! Invariants of the models, checked on random inputs (proptest, CPU backend).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_model::bert::{BertConfig, BertInput};
use kiln_model::feed_forward::FeedForwardKind;
use kiln_model::gpt::{Gpt, GptConfig, PositionEncoding};
use kiln_model::norm::NormKind;
use kiln_model::rotary::RopeScaling;
use proptest::prelude::*;

const VOCAB: usize = 23;
const BLOCK: usize = 12;

fn gpt(seed: u64, rotary: bool) -> Gpt {
    let device = Device::flex();
    device.seed(seed);
    let config = GptConfig::new(VOCAB)
        .with_block_size(BLOCK)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(16)
        .with_init_std(0.3)
        .with_positions(if rotary {
            PositionEncoding::Rotary
        } else {
            PositionEncoding::Learned
        })
        .with_ff_kind(if rotary {
            FeedForwardKind::SwiGlu
        } else {
            FeedForwardKind::Mlp
        });
    config.init(&device).unwrap()
}

/// A Llama-shaped decoder: RMSNorm, rotary positions with llama3 scaling, SwiGLU, 4 query
/// heads of width 6 (wider than 16/4) over `kv_heads` key/value heads, an optional window.
fn llama_config(kv_heads: usize, window: Option<usize>) -> GptConfig {
    GptConfig::new(VOCAB)
        .with_block_size(BLOCK)
        .with_n_layer(2)
        .with_n_head(4)
        .with_n_kv_head(Some(kv_heads))
        .with_head_dim(Some(6))
        .with_d_model(16)
        .with_d_ff(Some(24))
        .with_init_std(0.3)
        .with_positions(PositionEncoding::Rotary)
        .with_rope_theta(500000.0)
        .with_rope_scaling(Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8,
        }))
        .with_ff_kind(FeedForwardKind::SwiGlu)
        .with_norm(Some(NormKind::RmsNorm))
        .with_bias(false)
        .with_tie_embeddings(false)
        .with_sliding_window(window)
}

fn llama(seed: u64, kv_heads: usize, window: Option<usize>, device: &Device) -> Gpt {
    device.seed(seed);
    llama_config(kv_heads, window).init(device).unwrap()
}

/// A key or value projection with each of its `kv` heads (width `hd`) repeated for the
/// `heads / kv` query heads that read it: the weights of the multi-head layer that computes
/// the same as the grouped one.
fn repeated(linear: &Linear, heads: usize, hd: usize) -> Linear {
    let [d_in, width] = linear.weight.dims();
    let kv = width / hd;
    let weight = linear
        .weight
        .val()
        .detach()
        .reshape([d_in, kv, 1, hd])
        .expand([d_in, kv, heads / kv, hd])
        .reshape([d_in, heads * hd]);
    Linear {
        weight: Param::from_tensor(weight),
        bias: None,
    }
}

fn ids(rows: &[Vec<u32>]) -> Tensor<2, Int> {
    kiln_model::loss::token_tensor(rows, &Device::flex()).unwrap()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn tokens(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0..VOCAB as u32, len)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Changing tokens after position t never changes the logits at positions <= t.
    #[test]
    fn gpt_is_causal(seed in 0u64..1000, rotary: bool, seq in tokens(2..=BLOCK), cut in 0usize..BLOCK, fresh in tokens(BLOCK..=BLOCK)) {
        let cut = cut % (seq.len() - 1);
        let model = gpt(seed, rotary);
        let mut changed = seq.clone();
        for (i, token) in changed.iter_mut().enumerate().skip(cut + 1) {
            *token = (fresh[i] + 1 + *token) % VOCAB as u32; // always a different token
        }
        let a = model.forward(ids(std::slice::from_ref(&seq))).unwrap();
        let b = model.forward(ids(&[changed])).unwrap();
        let keep = cut + 1;
        let a = values(a.narrow(1, 0, keep));
        let b = values(b.narrow(1, 0, keep));
        prop_assert!(max_diff(&a, &b) <= 1e-5);
    }

    /// Decoding a sequence piece by piece through the KV cache gives the logits of one full
    /// forward pass.
    #[test]
    fn kv_cache_decoding_equals_full_forward(seed in 0u64..1000, rotary: bool, seq in tokens(2..=BLOCK), pieces in prop::collection::vec(1usize..4, 1..6)) {
        let model = gpt(seed, rotary);
        let full = values(model.forward(ids(&[seq.clone(), seq.iter().rev().cloned().collect()])).unwrap());
        let reversed: Vec<u32> = seq.iter().rev().cloned().collect();
        let mut cache = model.new_cache();
        let mut incremental = [Vec::new(), Vec::new()];
        let mut start = 0;
        let mut piece = pieces.iter().cycle();
        while start < seq.len() {
            let len = (*piece.next().unwrap()).min(seq.len() - start);
            let step = model
                .forward_cached(ids(&[seq[start..start + len].to_vec(), reversed[start..start + len].to_vec()]), &mut cache)
                .unwrap();
            for (b, row) in incremental.iter_mut().enumerate() {
                row.extend(values(step.clone().narrow(0, b, 1)));
            }
            start += len;
        }
        prop_assert_eq!(cache.len(), seq.len());
        let incremental: Vec<f32> = incremental.concat();
        prop_assert!(max_diff(&full, &incremental) <= 1e-4, "diff {}", max_diff(&full, &incremental));
    }

    /// Grouped-query attention equals multi-head attention whose key/value heads are the
    /// grouped ones repeated for their query heads: at inference (kiln's kernel against Burn's
    /// op), while training (the fused op's groups against plain heads), and decoding with the
    /// KV cache (which holds only the key/value heads).
    #[test]
    fn grouped_query_attention_equals_multi_head_with_repeated_heads(seed in 0u64..1000, kv in prop_oneof![Just(1usize), Just(2)], seq in tokens(2..=BLOCK)) {
        let plain = Device::flex();
        let gqa = llama(seed, kv, None, &plain);
        let mut mha = llama(seed, 4, None, &plain);
        mha.token_embedding = gqa.token_embedding.clone();
        mha.lm_head = gqa.lm_head.clone();
        mha.final_norm = gqa.final_norm.clone();
        for (m, g) in mha.blocks.iter_mut().zip(&gqa.blocks) {
            m.attn_norm = g.attn_norm.clone();
            m.ffn_norm = g.ffn_norm.clone();
            m.ffn = g.ffn.clone();
            m.attn.query = g.attn.query.clone();
            m.attn.out = g.attn.out.clone();
            m.attn.key = repeated(&g.attn.key, 4, 6);
            m.attn.value = repeated(&g.attn.value, 4, 6);
        }
        // The same weights on the training device: the fused op with autodiff.
        let autodiff = Device::flex().autodiff();
        for (gqa, mha, device) in [
            (gqa.clone(), mha.clone(), plain.clone()),
            (gqa.clone().fork(&autodiff), mha.fork(&autodiff), autodiff.clone()),
        ] {
            let input = ids(std::slice::from_ref(&seq)).to_device(&device);
            let a = values(gqa.forward(input.clone()).unwrap());
            let b = values(mha.forward(input).unwrap());
            prop_assert!(max_diff(&a, &b) <= 1e-5, "kv {kv}: {}", max_diff(&a, &b));
        }
        let mut cache = gqa.new_cache();
        let mut decoded = Vec::new();
        for &token in &seq {
            decoded.extend(values(gqa.forward_cached(ids(&[vec![token]]), &mut cache).unwrap()));
        }
        let full = values(gqa.forward(ids(std::slice::from_ref(&seq))).unwrap());
        prop_assert!(max_diff(&full, &decoded) <= 1e-4);
        let (k, _) = cache.layers[0].keys_values().unwrap();
        prop_assert_eq!(k.dims()[1], kv, "the cache holds the key/value heads only");
    }

    /// A Llama-shaped decoder with GQA and a sliding window: decoding piece by piece through
    /// the cache gives the full forward's logits; and a token more than `layers · (window − 1)`
    /// positions back (the receptive field) changes nothing.
    #[test]
    fn a_windowed_grouped_decoder_decodes_like_its_forward(seed in 0u64..1000, window in 1usize..5, seq in tokens(BLOCK..=BLOCK), pieces in prop::collection::vec(1usize..4, 1..6), fresh in 0u32..VOCAB as u32) {
        let model = llama(seed, 2, Some(window), &Device::flex());
        let full = values(model.forward(ids(std::slice::from_ref(&seq))).unwrap());
        let mut cache = model.new_cache();
        let mut decoded = Vec::new();
        let (mut start, mut piece) = (0, pieces.iter().cycle());
        while start < seq.len() {
            let len = (*piece.next().unwrap()).min(seq.len() - start);
            decoded.extend(values(model.forward_cached(ids(&[seq[start..start + len].to_vec()]), &mut cache).unwrap()));
            start += len;
        }
        prop_assert!(max_diff(&full, &decoded) <= 1e-4, "diff {}", max_diff(&full, &decoded));
        // The training path (the fused op on autodiff) gives the same logits.
        let autodiff = Device::flex().autodiff();
        let trained = model.clone().fork(&autodiff);
        let on_autodiff = values(trained.forward(ids(std::slice::from_ref(&seq)).to_device(&autodiff)).unwrap());
        prop_assert!(max_diff(&full, &on_autodiff) <= 1e-5);
        let reach = 2 * (window - 1);
        let last = seq.len() - 1;
        if last > reach {
            let mut changed = seq.clone();
            changed[0] = (changed[0] + 1 + fresh) % VOCAB as u32;
            let other = values(model.forward(ids(&[changed])).unwrap());
            let at = |v: &[f32]| v[last * VOCAB..].to_vec();
            prop_assert_eq!(at(&full), at(&other));
        }
    }

    /// Each row's logits are the same whether it is run alone or in a batch.
    #[test]
    fn rows_of_a_batch_are_independent(seed in 0u64..1000, rotary: bool, rows in prop::collection::vec(tokens(6..=6), 2..5)) {
        let model = gpt(seed, rotary);
        let batch = values(model.forward(ids(&rows)).unwrap());
        let per_row = VOCAB * 6;
        for (i, row) in rows.iter().enumerate() {
            let alone = values(model.forward(ids(std::slice::from_ref(row))).unwrap());
            prop_assert!(max_diff(&batch[i * per_row..(i + 1) * per_row], &alone) <= 1e-5);
        }
    }

    /// BERT: masked padding never changes the other positions; they equal the unpadded run.
    #[test]
    fn bert_padding_is_invisible(seed in 0u64..1000, seq in tokens(1..=8), pad in 1usize..5, junk in tokens(4..=4)) {
        let device = Device::flex();
        device.seed(seed);
        let config = BertConfig::new(VOCAB)
            .with_hidden_size(16)
            .with_num_hidden_layers(2)
            .with_num_attention_heads(4)
            .with_intermediate_size(32)
            .with_max_position_embeddings(16)
            .with_hidden_dropout_prob(0.0)
            .with_attention_probs_dropout_prob(0.0)
            .with_initializer_range(0.3);
        let bert = config.init(true, &device).unwrap();
        let len = seq.len();
        let mut padded = seq.clone();
        padded.extend(&junk[..pad]);
        let mask: Vec<i64> = (0..len + pad).map(|i| (i < len) as i64).collect();
        let input = BertInput {
            input_ids: ids(&[padded]),
            token_type_ids: None,
            attention_mask: Some(Tensor::from_data(TensorData::new(mask, [1, len + pad]), &device)),
        };
        let out = bert.forward(input).unwrap();
        let alone = bert.forward(BertInput::new(ids(&[seq]))).unwrap();
        let padded_states = values(out.last_hidden_state.narrow(1, 0, len));
        prop_assert!(max_diff(&padded_states, &values(alone.last_hidden_state)) <= 1e-4);
        prop_assert!(max_diff(&values(out.pooler_output.unwrap()), &values(alone.pooler_output.unwrap())) <= 1e-4);
    }
}
