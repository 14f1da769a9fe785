//! The same small models on flex (CPU) and on wgpu: forward outputs and one AdamW training
//! step must agree. Compiled only with `--features wgpu`; CI runs it on software Vulkan
//! (Mesa's lavapipe).
#![cfg(feature = "wgpu")]

use burn::optim::{AdamWConfig, GradientsParams};
use kiln::model::loss::token_tensor;
use kiln::prelude::*;

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

fn wgpu() -> Device {
    kiln::device::from_name("wgpu").expect("built with the wgpu feature")
}

fn gpt_config() -> GptConfig {
    GptConfig::new(31)
        .with_block_size(16)
        .with_n_layer(2)
        .with_n_head(4)
        .with_d_model(32)
        .with_init_std(0.2)
}

#[test]
fn gpt_forward_and_one_training_step_match_flex() {
    let flex = Device::flex().autodiff();
    flex.seed(5);
    let gpt_flex = gpt_config().init(&flex).unwrap();
    let gpu = wgpu().autodiff();
    // `fork`, not `to_device`: the copy must be a trainable leaf on the new device, not a
    // differentiable view of the flex parameters.
    let gpt_gpu = gpt_flex.clone().fork(&gpu);

    let rows = vec![
        vec![1, 4, 9, 16, 25, 5, 7, 2, 3, 0],
        vec![30, 2, 2, 8, 1, 1, 3, 6, 9, 12],
    ];
    let targets = vec![
        vec![4, 9, 16, 25, 5, 7, 2, 3, 0, 1],
        vec![2, 2, 8, 1, 1, 3, 6, 9, 12, 30],
    ];

    let logits_flex = gpt_flex
        .forward(token_tensor(&rows, &flex).unwrap())
        .unwrap();
    let logits_gpu = gpt_gpu.forward(token_tensor(&rows, &gpu).unwrap()).unwrap();
    let diff = max_diff(&values(logits_flex.clone()), &values(logits_gpu));
    assert!(diff <= 1e-4, "forward differs by {diff}");

    let step = |gpt: Gpt, device: &Device| -> (Gpt, f32) {
        let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
        let logits = gpt.forward(token_tensor(&rows, device).unwrap()).unwrap();
        let loss = gpt.loss(logits, token_tensor(&targets, device).unwrap(), None);
        let grads = GradientsParams::from_grads(loss.backward(), &gpt);
        let loss: f32 = loss.into_scalar();
        (optim.step(1e-2, gpt, grads), loss)
    };
    let (after_flex, loss_flex) = step(gpt_flex, &flex);
    let (after_gpu, loss_gpu) = step(gpt_gpu, &gpu);
    assert!(
        (loss_flex - loss_gpu).abs() <= 1e-4,
        "loss {loss_flex} vs {loss_gpu}"
    );

    // Compare the updated models on the CPU, on the same input.
    let after_gpu = after_gpu.to_device(&flex);
    let probe = token_tensor(&rows, &flex).unwrap();
    let a = values(after_flex.forward(probe.clone()).unwrap());
    let b = values(after_gpu.forward(probe).unwrap());
    let diff = max_diff(&a, &b);
    assert!(
        diff <= 1e-3,
        "after one AdamW step the models differ by {diff}"
    );
    // The step really changed the model (so the comparison above is not vacuous).
    assert!(max_diff(&a, &values(logits_flex)) > 1e-2);
}

#[test]
fn bert_masked_lm_with_padding_matches_flex() {
    let flex = Device::flex();
    flex.seed(9);
    let config = BertConfig::new(40)
        .with_hidden_size(32)
        .with_num_hidden_layers(2)
        .with_num_attention_heads(4)
        .with_intermediate_size(64)
        .with_max_position_embeddings(16)
        .with_initializer_range(0.2);
    let bert_flex = config.init_masked_lm(&flex).unwrap();
    let gpu = wgpu();
    let bert_gpu = bert_flex.clone().to_device(&gpu);
    let input = |device: &Device| BertInput {
        input_ids: token_tensor(&[vec![2, 5, 7, 9, 11, 0], vec![3, 3, 1, 39, 0, 0]], device)
            .unwrap(),
        token_type_ids: Some(
            token_tensor(&[vec![0, 0, 0, 1, 1, 1], vec![0, 1, 1, 1, 0, 0]], device).unwrap(),
        ),
        attention_mask: Some(
            token_tensor(&[vec![1, 1, 1, 1, 1, 0], vec![1, 1, 1, 1, 0, 0]], device).unwrap(),
        ),
    };
    let a = values(bert_flex.forward(input(&flex)).unwrap());
    let b = values(bert_gpu.forward(input(&gpu)).unwrap());
    let diff = max_diff(&a, &b);
    assert!(diff <= 1e-4, "BERT logits differ by {diff}");
}
