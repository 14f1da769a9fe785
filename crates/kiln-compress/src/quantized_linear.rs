//! A linear layer with int8 weights: 1 byte per weight plus a scale (and zero point) per output
//! channel, 4x smaller than f32.

use burn::nn::Linear;
use burn::tensor::module::linear;
use burn::tensor::{Device, Tensor, TensorData};
use std::sync::Arc;

use kiln_model::fused::host::{HostLinear, HostOp, host_linear, map_rows};
use kiln_model::linear::{LinearLayer, PrunableLinear, ToLinear};
use serde::{Deserialize, Serialize};

use crate::error::{CompressError, Result};
use crate::int_gemm::{
    Columns, Packed, fused_linear, gemm_i8, pack_for_vnni, quantize_row, rescale, row_params,
};
use crate::quantize::{QuantConfig, QuantParams, QuantizedTensor};

/// What happens to the activations entering a [`QuantizedLinear`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ActivationQuant {
    /// Weight-only: the weights are dequantized to f32 and Burn's f32 matmul runs (the fallback
    /// for backends without an integer product; it saves memory, not time).
    None,
    /// Dynamic: each input row (token) gets its own symmetric scale at run time, then the int8 ×
    /// int8 → i32 product runs on the host.
    Dynamic,
    /// Static: one calibrated range for all inputs (see
    /// [`QuantizedGpt::calibrate`](crate::QuantizedGpt::calibrate)), then the integer product.
    Static(QuantParams),
}

/// `y = x·W + b` with `W` in int8.
///
/// The weight is stored transposed, `[d_out, d_in]`, so each output channel's weights are
/// contiguous: per-channel scales are per row and the integer kernel reads both operands along
/// the reduction dimension.
///
/// The weight and what is derived from it are shared (`Arc`): a clone is cheap, which the
/// differentiable path needs (each forward pass on an autodiff device hands the layer to the
/// backward pass).
///
/// On an autodiff device the layer is differentiable with respect to its input (never its
/// weights, which are not parameters): the backward multiplies the output's gradient by the
/// dequantized weight, a block of output channels at a time, so a frozen int8 base passes
/// gradients down to LoRA adapters below it with no f32 copy of its weight.
#[derive(Debug, Clone)]
pub struct QuantizedLinear {
    /// The int8 weight, `[d_out, d_in]`.
    pub weight: Arc<QuantizedTensor>,
    /// The f32 bias, `[d_out]`.
    pub bias: Option<Vec<f32>>,
    /// How activations are treated.
    pub activations: ActivationQuant,
    weight_sums: Arc<[i32]>,
    /// The weight repacked for the VNNI kernel (`None` on CPUs without it).
    packed: Option<Arc<Packed>>,
}

impl QuantizedLinear {
    /// Quantizes a Burn `Linear` (weight `[d_in, d_out]`).
    pub fn from_linear(
        layer: &Linear,
        config: &QuantConfig,
        activations: ActivationQuant,
    ) -> Result<Self> {
        let w = layer.weight.val();
        let [d_in, d_out] = w.dims();
        let transposed = to_host(w.transpose());
        let bias = layer.bias.as_ref().map(|b| to_host(b.val()));
        Self::new(&transposed, [d_out, d_in], bias, config, activations)
    }

    /// Quantizes a weight given as `[d_out, d_in]` row-major.
    pub fn new(
        weight_t: &[f32],
        shape: [usize; 2],
        bias: Option<Vec<f32>>,
        config: &QuantConfig,
        activations: ActivationQuant,
    ) -> Result<Self> {
        if let Some(b) = &bias
            && b.len() != shape[0]
        {
            return Err(CompressError::ShapeMismatch {
                path: "bias".into(),
                expected: vec![shape[0]],
                found: vec![b.len()],
            });
        }
        let weight = QuantizedTensor::quantize(weight_t, shape, config)?;
        Ok(Self::from_parts(weight, bias, activations))
    }

