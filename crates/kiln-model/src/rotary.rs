//! Rotary position embeddings (Su et al. 2021, RoFormer), in the "rotate half" layout of
//! GPT-NeoX and HuggingFace LLaMA: dimension `i` pairs with `i + head_dim/2`.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

/// Precomputed cos/sin tables for every position up to a maximum length.
#[derive(Module, Debug)]
pub struct RotaryEmbedding {
    /// `cos(pos·θ_i)`, shape `[max_len, head_dim]` (each frequency repeated in both halves).
    pub cos: Tensor<2>,
    /// `sin(pos·θ_i)`, shape `[max_len, head_dim]`.
    pub sin: Tensor<2>,
}

impl RotaryEmbedding {
    /// Tables for `max_len` positions of heads of width `head_dim` (even), with base `theta`
    /// (10 000 in the paper).
    pub fn new(head_dim: usize, max_len: usize, theta: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_len * head_dim);
        let mut sin = Vec::with_capacity(max_len * head_dim);
        for pos in 0..max_len {
            // Both halves of a row carry the same frequencies.
            for _ in 0..2 {
                for i in 0..half {
                    let inv_freq = theta.powf(-(2.0 * i as f64) / head_dim as f64);
                    let angle = pos as f64 * inv_freq;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let shape = [max_len, head_dim];
        Self {
            cos: Tensor::from_data(burn::tensor::TensorData::new(cos, shape), device),
            sin: Tensor::from_data(burn::tensor::TensorData::new(sin, shape), device),
        }
    }

    /// Rotates `x` of shape `[batch, heads, seq, head_dim]` whose first position is `offset`.
    pub fn apply(&self, x: Tensor<4>, offset: usize) -> Tensor<4> {
        let [_, _, seq, head_dim] = x.dims();
        let half = head_dim / 2;
        let cos = self
            .cos
            .clone()
            .narrow(0, offset, seq)
            .unsqueeze::<4>()
            .cast(x.dtype());
        let sin = self
            .sin
            .clone()
            .narrow(0, offset, seq)
            .unsqueeze::<4>()
            .cast(x.dtype());
        let first = x.clone().narrow(3, 0, half);
        let second = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * cos + rotated * sin
    }

    /// How many positions the tables cover.
    pub fn max_len(&self) -> usize {
        self.cos.dims()[0]
    }
}
