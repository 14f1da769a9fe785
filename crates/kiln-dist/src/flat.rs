//! A model's float parameters (or their gradients) as one flat f32 buffer, in the module's
//! visiting order: the form collectives move. Every rank builds the same [`Layout`] from the
//! same model, so offsets agree without being exchanged.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor};

use crate::error::{DistError, Result};
use crate::tensor::{from_host, to_host};

/// Where one float parameter lies in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    /// The parameter's id.
    pub id: ParamId,
    /// Its dotted module path (`blocks.0.attn.query.weight`).
    pub path: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its dtype.
    pub dtype: DType,
    /// Whether it trains (requires a gradient); a frozen parameter (a LoRA base) does not.
    pub trainable: bool,
    /// First element in the buffer.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

/// Float parameters of a model in visiting order: every one ([`Layout::of`]), or only those
/// that train ([`Layout::trainable`]: what gradients, optimizer shards and their updates
/// move when the rest is frozen).
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// The parameters in the buffer.
    pub slots: Vec<Slot>,
    /// Elements in all.
    pub len: usize,
    /// For each float parameter the model visits, in order, its slot (`None`: not in this
    /// layout).
    pub by_visit: Vec<Option<usize>>,
}

impl Layout {
    /// The layout of all of `model`'s float parameters.
    pub fn of<M: Module>(model: &M) -> Self {
        Self::build(model, |_| true)
    }

    /// The layout of the float parameters of `model` that train; the same as
    /// [`of`](Self::of) when none is frozen.
    pub fn trainable<M: Module>(model: &M) -> Self {
        Self::build(model, |trainable| trainable)
    }

    /// The layout of the frozen float parameters of `model` (empty when none is).
    pub fn frozen<M: Module>(model: &M) -> Self {
        Self::build(model, |trainable| !trainable)
    }

    fn build<M: Module>(model: &M, keep: impl Fn(bool) -> bool) -> Self {
        #[derive(Default)]
        struct Collect {
            stack: Vec<String>,
            params: Vec<(ParamId, String, Vec<usize>, DType)>,
        }
        impl ModuleVisitor for Collect {
            fn enter_module(&mut self, name: &str, _container_type: &str) {
                self.stack.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container_type: &str) {
                self.stack.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let value = param.val();
                self.params.push((
                    param.id,
                    self.stack.join("."),
                    value.dims().to_vec(),
                    value.dtype(),
                ));
            }
        }
        let mut collect = Collect::default();
        model.visit(&mut collect);
        let trainable = trainable_flags(model);
        let mut layout = Self {
            slots: Vec::new(),
            len: 0,
            by_visit: Vec::with_capacity(collect.params.len()),
        };
        for ((id, path, shape, dtype), trainable) in collect.params.into_iter().zip(trainable) {
            if !keep(trainable) {
                layout.by_visit.push(None);
                continue;
            }
            let len = shape.iter().product();
            layout.by_visit.push(Some(layout.slots.len()));
            layout.slots.push(Slot {
                id,
                path,
                shape,
                dtype,
                trainable,
                offset: layout.len,
                len,
            });
            layout.len += len;
        }
        layout
    }

    /// The slot of the `index`-th float parameter visited, when it is in this layout.
    fn slot(&self, index: usize) -> Option<(usize, &Slot)> {
        let at = (*self.by_visit.get(index)?)?;
        Some((at, &self.slots[at]))
    }

    /// One line per parameter, `path [shape] dtype`: what the ranks compare to check they
    /// hold the same model.
    pub fn describe(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| {
                let frozen = if s.trainable { "" } else { " frozen" };
                format!("{} {:?} {:?}{frozen}", s.path, s.shape, s.dtype)
            })
            .collect()
    }
}

/// Whether each float parameter of `model`, in visiting order, trains. Read on the model's
/// training form: off an autodiff device a tensor never requires a gradient, but the
/// parameter keeps its setting for [`Module::train`].
pub fn trainable_flags<M: Module>(model: &M) -> Vec<bool> {
    struct Flags(Vec<bool>);
    impl ModuleVisitor for Flags {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().is_require_grad());
        }
    }
    let mut flags = Flags(Vec::new());
    model.clone().train().visit(&mut flags);
    flags.0
}