    /// Assembles a layer from an already quantized weight (`[d_out, d_in]`).
    pub fn from_parts(
        weight: QuantizedTensor,
        bias: Option<Vec<f32>>,
        activations: ActivationQuant,
    ) -> Self {
        let weight_sums: Arc<[i32]> = weight
            .values
            .chunks(weight.shape[1].max(1))
            .map(|row| row.iter().map(|&q| q as i32).sum())
            .collect();
        let packed = pack_for_vnni(&weight.values, weight.shape[0], weight.shape[1]).map(Arc::new);
        Self {
            weight: Arc::new(weight),
            bias,
            activations,
            weight_sums,
            packed,
        }
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.weight.shape[1]
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.weight.shape[0]
    }

    /// The weight back in f32, as Burn stores it (`[d_in, d_out]`).
    pub fn dequantized_weight(&self, device: &Device) -> Tensor<2> {
        let [d_out, d_in] = self.weight.shape;
        Tensor::<2>::from_data(
            TensorData::new(self.weight.dequantize(), [d_out, d_in]),
            device,
        )
        .transpose()
    }

    /// `[.., d_in] -> [.., d_out]`; an input of another width is an error.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        let dims = x.dims();
        if D == 0 || dims[D - 1] != self.d_in() {
            return Err(CompressError::ShapeMismatch {
                path: "input".into(),
                expected: vec![self.d_in()],
                found: dims.to_vec(),
            });
        }
        Ok(self.forward(x))
    }

    /// `[.., d_in] -> [.., d_out]`.
    ///
    /// # Panics
    ///
    /// When the input's last dimension is not `d_in` (as Burn's `Linear` does); use
    /// [`try_forward`](Self::try_forward) for an error instead.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let device = x.device();
        let dims = x.dims();
        let bias = || {
            self.bias
                .as_ref()
                .map(|b| Tensor::<1>::from_data(TensorData::new(b.clone(), [b.len()]), &device))
        };
        if self.activations == ActivationQuant::None {
            return linear(x, self.dequantized_weight(&device), bias());
        }
        assert_eq!(dims[D - 1], self.d_in(), "QuantizedLinear: input width");
        if device.is_autodiff() {
            // Training adapters over a frozen int8 base: the input's gradient flows through.
            return host_linear(x, &HostOp(Arc::new(self.clone())));
        }
        // On flex the kernel quantizes the activations straight out of the tensor's buffer and
        // writes the output tensor's own (no copy either way).
        map_rows(x, self.d_out(), |x, rows, y| self.forward_rows(x, rows, y))
    }

    /// The integer path on host rows `x: [rows, d_in]` (row-major), whatever
    /// [`activations`](Self::activations) says (weight-only layers quantize their inputs
    /// dynamically here). Errors when `x` does not hold `rows · d_in` values.
    pub fn forward_host(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        if x.len() != rows * self.d_in() {
            return Err(CompressError::ShapeMismatch {
                path: "input".into(),
                expected: vec![rows, self.d_in()],
                found: vec![x.len()],
            });
        }
        let mut y = vec![0f32; rows * self.d_out()];
        self.forward_rows(x, rows, &mut y);
        Ok(y)
    }

    /// `y = x·W + b` for `rows` rows, `y` holding `rows · d_out` values.
    fn forward_rows(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        let (d_in, d_out) = (self.d_in(), self.d_out());
        let fixed = match self.activations {
            ActivationQuant::Static(p) => Some(p),
            _ => None,
        };
        let w_scale: Vec<f32> = (0..d_out).map(|o| self.weight.params_of(o).scale).collect();
        let w_zero: Vec<i32> = (0..d_out)
            .map(|o| self.weight.params_of(o).zero_point)
            .collect();
        let zeros = vec![0f32; d_out];
        let cols = Columns {
            scale: &w_scale,
            zero: &w_zero,
            sums: &self.weight_sums[..],
            bias: self.bias.as_deref().unwrap_or(&zeros),
        };
        if let Some(packed) = self.packed.as_deref()
            && fused_linear(x, rows, d_in, d_out, packed, fixed, &cols, y)
        {
            return;
        }
        // Portable path: quantize every row, one integer product, then rescale.
        let mut xq = vec![0i8; rows * d_in];
        let mut row_info = Vec::with_capacity(rows);
        for (row, q) in x.chunks_exact(d_in).zip(xq.chunks_exact_mut(d_in)) {
            let p = row_params(row, fixed);
            row_info.push((p, quantize_row(row, p, q)));
        }
        // The sizes are consistent by construction.
        let acc = gemm_i8(
            &xq,
            &self.weight.values,
            &self.weight_sums,
            rows,
            d_out,
            d_in,
        )
        .unwrap_or_else(|_| vec![0; rows * d_out]);
        for (r, (out, acc)) in y
            .chunks_exact_mut(d_out)
            .zip(acc.chunks_exact(d_out))
            .enumerate()
        {
            for (o, (y, &a)) in out.iter_mut().zip(acc).enumerate() {
                *y = rescale(a, d_in, row_info[r], &cols, o);
            }
        }
    }

    /// Bytes of weights, scales, zero points and bias.
    pub fn nbytes(&self) -> usize {
        self.weight.nbytes() + 4 * self.bias.as_ref().map_or(0, Vec::len)
    }
}

