//! Attention while training as one operation, forward and backward:
//! `softmax(q·kᵀ·scale, masked)·v`, without the `[batch, heads, q, k]` probabilities stored.
//!
//! The explicit form (two batched matmuls around [`masked_softmax`](super::softmax)) writes the
//! scores, the probabilities (kept for the backward) and, backward, their gradient, each
//! `[batch, heads, q, k]`; it multiplies the masked half of a causal score matrix too, and
//! copies q, k, v and the context between the projections' `[batch, seq, heads, head_dim]`
//! layout and the matmuls' `[batch, heads, seq, head_dim]`.
//!
//! Here, as in FlashAttention (Dao et al. 2022) and memory-efficient attention (Rabe & Staats
//! 2021), a block of 64 queries at a time: its scores against the keys it can see (under a
//! causal mask a block stops at its last query's position, about half of the products), the
//! softmax in place, the product with v. Besides q, k and v only each query's logsumexp is
//! kept. The backward recomputes a block's probabilities from q, k and the logsumexp and forms
//! `dV += Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dQ = dS·K·scale`,
//! `dK += dSᵀ·Q·scale` block by block (FlashAttention's backward). A block's scores sit in a
//! per-thread scratch of `64 × keys` floats, so the keys are not tiled
//! (up to a few thousand keys that scratch stays in L2; beyond, it costs cache misses, not
//! memory). q, k, v and the output gradient are read through their strides; the outputs are
//! written in the projections' layout, so the reshapes around the op copy nothing.
//!
//! Threads: (batch, head, query block) forward; (batch, head) backward, since dK and dV sum
//! over the query blocks. Every output element is computed by one task in a fixed order: the
//! result does not depend on the number of threads.
//!
//! Without dropout on the probabilities (which needs them materialized);
//! [`MultiHeadAttention`](crate::attention::MultiHeadAttention) takes the explicit form when
//! `attn_dropout > 0`.

// Built without any backend feature, the extension's generated glue leaves the trait's
// default bodies (and their arguments) unused.
#![cfg_attr(not(feature = "flex"), allow(unused_variables, dead_code))]

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Dispatch, backend_extension};
use burn::tensor::{Bool, Tensor};

use super::on_flex;
use super::softmax::masked_softmax_composite;

/// Which keys each query may see, besides padding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyRange {
    /// Query `i` sees no key after position `i + k_len − q_len` (the queries are the last of
    /// the keys' positions, as with a KV cache).
    pub causal: bool,
    /// With `causal`, query `i` sees at most the last `window` of those keys (Mistral's
    /// sliding window, as transformers masks it: key `j` is seen when `j > position − window`).
    pub window: Option<usize>,
}

impl KeyRange {
    /// Causal, without a window.
    pub const CAUSAL: Self = Self {
        causal: true,
        window: None,
    };

    /// Every key (an encoder).
    pub const ALL: Self = Self {
        causal: false,
        window: None,
    };

    /// The keys `first..end` query `i` of `tq` sees among `tk`.
    pub fn of(self, i: usize, tq: usize, tk: usize) -> std::ops::Range<usize> {
        if !self.causal {
            return 0..tk;
        }
        let end = (i as i64 + tk as i64 - tq as i64 + 1).clamp(0, tk as i64) as usize;
        let first = self.window.map_or(0, |w| end.saturating_sub(w));
        first..end
    }

    /// Whether the window hides a key that the causal mask alone would show, for `tq` queries
    /// over `tk` keys.
    pub fn window_binds(self, tk: usize) -> bool {
        self.causal && self.window.is_some_and(|w| w < tk)
    }
}

