//! What a Transformer block asks of its linear layers, so that one block, one GPT and one
//! generation loop serve both Burn's f32 [`Linear`] and kiln-compress's int8 `QuantizedLinear`.

use burn::module::{Module, ModuleDisplay, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// A linear map of the last dimension, `[batch, seq, d_in] -> [batch, seq, d_out]`.
///
/// [`MultiHeadAttention`](crate::attention::MultiHeadAttention),
/// [`FeedForward`](crate::feed_forward::FeedForward),
/// [`TransformerBlock`](crate::block::TransformerBlock) and [`Gpt`](crate::gpt::Gpt) are generic
/// over their linear layer, with Burn's [`Linear`] as the default: `Gpt` is `Gpt<Linear>`, the
/// model that trains. kiln-compress's `QuantizedGpt` runs the same code as a
/// `Gpt<QuantizedLinear>` (see [`Gpt::map_linears`](crate::gpt::Gpt::map_linears)).
pub trait LinearLayer: Module + ModuleDisplay {
    /// `[batch, seq, d_in] -> [batch, seq, d_out]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<3>;

    /// Output width (attention reads its head width from it, since structured pruning may have
    /// removed heads).
    fn d_out(&self) -> usize;

    /// Input width (a LoRA adapter's `A` is `[d_in, r]`).
    fn d_in(&self) -> usize;
}

/// A linear layer that can be written as Burn's f32 [`Linear`]: itself, or an int8 layer
/// dequantized. What a model with LoRA adapters becomes when they are merged
/// ([`Gpt::merge_and_unload`](crate::gpt::Gpt::merge_and_unload)), and how a saved module's
/// weights are read.
pub trait ToLinear: LinearLayer {
    /// The layer as an f32 `Linear` (`[d_in, d_out]` weight), computing the same function up to
    /// the layer's own rounding; on `device` when the layer is not on a device already.
    fn to_linear(&self, device: &Device) -> Linear;
}

impl ToLinear for Linear {
    fn to_linear(&self, _device: &Device) -> Linear {
        self.clone()
    }
}

/// A linear layer whose features can be removed: structured pruning takes heads and neurons
/// out of a block with it ([`MultiHeadAttention::keep_heads`](crate::attention::MultiHeadAttention::keep_heads),
/// [`FeedForward::keep_hidden`](crate::feed_forward::FeedForward::keep_hidden)), in f32 and int8 alike.
pub trait PrunableLinear: LinearLayer + Sized {
    /// The layer with only the output features `kept` (sorted, in range).
    fn keep_outputs(&self, kept: &[usize]) -> Self;

    /// The layer with only the input features `kept` (sorted, in range).
    fn keep_inputs(&self, kept: &[usize]) -> Self;
}

/// Where a linear layer sits in a block's parallel regions (Megatron-LM): the layers that
/// enter a region are cut by their outputs (columns of Burn's `[d_in, d_out]` weight), the
/// layers that leave it by their inputs (rows), so that one all-reduce ends the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Enters a region: q, k, v; the MLP's up and gate.
    Column,
    /// Leaves a region: attention's output; the MLP's down.
    Row,
}

impl LinearLayer for Linear {
    /// Burn's `Linear::forward`, as one gemm with the bias in its epilogue on flex
    /// ([`fused::linear`](crate::fused::linear)).
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        crate::fused::linear::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }

    fn d_out(&self) -> usize {
        // Burn stores the weight as `[d_in, d_out]`.
        self.weight.dims()[1]
    }

    fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl PrunableLinear for Linear {
    fn keep_outputs(&self, kept: &[usize]) -> Self {
        Linear {
            weight: select(&self.weight, 1, kept),
            bias: self.bias.as_ref().map(|b| select(b, 0, kept)),
        }
    }

    fn keep_inputs(&self, kept: &[usize]) -> Self {
        Linear {
            weight: select(&self.weight, 0, kept),
            bias: self.bias.clone(),
        }
    }
}

/// The parameter with only the indices `kept` of dimension `dim`: a new leaf with the same id
/// and trainability.
fn select<const D: usize>(
    param: &Param<Tensor<D>>,
    dim: usize,
    kept: &[usize],
) -> Param<Tensor<D>> {
    param.clone().map(|t| {
        map_leaf(t, |t| {
            let ids: Vec<i64> = kept.iter().map(|&k| k as i64).collect();
            let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [kept.len()]), &t.device());
            t.select(dim, ids)
        })
    })
}

/// `f` of a parameter's value computed off the autodiff graph, returned as a fresh leaf with
/// the same autodiff and require-grad state (what an optimizer step produces): a parameter
/// edited in place, not the output of an operation.
pub fn map_leaf<const D: usize>(
    tensor: Tensor<D>,
    f: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    let (autodiff, require_grad) = (tensor.is_autodiff(), tensor.is_require_grad());
    let out = f(tensor.without_autodiff());
    let out = if autodiff { out.autodiff() } else { out };
    if require_grad {
        out.require_grad()
    } else {
        out
    }
}