/// Implements Burn's `Module` for a layer whose int8 weights live on the host, outside Burn's
/// parameter tree: moving, forking and `valid` leave it as it is and no visitor sees it, so it
/// can sit in kiln-model's blocks. `$layer` names the [`QuantizedLinear`] inside `$type`, for the
/// parameter count (weights and bias) and the display.
macro_rules! host_module {
    ($type:ty, |$this:ident| $layer:expr) => {
        impl burn::module::Module for $type {
            fn collect_devices(&self, devices: burn::module::Devices) -> burn::module::Devices {
                devices
            }
            fn fork(self, _: &burn::tensor::Device) -> Self {
                self
            }
            fn to_device(self, _: &burn::tensor::Device) -> Self {
                self
            }
            fn train(self) -> Self {
                self
            }
            fn valid(&self) -> Self {
                self.clone()
            }
            fn materialize(self) -> Self {
                self
            }
            fn num_params(&self) -> usize {
                let $this = self;
                let layer: &$crate::quantized_linear::QuantizedLinear = $layer;
                layer.weight.values.len() + layer.bias.as_ref().map_or(0, Vec::len)
            }
            fn visit<V: burn::module::ModuleVisitor>(&self, _: &mut V) {}
            fn map<M: burn::module::ModuleMapper>(self, _: &mut M) -> Self {
                self
            }
        }

        impl burn::module::ModuleDisplayDefault for $type {
            fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
                let $this = self;
                let layer: &$crate::quantized_linear::QuantizedLinear = $layer;
                content
                    .add("d_in", &layer.d_in())
                    .add("d_out", &layer.d_out())
                    .optional()
            }
        }

        impl burn::module::ModuleDisplay for $type {}
    };
}
pub(crate) use host_module;

host_module!(QuantizedLinear, |this| this);

impl LinearLayer for QuantizedLinear {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        QuantizedLinear::forward(self, x)
    }

    fn d_out(&self) -> usize {
        QuantizedLinear::d_out(self)
    }

    fn d_in(&self) -> usize {
        QuantizedLinear::d_in(self)
    }
}