/// `softmax(q·kᵀ·scale)·v` over the keys each query may see, for `q` `[batch, heads, q_len,
/// head_dim]` and `k`, `v` `[batch, kv_heads, k_len, head_dim]` (v's last dimension may
/// differ): grouped-query attention when `kv_heads` divides `heads` (query head `h` reads
/// key/value head `h / (heads / kv_heads)`, as transformers' `repeat_kv` pairs them), without
/// the keys and values repeated. `keys` says which keys a query sees (causal, a sliding
/// window); `padding` (`[batch, k_len]`, `true` = masked) hides keys from every query. A query
/// that sees no key gets zeros.
///
/// One fused kernel forward and one backward on flex in f32; Burn's composite ops
/// ([`attention_composite`]) on every other backend and dtype.
///
/// # Panics
/// When the shapes do not fit together (as Burn's `matmul` does).
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    keys: KeyRange,
    padding: Option<&Tensor<2, Bool>>,
) -> Tensor<4> {
    let ([b, h, _, d], [kb, kh, tk, kd], [vb, vh, tv, _]) = (q.dims(), k.dims(), v.dims());
    assert!(
        [kb, vb] == [b, b] && kh == vh && kh > 0 && h.is_multiple_of(kh) && kd == d && tv == tk,
        "attention: q {:?}, k {:?} and v {:?} do not fit together",
        q.dims(),
        k.dims(),
        v.dims()
    );
    if let Some(padding) = padding {
        assert_eq!(
            padding.dims(),
            [b, tk],
            "attention: padding is [batch, keys]"
        );
    }
    if !super::kernel_dtypes(&[q.dtype(), k.dtype(), v.dtype()]) || !on_flex(&q.device()) {
        return attention_composite(q, k, v, scale, keys, padding);
    }
    // The padding as an additive key bias (0 or -inf): Burn 0.22.1's extension glue does not
    // unwrap an `Option` of a tensor, and `[batch, keys]` floats are small.
    let bias = Tensor::<2>::zeros([b, tk], &q.device());
    let bias = match padding {
        Some(padding) => bias.mask_fill(padding.clone(), f32::NEG_INFINITY),
        None => bias,
    };
    // The extension's arguments are tensors and plain values: the window as a count, 0 for none.
    let window = keys.window.filter(|_| keys.causal).unwrap_or(0);
    let (out, _logsumexp) = <Dispatch as AttentionBackend>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        bias.into_dispatch(),
        scale as f32,
        keys.causal,
        window,
    );
    Tensor::from_dispatch(out)
}

/// [`attention`] in Burn's composite ops (the key/value heads repeated, matmul,
/// [`masked_softmax_composite`], matmul): what runs on backends without the fused kernel, and
/// the reference the kernel is tested against.
pub fn attention_composite(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    keys: KeyRange,
    padding: Option<&Tensor<2, Bool>>,
) -> Tensor<4> {
    let h = q.dims()[1];
    let (k, v) = (repeat_kv(k, h), repeat_kv(v, h));
    let mask = key_mask(keys, padding, q.dims(), k.dims()[2], &q.device());
    masked_softmax_composite(q.matmul(k.swap_dims(2, 3)), scale, keys.causal, mask).matmul(v)
}

/// The `[batch, heads, q_len, k_len]` mask (`true` = hidden) of the padded keys and of the keys
/// before each query's window, for the explicit forms (the causal mask is the softmax's own
/// flag); `None` when neither hides a key. `q` is the queries' `[batch, heads, q_len, _]`.
pub fn key_mask(
    keys: KeyRange,
    padding: Option<&Tensor<2, Bool>>,
    [b, h, tq, _]: [usize; 4],
    tk: usize,
    device: &burn::tensor::Device,
) -> Option<Tensor<4, Bool>> {
    let padding = padding.map(|p| p.clone().reshape([b, 1, 1, tk]).expand([b, h, tq, tk]));
    if !keys.window_binds(tk) {
        return padding;
    }
    let before: Vec<bool> = (0..tq)
        .flat_map(|i| {
            let first = keys.of(i, tq, tk).start;
            (0..tk).map(move |j| j < first)
        })
        .collect();
    let before =
        Tensor::<2, Bool>::from_data(burn::tensor::TensorData::new(before, [tq, tk]), device)
            .reshape([1, 1, tq, tk])
            .expand([b, h, tq, tk]);
    Some(match padding {
        Some(padding) => padding.bool_or(before),
        None => before,
    })
}

/// `[batch, kv_heads, t, d]` with each key/value head repeated for the `heads / kv_heads`
/// query heads that read it (transformers' `repeat_kv`); `x` itself when the counts agree.
pub fn repeat_kv(x: Tensor<4>, heads: usize) -> Tensor<4> {
    let [b, kv, t, d] = x.dims();
    if kv == heads {
        return x;
    }
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, heads / kv, t, d])
        .reshape([b, heads, t, d])
}

