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
    /// First element in the buffer.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

/// Every float parameter of a model, in visiting order.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// The parameters.
    pub slots: Vec<Slot>,
    /// Elements in all.
    pub len: usize,
}

impl Layout {
    /// The layout of `model`'s float parameters.
    pub fn of<M: Module>(model: &M) -> Self {
        #[derive(Default)]
        struct Collect {
            stack: Vec<String>,
            slots: Vec<Slot>,
            len: usize,
        }
        impl ModuleVisitor for Collect {
            fn enter_module(&mut self, name: &str, _container_type: &str) {
                self.stack.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container_type: &str) {
                self.stack.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let shape = param.val().dims().to_vec();
                let len = shape.iter().product();
                self.slots.push(Slot {
                    id: param.id,
                    path: self.stack.join("."),
                    shape,
                    dtype: param.val().dtype(),
                    offset: self.len,
                    len,
                });
                self.len += len;
            }
        }
        let mut collect = Collect::default();
        model.visit(&mut collect);
        Self {
            slots: collect.slots,
            len: collect.len,
        }
    }

    /// One line per parameter, `path [shape] dtype`: what the ranks compare to check they
    /// hold the same model.
    pub fn describe(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| format!("{} {:?} {:?}", s.path, s.shape, s.dtype))
            .collect()
    }
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
            let slot = &self.layout.slots[self.index];
            self.index += 1;
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

/// `model` with the parameters for which `keep(slot index)` is false replaced by their values
/// in `values`: same ids, devices, dtypes and gradient requirements.
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
            let index = self.index;
            self.index += 1;
            if !(self.replace)(index) {
                return param;
            }
            let slot = &self.layout.slots[index];
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

/// Takes every gradient out of `grads` into a flat buffer (zeros where a parameter has none),
/// with which parameters had one.
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
            let slot = &self.layout.slots[self.index];
            if let Some(grad) = self.grads.remove::<D>(param.id) {
                match to_host(grad) {
                    Ok(v) => self.out[slot.offset..slot.offset + slot.len].copy_from_slice(&v),
                    Err(e) => self.error = self.error.take().or(Some(e)),
                }
                self.present[self.index] = true;
            }
            self.index += 1;
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
            let index = self.index;
            self.index += 1;
            if !self.present[index] {
                return;
            }
            let slot = &self.layout.slots[index];
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
