//! Rotary position embeddings (Su et al. 2021, RoFormer), in the "rotate half" layout of
//! GPT-NeoX and HuggingFace's Llama: dimension `i` pairs with `i + head_dim/2`.
//!
//! The frequencies are computed as transformers computes them, in f32: `θ^(−2i/d)` for the
//! `d/2` pairs (`rope_theta`, 10 000 in the paper, 500 000 in Llama 3), optionally rescaled
//! ([`RopeScaling`]: `linear`, `llama3`), and each position's angle is one f32 product of the
//! position and the frequency, as transformers' `inv_freq @ position_ids` is; the cosines and
//! sines of those angles are then correctly rounded. So the tables match transformers' to an
//! f32 rounding at every position, including long contexts where the f32 angle itself is
//! coarse.
//!
//! Meta's original Llama checkpoints (`consolidated.*.pth`) pair dimension `2i` with `2i + 1`
//! (interleaved); transformers' conversion script permutes the rows of `wq` and `wk` into the
//! rotate-half layout, which is the layout of every HuggingFace checkpoint and of kiln.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{ModelError, Result};

/// How the rotary frequencies are rescaled for contexts longer than the training context
/// (transformers' `rope_scaling` / `rope_parameters`).
#[derive(Config, Debug, PartialEq)]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (position interpolation, Chen et al. 2023;
    /// transformers' `"linear"`).
    Linear {
        /// The divisor, at least 1.
        factor: f64,
    },
    /// Llama 3.1's (transformers' `"llama3"`): frequencies whose wavelength is longer than
    /// `original_max_position_embeddings / low_freq_factor` divided by `factor`, those shorter
    /// than `original_max_position_embeddings / high_freq_factor` kept, and those between
    /// interpolated smoothly.
    Llama3 {
        /// The divisor of the low frequencies (8 in Llama 3.1).
        factor: f64,
        /// The low-frequency bound's factor (1 in Llama 3.1).
        low_freq_factor: f64,
        /// The high-frequency bound's factor (4 in Llama 3.1).
        high_freq_factor: f64,
        /// The context length the model was pre-trained with (8192 in Llama 3.1).
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    /// Checks the factors (positive, finite; the high-frequency factor above the low one).
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ModelError::config(format!(
                    "rope scaling `{name}` must be finite and > 0, got {v}"
                )))
            }
        };
        match *self {
            RopeScaling::Linear { factor } => positive("factor", factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(ModelError::config(format!(
                        "rope scaling `high_freq_factor` ({high_freq_factor}) must be above `low_freq_factor` ({low_freq_factor})"
                    )));
                }
                if original_max_position_embeddings == 0 {
                    return Err(ModelError::config(
                        "rope scaling `original_max_position_embeddings` must be > 0",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The frequencies `inv_freq` rescaled, in f32 as transformers computes them.
    fn apply(&self, inv_freq: &mut [f32]) {
        match *self {
            RopeScaling::Linear { factor } => {
                for f in inv_freq.iter_mut() {
                    *f /= factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f32;
                let (factor, low, high) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                );
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    *f = if wavelen > low_wavelen {
                        *f / factor
                    } else if wavelen < high_wavelen {
                        *f
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * *f / factor + smooth * *f
                    };
                }
            }
        }
    }
}

/// Precomputed cos/sin tables for every position up to a maximum length.
#[derive(Module, Debug)]
pub struct RotaryEmbedding {
    /// `cos(pos·θ_i)`, shape `[max_len, head_dim]` (each frequency repeated in both halves).
    pub cos: Tensor<2>,
    /// `sin(pos·θ_i)`, shape `[max_len, head_dim]`.
    pub sin: Tensor<2>,
    /// The base of the frequencies (written back into an exported checkpoint's config).
    #[module(skip)]
    pub theta: f64,
    /// Their scaling.
    #[module(skip)]
    pub scaling: Option<RopeScaling>,
}

impl RotaryEmbedding {
    /// Tables for `max_len` positions of heads of width `head_dim` (even), with base `theta`
    /// and optional frequency `scaling`.
    pub fn new(
        head_dim: usize,
        max_len: usize,
        theta: f64,
        scaling: Option<&RopeScaling>,
        device: &Device,
    ) -> Self {
        let inv_freq = inverse_frequencies(head_dim, theta, scaling);
        let mut cos = Vec::with_capacity(max_len * head_dim);
        let mut sin = Vec::with_capacity(max_len * head_dim);
        for pos in 0..max_len {
            // Both halves of a row carry the same frequencies.
            for _ in 0..2 {
                for &f in &inv_freq {
                    let angle = (pos as f32 * f) as f64;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let shape = [max_len, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            theta,
            scaling: scaling.cloned(),
        }
    }

    /// Rotates `x` of shape `[batch, heads, seq, head_dim]` whose first position is `offset`
    /// (one fused pass each way on flex: [`fused::rope`](crate::fused::rope)).
    pub fn apply(&self, x: Tensor<4>, offset: usize) -> Tensor<4> {
        crate::fused::rope::rope(x, &self.cos, &self.sin, offset)
    }

    /// How many positions the tables cover.
    pub fn max_len(&self) -> usize {
        self.cos.dims()[0]
    }
}

/// `θ^(−2i/d)` for `i < d/2` in f32 (transformers: `1 / base ** (arange(0, d, 2).float() / d)`),
/// then `scaling`.
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let base = theta as f32;
    let mut inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    if let Some(scaling) = scaling {
        scaling.apply(&mut inv_freq);
    }
    inv_freq
}
