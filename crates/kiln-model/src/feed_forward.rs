//! The position-wise feed-forward layer of a Transformer block.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};

use kiln_dist::TensorParallel;

use crate::activation::Activation;
use crate::error::{ModelError, Result};
use crate::init::normal_linear;
use crate::linear::{Cut, LinearLayer, PrunableLinear};

/// The two shapes a feed-forward layer takes.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum FeedForwardKind {
    /// `down(act(up(x)))`, with GELU in GPT-2 and BERT.
    Mlp,
    /// `down(silu(gate(x)) ⊙ up(x))`, Shazeer 2020 (LLaMA, PaLM); usually without biases.
    SwiGlu,
}

/// Configuration of a [`FeedForward`] layer.
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Model width.
    pub d_model: usize,
    /// Hidden width (4·d_model in GPT-2 and BERT).
    pub d_hidden: usize,
    /// Plain MLP or SwiGLU.
    #[config(default = "FeedForwardKind::Mlp")]
    pub kind: FeedForwardKind,
    /// Non-linearity of the MLP form (SwiGLU always uses SiLU on its gate).
    #[config(default = "Activation::GeluTanh")]
    pub activation: Activation,
    /// Dropout on the output.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Whether the linear layers have biases.
    #[config(default = true)]
    pub bias: bool,
    /// Standard deviation of the input projections' normal init.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// Standard deviation of the output projection's init (GPT-2 scales it by 1/√(2·n_layer)).
    #[config(default = 0.02)]
    pub out_init_std: f64,
}

/// `down(act(up(x)))` or its gated SwiGLU form, then dropout. Generic over its
/// [`LinearLayer`] (Burn's [`Linear`] by default).
#[derive(Module, Debug)]
pub struct FeedForward<L: LinearLayer = Linear> {
    /// Input projection, `d_model -> d_hidden`.
    pub up: L,
    /// Gate projection of SwiGLU, `d_model -> d_hidden`.
    pub gate: Option<L>,
    /// Output projection, `d_hidden -> d_model`.
    pub down: L,
    /// Dropout on the output.
    pub dropout: Dropout,
    /// The non-linearity.
    #[module(skip)]
    pub activation: Activation,
    /// The group the hidden units are split across, under tensor parallelism (Megatron's
    /// parallel MLP: up and gate column-parallel, down row-parallel); see
    /// [`parallel`](crate::parallel).
    #[module(skip)]
    pub tensor_parallel: Option<TensorParallel>,
}

impl FeedForwardConfig {
    /// Builds the layer with normal-initialized weights and zero biases.
    pub fn init(&self, device: &Device) -> FeedForward {
        let swiglu = self.kind == FeedForwardKind::SwiGlu;
        let bias = self.bias;
        FeedForward {
            up: normal_linear(self.d_model, self.d_hidden, bias, self.init_std, device),
            gate: swiglu
                .then(|| normal_linear(self.d_model, self.d_hidden, bias, self.init_std, device)),
            down: normal_linear(self.d_hidden, self.d_model, bias, self.out_init_std, device),
            dropout: DropoutConfig::new(self.dropout).init(),
            activation: if swiglu {
                Activation::Silu
            } else {
                self.activation
            },
            tensor_parallel: None,
        }
    }
}

impl<L: LinearLayer> FeedForward<L> {
    /// The layer table: the linear layers in order (`up`, `gate` for SwiGLU, `down`), with
    /// their names (the parameter paths below the layer) and how tensor parallelism cuts them.
    pub fn linears(&self) -> Vec<(&'static str, Cut, &L)> {
        let mut out = vec![("up", Cut::Column, &self.up)];
        out.extend(self.gate.as_ref().map(|g| ("gate", Cut::Column, g)));
        out.push(("down", Cut::Row, &self.down));
        out
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut L)> {
        let mut out = vec![("up", &mut self.up)];
        out.extend(self.gate.as_mut().map(|g| ("gate", g)));
        out.push(("down", &mut self.down));
        out
    }

    /// The same layer with each linear layer replaced by `f(name, cut, layer)`, in the order
    /// of [`linears`](Self::linears); dropout and settings are shared.
    pub fn map_linears<'a, N: LinearLayer, E>(
        &'a self,
        f: &mut impl FnMut(&'static str, Cut, &'a L) -> std::result::Result<N, E>,
    ) -> std::result::Result<FeedForward<N>, E> {
        Ok(FeedForward {
            up: f("up", Cut::Column, &self.up)?,
            gate: self
                .gate
                .as_ref()
                .map(|g| f("gate", Cut::Column, g))
                .transpose()?,
            down: f("down", Cut::Row, &self.down)?,
            dropout: self.dropout.clone(),
            activation: self.activation,
            tensor_parallel: self.tensor_parallel.clone(),
        })
    }

    /// `[batch, seq, d_model] -> [batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let tp = self.tensor_parallel.as_ref();
        let x = match tp {
            Some(tp) => tp.copy_to_region(x),
            None => x,
        };
        let hidden = match &self.gate {
            // SiLU's gate times up, one fused op (its gradients in one pass).
            Some(gate) if self.activation == Activation::Silu => {
                crate::fused::swiglu(gate.forward(x.clone()), self.up.forward(x))
            }
            Some(gate) => self.activation.forward(gate.forward(x.clone())) * self.up.forward(x),
            None => self.activation.forward(self.up.forward(x)),
        };
        let out = self.down.forward(hidden);
        let out = match tp {
            Some(tp) => tp.reduce_from_region(out),
            None => out,
        };
        self.dropout.forward(out)
    }
}

impl<L: PrunableLinear> FeedForward<L> {
    /// The layer with only the hidden features `kept` (sorted, unique, below the hidden
    /// width): `up` and `gate` lose outputs, `down` the same inputs.
    pub fn keep_hidden(&self, kept: &[usize]) -> Result<Self> {
        let width = self.up.d_out();
        if kept.is_empty()
            || kept.iter().any(|&j| j >= width)
            || kept.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(ModelError::BadInput(format!(
                "kept hidden features must be non-empty, sorted, unique and < {width}"
            )));
        }
        self.map_linears(&mut |_, cut, layer| {
            Ok(match cut {
                Cut::Column => layer.keep_outputs(kept),
                Cut::Row => layer.keep_inputs(kept),
            })
        })
    }
}
