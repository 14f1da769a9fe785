//! Float parameters by path: reading them to the host and rewriting them in place.
//!
//! Paths are the ones Burn's module visitor produces (`blocks.0.attn.query.weight`), the same
//! names [`sparsity`](crate::sparsity) reports and the masks are keyed by.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use kiln_model::linear::map_leaf;

/// One float parameter copied to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedParam {
    /// The parameter's path in the module.
    pub path: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<f32>,
}

/// Which parameters a pruning method looks at: `(path, shape) -> bool`.
pub type ParamFilter<'a> = dyn Fn(&str, &[usize]) -> bool + 'a;

/// The default filter: the weight matrices of linear layers (rank 2, named `weight`), not the
/// embeddings (`token_embedding`, `position_embedding`), which are lookup tables rather than
/// matrix products and hold most of a small model's sensitivity.
pub fn linear_weights(path: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && path.ends_with(".weight") && !path.contains("embedding")
}

struct Reader<'a> {
    path: Vec<String>,
    filter: &'a ParamFilter<'a>,
    out: Vec<NamedParam>,
}

impl ModuleVisitor for Reader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.join(".");
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        if (self.filter)(&path, &shape) {
            let values = tensor
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default();
            self.out.push(NamedParam {
                path,
                shape,
                values,
            });
        }
    }
}

/// Copies the float parameters that pass `filter` to the host, in visiting order.
pub fn read_params<M: Module>(module: &M, filter: &ParamFilter<'_>) -> Vec<NamedParam> {
    let mut reader = Reader {
        path: Vec::new(),
        filter,
        out: Vec::new(),
    };
    module.visit(&mut reader);
    reader.out
}

struct Shapes {
    path: Vec<String>,
    out: Vec<(String, Vec<usize>)>,
}

impl ModuleVisitor for Shapes {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out
            .push((self.path.join("."), param.lazy_shape().as_slice().to_vec()));
    }
}

/// The path and shape of every float parameter, in visiting order, without drawing a lazily
/// initialized one: what a loader checks a file against before filling the model.
pub(crate) fn param_shapes<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut shapes = Shapes {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut shapes);
    shapes.out
}

/// How [`write_params`] combines the stored values with the parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// The parameter becomes the given values.
    Replace,
    /// The parameter is multiplied element-wise by the given values (a mask).
    Multiply,
}

struct Writer<'a> {
    path: Vec<String>,
    values: &'a BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    mode: WriteMode,
}

impl ModuleMapper for Writer<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let Some((shape, values)) = self.values.get(&path) else {
            return param;
        };
        let mode = self.mode;
        param.map(|tensor| {
            let device = tensor.device();
            // Computed off the autodiff graph: the result is a fresh leaf, as after an
            // optimizer step, not a node hanging off the previous step's graph.
            map_leaf(tensor, |tensor| {
                let given =
                    Tensor::<D>::from_data(TensorData::new(values.clone(), shape.clone()), &device)
                        .without_autodiff();
                match mode {
                    WriteMode::Replace => given,
                    WriteMode::Multiply => tensor * given,
                }
            })
        })
    }
}

/// Rewrites the parameters named in `values` (path -> (shape, values)); the caller has checked
/// the shapes. Parameter ids are kept, so optimizer state still matches.
pub(crate) fn write_params<M: Module>(
    module: M,
    values: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    mode: WriteMode,
) -> M {
    let mut writer = Writer {
        path: Vec::new(),
        values,
        mode,
    };
    module.map(&mut writer)
}