/// The fused attention as a backend operation: flex runs the kernels, Autodiff adds the
/// backward (which calls the inner backend's [`fused_attention_backward`]).
///
/// [`fused_attention_backward`]: AttentionBackend::fused_attention_backward
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait AttentionBackend: Backend {
    /// The output `[batch, heads, q_len, v_dim]` of [`attention`] and each query's logsumexp
    /// of its scaled, masked scores `[batch, heads, q_len]` (`+inf` for a query that sees no
    /// key), from `key_bias` `[batch, k_len]` (0 for a key seen, `-inf` for a padded one);
    /// `window` 0 for none.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_bias: FloatTensor<Self>,
        scale: f32,
        causal: bool,
        window: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of q, k and v from the forward's inputs and logsumexp and the output's
    /// gradient `grad`. Not differentiable again.
    #[allow(clippy::too_many_arguments)]
    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_bias: FloatTensor<Self>,
        logsumexp: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
        causal: bool,
        window: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl<B: AttentionBackend, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_bias: FloatTensor<Self>,
        scale: f32,
        causal: bool,
        window: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [q.node(), k.node(), v.node()];
        let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
        let key_bias = key_bias.into_primitive();
        // Compute-bound: the backward keeps q, k, v and the logsumexp (O(seq) memory, not the
        // O(seq²) probabilities) rather than recompute the forward.
        match AttentionGrad.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::fused_attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    key_bias.clone(),
                    scale,
                    causal,
                    window,
                );
                let state = AttentionState {
                    q,
                    k,
                    v,
                    key_bias,
                    logsumexp: lse.clone(),
                    scale,
                    causal,
                    window,
                };
                (prep.finish(state, out), Self::from_inner(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (out, lse) = B::fused_attention(q, k, v, key_bias, scale, causal, window);
                (prep.finish(out), Self::from_inner(lse))
            }
        }
    }

    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        key_bias: FloatTensor<Self>,
        logsumexp: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
        causal: bool,
        window: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dq, dk, dv) = B::fused_attention_backward(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            key_bias.into_primitive(),
            logsumexp.into_primitive(),
            grad.into_primitive(),
            scale,
            causal,
            window,
        );
        (
            Self::from_inner(dq),
            Self::from_inner(dk),
            Self::from_inner(dv),
        )
    }
}

/// What the attention's backward reads.
#[derive(Debug, Clone)]
struct AttentionState<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    key_bias: FloatTensor<B>,
    logsumexp: FloatTensor<B>,
    scale: f32,
    causal: bool,
    window: usize,
}

/// The backward of the fused attention; its parents are q, k and v.
#[derive(Debug)]
struct AttentionGrad;

impl<B: AttentionBackend> Backward<B, 3> for AttentionGrad {
    type State = AttentionState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let (dq, dk, dv) = B::fused_attention_backward(
            s.q,
            s.k,
            s.v,
            s.key_bias,
            s.logsumexp,
            grad,
            s.scale,
            s.causal,
            s.window,
        );
        let [node_q, node_k, node_v] = ops.parents;
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[cfg(feature = "flex")]
mod kernels {
    use burn::backend::Flex;
    use burn::backend::flex::{FlexTensor, Layout};
    use burn::backend::tensor::FloatTensor;
    use burn::tensor::{Bytes, DType};
    use gemm::Parallelism;
    use rayon::prelude::*;

    use std::ops::Range;

    use super::{AttentionBackend, KeyRange};
    use crate::fused::kernel::{
        Operand, as_f32, exp, f32_contiguous, gemm, in_dtype, lane_dot, lane_max, lane_sum,
        multiversion, values,
    };

    /// Queries per block: a block's scores against 256 keys are 64 KiB, in L2 beside the keys.
    const QUERY_BLOCK: usize = 64;

    impl AttentionBackend for Flex {
        fn fused_attention(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            key_bias: FloatTensor<Self>,
            scale: f32,
            causal: bool,
            window: usize,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let dtype = q.dtype();
            let (q, k, v) = (heads(q), heads(k), heads(v));
            let bias = f32_contiguous(key_bias);
            let shape = Sizes::of(&q, &k, &v, causal, window);
            let (out, lse) = forward(&shape, &q, &k, &v, values(&bias), scale);
            (
                in_dtype(shape.heads_view(out, shape.dv), dtype),
                lse_tensor(lse, &shape),
            )
        }

