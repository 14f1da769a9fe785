//! Regularization as one value per parameter group: coupled L2, decoupled weight decay, L1 (as a
//! subgradient or as a proximal soft-threshold) and their elastic-net combination.
//!
//! Where each term enters the update is what distinguishes Adam-with-L2 from AdamW, and why the
//! two are separate fields:
//!
//! | field | where | PyTorch equivalent |
//! |---|---|---|
//! | `l2` | `g ← g + l2·w` before any moment | `Adam/SGD(weight_decay=…)` |
//! | `weight_decay` | `w ← w·(1 − lr·wd)` outside the moments (LAMB: `r ← r + wd·w` inside the trust ratio) | `AdamW(weight_decay=…)`, timm `Lamb` |
//! | `l1`, [`L1Mode::Subgradient`] | `g ← g + l1·sign(w)` before any moment | — |
//! | `l1`, [`L1Mode::Proximal`] | after the step, `w ← sign(w)·max(|w| − lr·l1, 0)` | — |
//!
//! The proximal form is the one that produces exact zeros (every weight with `|w| <= lr·l1`
//! after the step becomes `0.0`); the subgradient form only oscillates around zero.

use burn::config::Config;
use burn::tensor::Tensor;

use crate::error::{OptimError, non_negative};

/// How an L1 penalty is applied.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum L1Mode {
    /// Add `l1·sign(w)` to the gradient (the subgradient of `l1·|w|`; never exactly zero).
    Subgradient,
    /// Soft-threshold the weights after the step (proximal gradient / ISTA): exact zeros.
    Proximal,
}

/// The regularization of one parameter group. [`Regularization::new`] is none at all.
#[derive(Config, Debug, PartialEq)]
pub struct Regularization {
    /// Coupled L2: `l2·w` is added to the gradient (so Adam rescales it, unlike AdamW).
    #[config(default = 0.0)]
    pub l2: f64,
    /// Decoupled weight decay: `w ← w·(1 − lr·weight_decay)` (AdamW, SGDW); in LAMB the
    /// paper's `r + λ·w` under the trust ratio.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// L1 strength.
    #[config(default = 0.0)]
    pub l1: f64,
    /// How the L1 term is applied (proximal by default: it is what produces sparsity).
    #[config(default = "L1Mode::Proximal")]
    pub l1_mode: L1Mode,
}

impl Regularization {
    /// Coupled L2 only (`torch.optim.Adam(weight_decay=l2)`).
    pub fn coupled_l2(l2: f64) -> Self {
        Self::new().with_l2(l2)
    }

    /// Decoupled weight decay only (`torch.optim.AdamW(weight_decay=wd)`).
    pub fn decoupled(weight_decay: f64) -> Self {
        Self::new().with_weight_decay(weight_decay)
    }

    /// L1 in the given form.
    pub fn l1(l1: f64, mode: L1Mode) -> Self {
        Self::new().with_l1(l1).with_l1_mode(mode)
    }

    /// Elastic net: proximal L1 plus coupled L2.
    pub fn elastic_net(l1: f64, l2: f64) -> Self {
        Self::new().with_l1(l1).with_l2(l2)
    }

    /// Whether every term is zero.
    pub fn is_none(&self) -> bool {
        self.l2 == 0.0 && self.weight_decay == 0.0 && self.l1 == 0.0
    }

    /// Every strength must be finite and `>= 0`.
    pub fn validate(&self) -> Result<(), OptimError> {
        non_negative("l2", self.l2)?;
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("l1", self.l1)
    }

    /// The gradient with the coupled terms (L2, L1 subgradient) added.
    pub(crate) fn coupled_gradient<const D: usize>(
        &self,
        grad: Tensor<D>,
        weight: &Tensor<D>,
    ) -> Tensor<D> {
        let mut grad = grad;
        if self.l2 != 0.0 {
            grad = grad + weight.clone().mul_scalar(self.l2);
        }
        if self.l1 != 0.0 && self.l1_mode == L1Mode::Subgradient {
            grad = grad + weight.clone().sign().mul_scalar(self.l1);
        }
        grad
    }

    /// `w·(1 − lr·weight_decay)`, before the step (PyTorch AdamW's order).
    pub(crate) fn decay<const D: usize>(&self, weight: Tensor<D>, lr: f64) -> Tensor<D> {
        if self.weight_decay == 0.0 {
            weight
        } else {
            weight.mul_scalar(1.0 - lr * self.weight_decay)
        }
    }

    /// The proximal L1 step after the update: `sign(w)·max(|w| − lr·l1, 0)`.
    pub(crate) fn proximal<const D: usize>(&self, weight: Tensor<D>, lr: f64) -> Tensor<D> {
        if self.l1 == 0.0 || self.l1_mode != L1Mode::Proximal {
            return weight;
        }
        soft_threshold(weight, lr * self.l1)
    }
}

/// `sign(w)·max(|w| − threshold, 0)`: exactly `0.0` wherever `|w| <= threshold`.
pub fn soft_threshold<const D: usize>(weight: Tensor<D>, threshold: f64) -> Tensor<D> {
    let shrunk = weight.clone().abs().sub_scalar(threshold).clamp_min(0.0);
    weight.sign() * shrunk
}