/// Every float parameter's values, flat.
pub fn read_params<M: Module>(model: &M, layout: &Layout) -> Result<Vec<f32>> {
    struct Read<'a> {
        out: Vec<f32>,
        layout: &'a Layout,
        index: usize,
        error: Option<DistError>,
    }
    impl ModuleVisitor for Read<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let found = self.layout.slot(self.index);
            self.index += 1;
            let Some((_, slot)) = found else {
                return;
            };
            match to_host(param.val()) {
                Ok(values) => {
                    self.out[slot.offset..slot.offset + slot.len].copy_from_slice(&values)
                }
                Err(e) => self.error = self.error.take().or(Some(e)),
            }
        }
    }
    let mut read = Read {
        out: vec![0.0; layout.len],
        layout,
        index: 0,
        error: None,
    };
    model.visit(&mut read);
    match read.error {
        Some(e) => Err(e),
        None => Ok(read.out),
    }
}

/// `model` with the parameters of the layout's slots for which `replace(slot index)` is true
/// replaced by their values in `values`: same ids, devices, dtypes and gradient requirements.
pub fn write_params<M: Module>(
    model: M,
    layout: &Layout,
    values: &[f32],
    replace: impl Fn(usize) -> bool,
) -> M {
    struct Write<'a, F> {
        layout: &'a Layout,
        values: &'a [f32],
        replace: F,
        index: usize,
    }
    impl<F: Fn(usize) -> bool> ModuleMapper for Write<'_, F> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let found = self.layout.slot(self.index);
            self.index += 1;
            let Some((at, slot)) = found else {
                return param;
            };
            if !(self.replace)(at) {
                return param;
            }
            let values = &self.values[slot.offset..slot.offset + slot.len];
            param.map(|t| {
                let fresh = from_host(values.to_vec(), &slot.shape, slot.dtype, &t);
                if t.is_require_grad() {
                    fresh.require_grad()
                } else {
                    fresh
                }
            })
        }
    }
    model.map(&mut Write {
        layout,
        values,
        replace,
        index: 0,
    })
}

/// Takes the gradients of the layout's parameters out of `grads` into a flat buffer (zeros
/// where a parameter has none), with which slots had one.
pub fn take_grads<M: Module>(
    model: &M,
    layout: &Layout,
    grads: &mut GradientsParams,
) -> Result<(Vec<f32>, Vec<bool>)> {
    struct Take<'a> {
        grads: &'a mut GradientsParams,
        layout: &'a Layout,
        out: Vec<f32>,
        present: Vec<bool>,
        index: usize,
        error: Option<DistError>,
    }
    impl ModuleVisitor for Take<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let found = self.layout.slot(self.index);
            self.index += 1;
            let Some((at, slot)) = found else {
                return;
            };
            if let Some(grad) = self.grads.remove::<D>(param.id) {
                match to_host(grad) {
                    Ok(v) => self.out[slot.offset..slot.offset + slot.len].copy_from_slice(&v),
                    Err(e) => self.error = self.error.take().or(Some(e)),
                }
                self.present[at] = true;
            }
        }
    }
    let mut take = Take {
        grads,
        layout,
        out: vec![0.0; layout.len],
        present: vec![false; layout.slots.len()],
        index: 0,
        error: None,
    };
    model.visit(&mut take);
    match take.error {
        Some(e) => Err(e),
        None => Ok((take.out, take.present)),
    }
}

/// Registers the gradients of the parameters marked `present` from the flat buffer, as f32
/// tensors on each parameter's device (gradients of f32 master weights).
pub fn put_grads<M: Module>(
    model: &M,
    layout: &Layout,
    values: &[f32],
    present: &[bool],
    grads: &mut GradientsParams,
) {
    struct Put<'a> {
        grads: &'a mut GradientsParams,
        layout: &'a Layout,
        values: &'a [f32],
        present: &'a [bool],
        index: usize,
    }
    impl ModuleVisitor for Put<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let found = self.layout.slot(self.index);
            self.index += 1;
            let Some((at, slot)) = found else {
                return;
            };
            if !self.present[at] {
                return;
            }
            let values = &self.values[slot.offset..slot.offset + slot.len];
            let grad = from_host(values.to_vec(), &slot.shape, DType::F32, &param.val()).inner();
            self.grads.register::<D>(param.id, grad);
        }
    }
    model.visit(&mut Put {
        grads,
        layout,
        values,
        present,
        index: 0,
    });
}