        fn fused_attention_backward(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            key_bias: FloatTensor<Self>,
            logsumexp: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            scale: f32,
            causal: bool,
            window: usize,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            let dtype = grad.dtype();
            let (q, k, v, grad) = (heads(q), heads(k), heads(v), heads(grad));
            let (bias, lse) = (f32_contiguous(key_bias), f32_contiguous(logsumexp));
            let shape = Sizes::of(&q, &k, &v, causal, window);
            let inputs = Saved {
                q: &q,
                k: &k,
                v: &v,
                grad: &grad,
                bias: values(&bias),
                lse: values(&lse),
            };
            let (dq, dk, dv) = backward(&shape, &inputs, scale);
            (
                in_dtype(shape.heads_view(dq, shape.d), dtype),
                in_dtype(shape.keys_view(dk, shape.d), dtype),
                in_dtype(shape.keys_view(dv, shape.dv), dtype),
            )
        }
    }

    /// `t` as f32 with a unit stride along its last dimension (a copy only when it has none;
    /// a half-precision view, such as a KV cache's, widened by kiln's vectorized conversion).
    fn heads(t: FlexTensor) -> FlexTensor {
        let t = as_f32(t);
        let unit = t.layout().strides().last() == Some(&1);
        if unit { t } else { t.to_contiguous() }
    }

    /// The sizes of one call.
    struct Sizes {
        b: usize,
        /// Query heads.
        h: usize,
        /// Key/value heads (`h` / the group size).
        kh: usize,
        tq: usize,
        tk: usize,
        d: usize,
        dv: usize,
        keys: KeyRange,
    }

    impl Sizes {
        fn of(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, causal: bool, window: usize) -> Self {
            let (q, k, v) = (q.layout().shape(), k.layout().shape(), v.layout().shape());
            Self {
                b: q[0],
                h: q[1],
                kh: k[1],
                tq: q[2],
                tk: k[2],
                d: q[3],
                dv: v[3],
                keys: KeyRange {
                    causal,
                    window: (window > 0).then_some(window),
                },
            }
        }

        /// The keys query `i` sees.
        fn visible(&self, i: usize) -> Range<usize> {
            self.keys.of(i, self.tq, self.tk)
        }

        /// The keys some query of the block of rows `i0..i0 + rows` sees: from the first
        /// query's first to the last query's last (both move forward with the query).
        fn block_keys(&self, i0: usize, rows: usize) -> Range<usize> {
            let (first, last) = (self.visible(i0), self.visible(i0 + rows - 1));
            let start = first.start.min(last.end);
            start..last.end
        }

        /// The key/value head query head `h` reads.
        fn kv_head(&self, h: usize) -> usize {
            h / (self.h / self.kh)
        }

        fn blocks(&self) -> usize {
            self.tq.div_ceil(QUERY_BLOCK)
        }

        /// `values`, laid out `[b, t, heads, width]` (the projections' layout), as the
        /// `[b, heads, t, width]` tensor the op returns.
        fn view(&self, values: Vec<f32>, t: usize, heads: usize, width: usize) -> FlexTensor {
            let layout = Layout::contiguous([self.b, t, heads, width].into());
            FlexTensor::new(Bytes::from_elems(values), layout, DType::F32).transpose(1, 2)
        }

        fn heads_view(&self, values: Vec<f32>, width: usize) -> FlexTensor {
            self.view(values, self.tq, self.h, width)
        }

        fn keys_view(&self, values: Vec<f32>, width: usize) -> FlexTensor {
            self.view(values, self.tk, self.kh, width)
        }
    }

    fn lse_tensor(lse: Vec<f32>, shape: &Sizes) -> FlexTensor {
        let layout = Layout::contiguous([shape.b, shape.h, shape.tq].into());
        FlexTensor::new(Bytes::from_elems(lse), layout, DType::F32)
    }

    /// The rows of `m` from `row` on.
    fn rows_from(m: Operand, row: usize) -> Operand {
        Operand {
            // SAFETY: callers stay inside the matrix `m` describes.
            ptr: unsafe { m.ptr.offset(row as isize * m.rs) },
            ..m
        }
    }

