//! The same small models on flex and on another device: forward outputs and one AdamW step
//! must agree. CI runs it against software Vulkan (`tests/backend_parity.rs`); on a GPU
//! machine `scripts/gpu_check.sh` runs it against CUDA and the GPU's Vulkan, through the
//! prebuilt `gpu_bundle report --parity`. One implementation, so the GPU is held to the
//! tolerances CI holds lavapipe to.

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use kiln_model::bert::{BertConfig, BertInput};
use kiln_model::gpt::{Gpt, GptConfig};
use kiln_model::loss::token_tensor;

/// Logits and losses agree within this (f32 kernels in another order).
pub const FORWARD_TOLERANCE: f32 = 1e-4;
/// After one AdamW step at learning rate 1e-2, the updated models' logits agree within this.
pub const STEP_TOLERANCE: f32 = 1e-3;
/// The step must move the logits by more than this, or the comparison after it proves nothing.
pub const STEP_MOVES_AT_LEAST: f32 = 1e-2;

/// The largest absolute differences between flex and the other device.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Parity {
    /// A 2-layer GPT's logits.
    pub gpt_forward: f32,
    /// Its cross-entropy loss.
    pub gpt_loss: f32,
    /// Its logits after one AdamW step on each device, both evaluated on flex.
    pub gpt_after_step: f32,
    /// How far that step moved flex's logits.
    pub gpt_step_moved: f32,
    /// A 2-layer BERT's masked-LM logits with token types and a padding mask.
    pub bert_forward: f32,
}

impl Parity {
    /// Each difference beyond its tolerance, named; empty when the device agrees with flex.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut over = |what: &str, value: f32, limit: f32| {
            if value.is_nan() || value > limit {
                out.push(format!("{what} differs by {value} (tolerance {limit})"));
            }
        };
        over("GPT logits", self.gpt_forward, FORWARD_TOLERANCE);
        over("GPT loss", self.gpt_loss, FORWARD_TOLERANCE);
        over(
            "GPT after one AdamW step",
            self.gpt_after_step,
            STEP_TOLERANCE,
        );
        over("BERT logits", self.bert_forward, FORWARD_TOLERANCE);
        if self.gpt_step_moved.is_nan() || self.gpt_step_moved <= STEP_MOVES_AT_LEAST {
            out.push(format!(
                "the AdamW step moved the logits by only {} (at least {STEP_MOVES_AT_LEAST} needed)",
                self.gpt_step_moved
            ));
        }
        out
    }
}

/// Runs both models on flex and on `device` and measures how far apart they are.
pub fn measure(device: &Device) -> crate::Result<Parity> {
    let (gpt_forward, gpt_loss, gpt_after_step, gpt_step_moved) = gpt(device)?;
    Ok(Parity {
        gpt_forward,
        gpt_loss,
        gpt_after_step,
        gpt_step_moved,
        bert_forward: bert(device)?,
    })
}

fn values<const D: usize>(t: Tensor<D>) -> crate::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| crate::Error::Usage(format!("reading a tensor back: {e:?}")))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) })
}

fn gpt(device: &Device) -> crate::Result<(f32, f32, f32, f32)> {
    let config = GptConfig::new(31)
        .with_block_size(16)
        .with_n_layer(2)
        .with_n_head(4)
        .with_d_model(32)
        .with_init_std(0.2);
    let flex = Device::flex().autodiff();
    flex.seed(5);
    let gpt_flex = config.init(&flex)?;
    let gpu = device.clone().autodiff();
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
    let logits_flex = gpt_flex.forward(token_tensor(&rows, &flex)?)?;
    let logits_gpu = gpt_gpu.forward(token_tensor(&rows, &gpu)?)?;
    let forward = max_diff(&values(logits_flex.clone())?, &values(logits_gpu)?);

    let step = |gpt: Gpt, device: &Device| -> crate::Result<(Gpt, f32)> {
        let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
        let logits = gpt.forward(token_tensor(&rows, device)?)?;
        let loss = gpt.loss(logits, token_tensor(&targets, device)?, None);
        let grads = GradientsParams::from_grads(loss.backward(), &gpt);
        let loss: f32 = loss.into_scalar();
        Ok((optim.step(1e-2, gpt, grads), loss))
    };
    let (after_flex, loss_flex) = step(gpt_flex, &flex)?;
    let (after_gpu, loss_gpu) = step(gpt_gpu, &gpu)?;

    // The updated models are compared on the CPU, on the same input.
    let after_gpu = after_gpu.to_device(&flex);
    let probe = token_tensor(&rows, &flex)?;
    let a = values(after_flex.forward(probe.clone())?)?;
    let b = values(after_gpu.forward(probe)?)?;
    let moved = max_diff(&a, &values(logits_flex)?);
    Ok((
        forward,
        (loss_flex - loss_gpu).abs(),
        max_diff(&a, &b),
        moved,
    ))
}

fn bert(device: &Device) -> crate::Result<f32> {
    let flex = Device::flex();
    flex.seed(9);
    let config = BertConfig::new(40)
        .with_hidden_size(32)
        .with_num_hidden_layers(2)
        .with_num_attention_heads(4)
        .with_intermediate_size(64)
        .with_max_position_embeddings(16)
        .with_initializer_range(0.2);
    let bert_flex = config.init_masked_lm(&flex)?;
    let bert_gpu = bert_flex.clone().to_device(device);
    let input = |device: &Device| -> crate::Result<BertInput> {
        Ok(BertInput {
            input_ids: token_tensor(&[vec![2, 5, 7, 9, 11, 0], vec![3, 3, 1, 39, 0, 0]], device)?,
            token_type_ids: Some(token_tensor(
                &[vec![0, 0, 0, 1, 1, 1], vec![0, 1, 1, 1, 0, 0]],
                device,
            )?),
            attention_mask: Some(token_tensor(
                &[vec![1, 1, 1, 1, 1, 0], vec![1, 1, 1, 1, 0, 0]],
                device,
            )?),
        })
    };
    let a = values(bert_flex.forward(input(&flex)?)?)?;
    let b = values(bert_gpu.forward(input(device)?)?)?;
    Ok(max_diff(&a, &b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_against_itself_agrees_and_the_step_moves() {
        let parity = measure(&Device::flex()).unwrap();
        assert!(parity.failures().is_empty(), "{:?}", parity.failures());
        assert_eq!(parity.gpt_forward, 0.0);
    }

    #[test]
    fn a_difference_beyond_tolerance_or_nan_is_named() {
        let parity = Parity {
            gpt_forward: 2e-4,
            gpt_loss: f32::NAN,
            gpt_after_step: 0.0,
            gpt_step_moved: 0.0,
            bert_forward: 0.0,
        };
        let failures = parity.failures();
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].starts_with("GPT logits"));
        assert!(failures[1].starts_with("GPT loss"));
        assert!(failures[2].contains("moved the logits"));
    }
}
