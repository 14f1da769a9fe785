//! Int8 affine quantization: `x ≈ scale · (q - zero_point)`, symmetric or asymmetric, per tensor
//! or per channel, with min-max or percentile calibration.
//!
//! Burn 0.22.1's `QuantScheme` covers symmetric int8 per tensor or per block, and its CPU matmul
//! dequantizes; what it lacks (asymmetric zero points, per-channel scales, activation
//! quantization, an integer GEMM) is here. Zero is always exactly representable (the range is
//! widened to contain it), so pruned weights stay exactly zero after quantization.

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::error::{CompressError, Result};

/// Symmetric (`zero_point = 0`, range `[-127, 127]`) or asymmetric (range `[-128, 127]` with a
/// zero point, for skewed ranges such as post-GELU activations).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum QuantMode {
    /// `x ≈ scale · q`, `q ∈ [-127, 127]`.
    Symmetric,
    /// `x ≈ scale · (q - zero_point)`, `q ∈ [-128, 127]`.
    Asymmetric,
}

/// One scale for the whole tensor, or one per channel (output feature).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One scale (and zero point).
    PerTensor,
    /// One scale (and zero point) per output channel.
    PerChannel,
}

/// How the range is chosen from observed values.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum Calibration {
    /// The observed minimum and maximum: nothing is clipped.
    MinMax,
    /// The given percentile (e.g. 99.99) of the values and its mirror: outliers are clipped
    /// and the rest gets a finer grid.
    Percentile(f64),
}

/// How a tensor is quantized. Defaults: symmetric per-channel weights with min-max ranges (what
/// `torch.ao.quantization` uses for linear weights).
#[derive(Config, Debug)]
pub struct QuantConfig {
    /// Symmetric or asymmetric.
    #[config(default = "QuantMode::Symmetric")]
    pub mode: QuantMode,
    /// Per tensor or per channel.
    #[config(default = "Granularity::PerChannel")]
    pub granularity: Granularity,
    /// Min-max or percentile.
    #[config(default = "Calibration::MinMax")]
    pub calibration: Calibration,
}

/// The scale and zero point of one quantized range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    /// Step between adjacent integer levels.
    pub scale: f32,
    /// The integer that represents 0.0.
    pub zero_point: i32,
}

impl QuantParams {
    /// Parameters covering `[min, max]` (widened to contain 0).
    pub fn from_range(min: f32, max: f32, mode: QuantMode) -> Self {
        let (min, max) = (min.min(0.0), max.max(0.0));
        match mode {
            QuantMode::Symmetric => {
                let bound = min.abs().max(max.abs());
                Self {
                    scale: if bound > 0.0 { bound / 127.0 } else { 1.0 },
                    zero_point: 0,
                }
            }
            QuantMode::Asymmetric => {
                let span = max - min;
                if span <= 0.0 {
                    return Self {
                        scale: 1.0,
                        zero_point: 0,
                    };
                }
                let scale = span / 255.0;
                let zero_point = (-128.0 - min / scale).round().clamp(-128.0, 127.0) as i32;
                Self { scale, zero_point }
            }
        }
    }

    /// The int8 code of `x` (rounded to nearest, clamped to the mode's range).
    pub fn quantize(&self, x: f32, mode: QuantMode) -> i8 {
        let lo = if mode == QuantMode::Symmetric {
            -127.0
        } else {
            -128.0
        };
        ((x / self.scale).round() + self.zero_point as f32).clamp(lo, 127.0) as i8
    }

    /// The value code `q` stands for.
    pub fn dequantize(&self, q: i8) -> f32 {
        self.scale * (q as i32 - self.zero_point) as f32
    }
}

/// The calibrated range of `values`.
pub fn calibrate(values: &[f32], calibration: Calibration) -> Result<(f32, f32)> {
    if values.is_empty() {
        return Err(CompressError::EmptyModel("nothing to calibrate on".into()));
    }
    match calibration {
        Calibration::MinMax => Ok(values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })),
        Calibration::Percentile(p) if p.is_finite() && (50.0..=100.0).contains(&p) => {
            let mut sorted = values.to_vec();
            sorted.sort_by(f32::total_cmp);
            let at = |q: f64| sorted[((q / 100.0) * (sorted.len() - 1) as f64).round() as usize];
            Ok((at(100.0 - p), at(p)))
        }
        Calibration::Percentile(p) => Err(CompressError::arg(format!(
            "percentile {p} is outside [50, 100]"
        ))),
    }
}

/// A rank-2 tensor `[channels, len]` in int8: channel `c` is the contiguous row `c`, with its
/// own [`QuantParams`] (or one shared by all rows, per tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor {
    /// `[channels, len]`.
    pub shape: [usize; 2],
    /// The codes, row-major.
    pub values: Vec<i8>,
    /// One entry per row, or one for the whole tensor.
    pub params: Vec<QuantParams>,
    /// The mode the codes were made with.
    pub mode: QuantMode,
}

impl QuantizedTensor {
    /// Quantizes `values` of shape `[channels, len]` (row-major) with `config`.
    pub fn quantize(values: &[f32], shape: [usize; 2], config: &QuantConfig) -> Result<Self> {
        let [channels, len] = shape;
        if values.is_empty() || channels * len != values.len() {
            return Err(CompressError::arg(format!(
                "cannot quantize {} values as {shape:?}",
                values.len()
            )));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(CompressError::arg("cannot quantize NaN or infinity"));
        }
        let params: Vec<QuantParams> = match config.granularity {
            Granularity::PerTensor => {
                let (lo, hi) = calibrate(values, config.calibration)?;
                vec![QuantParams::from_range(lo, hi, config.mode)]
            }
            Granularity::PerChannel => values
                .chunks(len)
                .map(|row| {
                    let (lo, hi) = calibrate(row, config.calibration)?;
                    Ok(QuantParams::from_range(lo, hi, config.mode))
                })
                .collect::<Result<_>>()?,
        };
        let codes = values
            .chunks(len)
            .enumerate()
            .flat_map(|(c, row)| {
                let p = params[c.min(params.len() - 1)];
                row.iter().map(move |&x| p.quantize(x, config.mode))
            })
            .collect();
        Ok(Self {
            shape,
            values: codes,
            params,
            mode: config.mode,
        })
    }

    /// The parameters of row `c`.
    pub fn params_of(&self, c: usize) -> QuantParams {
        self.params[c.min(self.params.len() - 1)]
    }

    /// Back to f32, row-major `[channels, len]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let len = self.shape[1];
        self.values
            .chunks(len)
            .enumerate()
            .flat_map(|(c, row)| {
                let p = self.params_of(c);
                row.iter().map(move |&q| p.dequantize(q))
            })
            .collect()
    }

    /// Bytes the codes and parameters take as stored: 1 per code, 5 per channel (an f32 scale
    /// and an i8 zero point).
    pub fn nbytes(&self) -> usize {
        self.values.len() + 5 * self.params.len()
    }
}