    /// The `[t, width]` matrix of head `(b, h)` of a `[b, h, t, width]` tensor whose last
    /// stride is 1.
    fn head(t: &FlexTensor, b: usize, h: usize) -> Operand {
        let layout = t.layout();
        let s = layout.strides();
        let data: &[f32] = t.storage();
        let at = layout.start_offset() as isize + b as isize * s[0] + h as isize * s[1];
        Operand {
            // SAFETY: (b, h) is inside the tensor's shape, so `at` is inside its buffer.
            ptr: unsafe { data.as_ptr().offset(at) },
            rs: s[2],
            cs: 1,
        }
    }

    /// A raw output pointer that rayon's tasks share; each writes elements no other touches.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: the tasks write disjoint elements (see each use).
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}

    impl Out {
        /// The element at `offset` (a method, so that closures capture the `Out`, not its
        /// raw pointer field).
        fn at(self, offset: usize) -> *mut f32 {
            // SAFETY: callers stay inside the buffer.
            unsafe { self.0.add(offset) }
        }

        /// Head `(b, h)` of a `[b, t, heads, width]` buffer: `[t, width]` with row stride
        /// `heads·width`.
        fn head(self, t: usize, heads: usize, width: usize, b: usize, h: usize) -> OutMat {
            let at = ((b * t) * heads + h) * width;
            OutMat {
                ptr: self.at(at),
                rs: (heads * width) as isize,
            }
        }
    }

    /// A destination matrix: first element and row stride (columns are contiguous).
    #[derive(Clone, Copy)]
    struct OutMat {
        ptr: *mut f32,
        rs: isize,
    }

    impl OutMat {
        fn rows_from(self, row: usize) -> Self {
            // SAFETY: callers stay inside the matrix.
            Self {
                ptr: unsafe { self.ptr.offset(row as isize * self.rs) },
                ..self
            }
        }

        fn as_operand(self) -> Operand {
            Operand {
                ptr: self.ptr,
                rs: self.rs,
                cs: 1,
            }
        }
    }