/// The dequantized weight and the bias: what merging a LoRA adapter into an int8 base gives
/// (QLoRA's merged export is in f32).
impl ToLinear for QuantizedLinear {
    fn to_linear(&self, device: &Device) -> Linear {
        // Transposed on the host: a parameter is a leaf, never the output of an operation.
        let [d_out, d_in] = self.weight.shape;
        let values = self.weight.dequantize();
        let mut transposed = vec![0f32; values.len()];
        for (o, row) in values.chunks_exact(d_in.max(1)).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                transposed[i * d_out + o] = v;
            }
        }
        let weight = Tensor::<2>::from_data(TensorData::new(transposed, [d_in, d_out]), device);
        Linear {
            weight: burn::module::Param::from_tensor(weight),
            bias: self.bias.as_ref().map(|b| {
                burn::module::Param::from_tensor(Tensor::<1>::from_data(
                    TensorData::new(b.clone(), [b.len()]),
                    device,
                ))
            }),
        }
    }
}

pub(crate) fn to_host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    to_host_data(t.into_data())
}

fn to_host_data(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

impl HostLinear for QuantizedLinear {
    fn d_in(&self) -> usize {
        QuantizedLinear::d_in(self)
    }

    fn d_out(&self) -> usize {
        QuantizedLinear::d_out(self)
    }

    fn forward_rows(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        QuantizedLinear::forward_rows(self, x, rows, y)
    }

    /// `dx = dy·W` with `W[o][i] = s_o·(q[o][i] − z_o)`, dequantized a block of output channels
    /// at a time into a buffer gemm reads: the f32 copy is never more than a block.
    fn backward_rows(&self, dy: &[f32], rows: usize, dx: &mut [f32]) {
        // Output channels per block: a block's f32 copy is `BLOCK · d_in` floats.
        const BLOCK: usize = 256;
        let (d_in, d_out) = (QuantizedLinear::d_in(self), QuantizedLinear::d_out(self));
        let w = &self.weight;
        let mut block = vec![0f32; BLOCK.min(d_out) * d_in];
        for o0 in (0..d_out).step_by(BLOCK) {
            let o1 = (o0 + BLOCK).min(d_out);
            for (o, out) in (o0..o1).zip(block.chunks_exact_mut(d_in)) {
                let p = w.params_of(o);
                for (v, &q) in out.iter_mut().zip(&w.values[o * d_in..(o + 1) * d_in]) {
                    *v = p.scale * (q as i32 - p.zero_point) as f32;
                }
            }
            // dx += dy[:, o0..o1] · W[o0..o1, :]
            kiln_model::fused::host::matmul_rows(
                [rows, d_in, o1 - o0],
                &dy[o0..],
                d_out,
                &block,
                d_in,
                dx,
                d_in,
                o0 > 0,
            );
        }
    }
}

impl PrunableLinear for QuantizedLinear {
    /// The layer with only the given output channels (rows of its `[d_out, d_in]` weight).
    fn keep_outputs(&self, rows: &[usize]) -> Self {
        let w = &self.weight;
        let d_in = w.shape[1];
        let values = rows
            .iter()
            .flat_map(|&r| w.values[r * d_in..(r + 1) * d_in].iter().copied())
            .collect();
        let params = if w.params.len() == 1 {
            w.params.clone()
        } else {
            rows.iter().map(|&r| w.params[r]).collect()
        };
        let weight = QuantizedTensor {
            shape: [rows.len(), d_in],
            values,
            params,
            mode: w.mode,
        };
        let bias = self
            .bias
            .as_ref()
            .map(|b| rows.iter().map(|&r| b[r]).collect());
        QuantizedLinear::from_parts(weight, bias, self.activations)
    }

    /// The layer with only the given input columns (its per-output-channel parameters stay).
    fn keep_inputs(&self, cols: &[usize]) -> Self {
        let w = &self.weight;
        let d_in = w.shape[1];
        let values = (0..w.shape[0])
            .flat_map(|r| cols.iter().map(move |&c| w.values[r * d_in + c]))
            .collect();
        let weight = QuantizedTensor {
            shape: [w.shape[0], cols.len()],
            values,
            params: w.params.clone(),
            mode: w.mode,
        };
        QuantizedLinear::from_parts(weight, self.bias.clone(), self.activations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::{Granularity, QuantMode};

    /// With one to three rows and a layer large enough, the VNNI path splits the output columns
    /// between threads (decoding); every column block lands where the portable path puts it.
    #[test]
    fn column_split_matches_the_portable_path() {
        let (d_in, d_out) = (512, 2100);
        let w: Vec<f32> = (0..d_out * d_in)
            .map(|i| ((i * 7919 % 601) as f32 / 300.0) - 1.0)
            .collect();
        let bias: Vec<f32> = (0..d_out).map(|o| o as f32 * 0.001).collect();
        let config = QuantConfig::new();
        let fused = QuantizedLinear::new(
            &w,
            [d_out, d_in],
            Some(bias),
            &config,
            ActivationQuant::Dynamic,
        )
        .unwrap();
        let mut portable = fused.clone();
        portable.packed = None;
        for rows in 1..=3 {
            let x: Vec<f32> = (0..rows * d_in)
                .map(|i| (i as f32 * 0.754_877_7).sin())
                .collect();
            let a = fused.forward_host(&x, rows).unwrap();
            let b = portable.forward_host(&x, rows).unwrap();
            let step = 2.0 / 127.0;
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(worst <= step, "rows {rows}: worst difference {worst}");
            let exact = a.iter().zip(&b).filter(|(p, q)| p == q).count();
            assert!(
                exact * 10 >= a.len() * 9,
                "rows {rows}: {exact} of {} identical",
                a.len()
            );
        }
    }

    /// The fused VNNI path (where this CPU has it) and the portable path agree: they differ only
    /// in the rounding of exact ties when quantizing activations.
    #[test]
    fn fused_and_portable_paths_agree() {
        let (rows, d_in, d_out) = (9, 70, 37);
        let w: Vec<f32> = (0..d_out * d_in)
            .map(|i| ((i * 7919 % 601) as f32 / 300.0) - 1.0)
            .collect();
        let bias: Vec<f32> = (0..d_out).map(|o| o as f32 * 0.01).collect();
        // Values that are not on a grid, so no activation lands exactly between two levels
        // (where the two paths' rounding rules differ: ties to even against away from zero).
        let x: Vec<f32> = (0..rows * d_in)
            .map(|i| (i as f32 * 0.754_877_7).sin() * 1.1)
            .collect();
        for mode in [QuantMode::Symmetric, QuantMode::Asymmetric] {
            for act in [
                ActivationQuant::Dynamic,
                ActivationQuant::Static(QuantParams::from_range(-1.2, 1.4, QuantMode::Asymmetric)),
            ] {
                let config = QuantConfig::new()
                    .with_mode(mode)
                    .with_granularity(Granularity::PerChannel);
                let fused =
                    QuantizedLinear::new(&w, [d_out, d_in], Some(bias.clone()), &config, act)
                        .unwrap();
                let mut portable = fused.clone();
                portable.packed = None;
                let a = fused.forward_host(&x, rows).unwrap();
                let b = portable.forward_host(&x, rows).unwrap();
                let step = w.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0 * 2.0;
                for (p, q) in a.iter().zip(&b) {
                    assert!((p - q).abs() <= step, "{mode:?} {act:?}: {p} vs {q}");
                }
                let exact = a.iter().zip(&b).filter(|(p, q)| p == q).count();
                assert!(
                    exact * 10 >= a.len() * 9,
                    "{exact} of {} identical",
                    a.len()
                );
                // And both are close to the f32 product.
                for r in 0..rows {
                    for o in 0..d_out {
                        let f: f32 = (0..d_in)
                            .map(|i| x[r * d_in + i] * w[o * d_in + i])
                            .sum::<f32>()
                            + bias[o];
                        assert!(
                            (a[r * d_out + o] - f).abs() < 0.05 * (1.0 + f.abs()),
                            "{f} vs {}",
                            a[r * d_out + o]
                        );
                    }
                }
            }
        }
    }
}
