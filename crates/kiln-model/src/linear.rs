//! What a Transformer block asks of its linear layers, so that one block, one GPT and one
//! generation loop serve both Burn's f32 [`Linear`] and kiln-compress's int8 `QuantizedLinear`.

use burn::module::{Module, ModuleDisplay};
use burn::nn::Linear;
use burn::tensor::Tensor;

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
}