    /// `dst = beta·lhs·rhs` (`add`: `dst += …`) for `lhs` `[m, k]`, `rhs` `[k, n]`, on the
    /// calling thread (the callers run one per rayon task).
    ///
    /// # Safety
    /// The matrices lie in live buffers with these sizes and strides, and `dst` is written by
    /// no one else meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        m: usize,
        n: usize,
        k: usize,
        dst: OutMat,
        add: bool,
        lhs: Operand,
        rhs: Operand,
        beta: f32,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !add {
                for r in 0..m {
                    // SAFETY: row r of dst has n elements.
                    unsafe { std::slice::from_raw_parts_mut(dst.rows_from(r).ptr, n).fill(0.0) };
                }
            }
            return;
        }
        // SAFETY: as promised by the caller (and k > 0 here).
        unsafe {
            gemm(
                [m, n, k],
                dst.ptr,
                dst.rs,
                add,
                lhs,
                rhs,
                beta,
                Parallelism::None,
            )
        };
    }

    /// A scratch `[rows, cols]` block (row-major) as a destination and as an operand.
    fn scratch(buf: &mut [f32], cols: usize) -> (OutMat, Operand) {
        let out = OutMat {
            ptr: buf.as_mut_ptr(),
            rs: cols as isize,
        };
        (out, out.as_operand())
    }

    /// Output `[b, tq, h, dv]` and logsumexp `[b, h, tq]`.
    fn forward(
        shape: &Sizes,
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
        bias: &[f32],
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let Sizes {
            b,
            h,
            tq,
            tk,
            d,
            dv,
            ..
        } = *shape;
        let mut out = vec![0.0f32; b * tq * h * dv];
        let mut lse = vec![0.0f32; b * h * tq];
        let (dst, lse_dst) = (Out(out.as_mut_ptr()), Out(lse.as_mut_ptr()));
        let blocks = shape.blocks();
        let task = |scores: &mut Vec<f32>, task: usize| {
            let (bh, block) = (task / blocks, task % blocks);
            let (bi, hi) = (bh / h, bh % h);
            let i0 = block * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(tq - i0);
            let span = shape.block_keys(i0, rows);
            let keys = span.len();
            let kvh = shape.kv_head(hi);
            let (qm, km, vm) = (head(q, bi, hi), head(k, bi, kvh), head(v, bi, kvh));
            let (km, vm) = (rows_from(km, span.start), rows_from(vm, span.start));
            let o = dst.head(tq, h, dv, bi, hi).rows_from(i0);
            // SAFETY: this task alone writes rows i0..i0 + rows of head (bi, hi) of the output
            // and of the logsumexp.
            let lse = unsafe { std::slice::from_raw_parts_mut(lse_dst.at(bh * tq + i0), rows) };
            scores.resize(rows * keys, 0.0);
            let (s_out, s) = scratch(scores, keys);
            // SAFETY: q rows i0.., k rows span, the scratch and the output rows are inside
            // their buffers with these strides.
            unsafe {
                product(
                    rows,
                    keys,
                    d,
                    s_out,
                    false,
                    rows_from(qm, i0),
                    km.t(),
                    scale,
                )
            };
            let bias = &bias[bi * tk + span.start..bi * tk + span.end];
            for (r, row) in scores.chunks_exact_mut(keys.max(1)).take(rows).enumerate() {
                lse[r] = softmax_row(row, bias, relative(shape.visible(i0 + r), span.start));
            }
            if keys == 0 {
                lse.fill(f32::INFINITY);
            }
            // SAFETY: as above.
            unsafe { product(rows, dv, keys, o, false, s, vm, 1.0) };
        };
        let tasks = b * h * blocks;
        if tasks * QUERY_BLOCK * tk * d < PARALLEL_MIN_WORK {
            let mut scores = Vec::new();
            (0..tasks).for_each(|t| task(&mut scores, t));
        } else {
            (0..tasks).into_par_iter().for_each_init(Vec::new, task);
        }
        (out, lse)
    }

    /// `keys` relative to the block's first key.
    fn relative(keys: Range<usize>, start: usize) -> Range<usize> {
        keys.start - start..keys.end - start
    }

    /// Multiply-adds below which a call runs on the calling thread.
    const PARALLEL_MIN_WORK: usize = 1 << 18;

    /// What the backward reads.
    struct Saved<'a> {
        q: &'a FlexTensor,
        k: &'a FlexTensor,
        v: &'a FlexTensor,
        grad: &'a FlexTensor,
        bias: &'a [f32],
        lse: &'a [f32],
    }

    /// `dq` `[b, tq, h, d]`, `dk` `[b, tk, kh, d]`, `dv` `[b, tk, kh, dv]`.
    fn backward(shape: &Sizes, x: &Saved<'_>, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let Sizes {
            b,
            h,
            kh,
            tq,
            tk,
            d,
            dv,
            ..
        } = *shape;
        let mut dq = vec![0.0f32; b * tq * h * d];
        let mut dk = vec![0.0f32; b * tk * kh * d];
        let mut dvv = vec![0.0f32; b * tk * kh * dv];
        let (dq_out, dk_out, dv_out) = (
            Out(dq.as_mut_ptr()),
            Out(dk.as_mut_ptr()),
            Out(dvv.as_mut_ptr()),
        );
        // One task per key/value head: dK and dV sum over its query heads and their query
        // blocks, in a fixed order.
        let group = h / kh;
        let task = |scratch_buf: &mut (Vec<f32>, Vec<f32>), bkv: usize| {
            let (bi, kvh) = (bkv / kh, bkv % kh);
            let (km, vm) = (head(x.k, bi, kvh), head(x.v, bi, kvh));
            let dkm = dk_out.head(tk, kh, d, bi, kvh);
            let dvm = dv_out.head(tk, kh, dv, bi, kvh);
            let bias = &x.bias[bi * tk..(bi + 1) * tk];
            let (probs, dprobs) = scratch_buf;
            for hi in kvh * group..(kvh + 1) * group {
                let (qm, gm) = (head(x.q, bi, hi), head(x.grad, bi, hi));
                let dqm = dq_out.head(tq, h, d, bi, hi);
                let lse = &x.lse[(bi * h + hi) * tq..(bi * h + hi + 1) * tq];
                for block in 0..shape.blocks() {
                    let i0 = block * QUERY_BLOCK;
                    let rows = QUERY_BLOCK.min(tq - i0);
                    let span = shape.block_keys(i0, rows);
                    let keys = span.len();
                    if keys == 0 {
                        continue; // these queries saw nothing: their dq rows stay 0
                    }
                    probs.resize(rows * keys, 0.0);
                    dprobs.resize(rows * keys, 0.0);
                    let (p_out, p) = scratch(probs, keys);
                    let (dp_out, dp) = scratch(dprobs, keys);
                    let (q_blk, g_blk) = (rows_from(qm, i0), rows_from(gm, i0));
                    let (k_blk, v_blk) = (rows_from(km, span.start), rows_from(vm, span.start));
                    let (dk_blk, dv_blk) = (dkm.rows_from(span.start), dvm.rows_from(span.start));
                    // SAFETY (the products below): every operand is inside its buffer with these
                    // sizes and strides; this task alone writes head (bi, kvh) of dk and dv, the
                    // heads of its group of dq, and its own scratch.
                    unsafe { product(rows, keys, d, p_out, false, q_blk, k_blk.t(), scale) };
                    let block_bias = &bias[span.clone()];
                    for (r, row) in probs.chunks_exact_mut(keys).enumerate() {
                        let seen = relative(shape.visible(i0 + r), span.start);
                        recompute_probs(row, block_bias, seen, lse[i0 + r]);
                    }
                    unsafe { product(keys, dv, rows, dv_blk, true, p.t(), g_blk, 1.0) };
                    unsafe { product(rows, keys, dv, dp_out, false, g_blk, v_blk.t(), 1.0) };
                    for (dp_row, p_row) in
                        dprobs.chunks_exact_mut(keys).zip(probs.chunks_exact(keys))
                    {
                        scores_grad_row(dp_row, p_row, scale);
                    }
                    unsafe { product(rows, d, keys, dqm.rows_from(i0), false, dp, k_blk, 1.0) };
                    unsafe { product(keys, d, rows, dk_blk, true, dp.t(), q_blk, 1.0) };
                }
            }
        };
        let work = b * h * tq * tk * (d + dv);
        if b * kh == 1 || work < PARALLEL_MIN_WORK {
            let mut buf = (Vec::new(), Vec::new());
            (0..b * kh).for_each(|bkv| task(&mut buf, bkv));
        } else {
            (0..b * kh)
                .into_par_iter()
                .for_each_init(|| (Vec::new(), Vec::new()), task);
        }
        (dq, dk, dvv)
    }

    multiversion! {
        /// One query's probabilities in place over `row` (its scaled scores against the block's
        /// keys): the key bias added over the keys it sees (`seen`), zeros elsewhere; max, exp,
        /// normalize. Returns the logsumexp, `+inf` when no key is seen (the row is then 0).
        fn softmax_row(row: &mut [f32], bias: &[f32], seen: Range<usize>) -> f32 {
            let seen = seen.start.min(row.len())..seen.end.min(row.len());
            row[..seen.start].fill(0.0);
            row[seen.end..].fill(0.0);
            let head = &mut row[seen.clone()];
            for (s, &b) in head.iter_mut().zip(&bias[seen]) {
                *s += b;
            }
            let max = lane_max(head);
            if max == f32::NEG_INFINITY {
                head.fill(0.0);
                return f32::INFINITY;
            }
            for s in head.iter_mut() {
                *s = exp(*s - max);
            }
            let sum = lane_sum(head);
            let inv = 1.0 / sum;
            for s in head.iter_mut() {
                *s *= inv;
            }
            max + sum.ln()
        }
    }

    multiversion! {
        /// The probabilities of one query again, from its scaled scores in `row`:
        /// `exp(s + bias − lse)` over the keys it sees (`seen`), zeros elsewhere.
        fn recompute_probs(row: &mut [f32], bias: &[f32], seen: Range<usize>, lse: f32) {
            let seen = seen.start.min(row.len())..seen.end.min(row.len());
            row[..seen.start].fill(0.0);
            row[seen.end..].fill(0.0);
            for (s, &b) in row[seen.clone()].iter_mut().zip(&bias[seen]) {
                *s = exp(*s + b - lse);
            }
        }
    }

    multiversion! {
        /// `dS = P ⊙ (dP − D) · scale` in place over `dp`, with `D = Σ P ⊙ dP` over the row.
        /// FlashAttention computes `D` as `Σ dO ⊙ O` (the same number: it never holds a whole
        /// row of `dP`); from the row, as the softmax's own backward does, a query that sees
        /// one key gets exactly `dS = 0`, not the rounding of two different sums.
        fn scores_grad_row(dp: &mut [f32], p: &[f32], scale: f32) {
            let d = lane_dot(p, dp);
            for (g, &p) in dp.iter_mut().zip(p) {
                *g = p * (*g - d) * scale;
            }
        }
    }
}
