//! Counting exact zeros, per parameter and in total.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// How sparse one float parameter is.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSparsity {
    /// The parameter's path in the module (`blocks.0.attn.query.weight`).
    pub path: String,
    /// Number of elements.
    pub numel: usize,
    /// Number of elements exactly equal to zero.
    pub zeros: usize,
}

impl ParamSparsity {
    /// `zeros / numel` (0 for an empty tensor).
    pub fn fraction(&self) -> f64 {
        if self.numel == 0 {
            0.0
        } else {
            self.zeros as f64 / self.numel as f64
        }
    }
}

struct ZeroCounter {
    path: Vec<String>,
    rows: Vec<ParamSparsity>,
}

impl ModuleVisitor for ZeroCounter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let numel = tensor.shape().num_elements();
        let zeros: i64 = tensor.equal_elem(0.0).int().sum().into_scalar();
        self.rows.push(ParamSparsity {
            path: self.path.join("."),
            numel,
            zeros: zeros as usize,
        });
    }
}

/// The sparsity of every float parameter of `module`, in visiting order.
pub fn sparsity<M: Module>(module: &M) -> Vec<ParamSparsity> {
    let mut counter = ZeroCounter {
        path: Vec::new(),
        rows: Vec::new(),
    };
    module.visit(&mut counter);
    counter.rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    #[derive(Module, Debug)]
    struct Two {
        first: Linear,
        second: Linear,
    }

    #[test]
    fn counts_exact_zeros_per_parameter_with_paths() {
        let device = Device::flex();
        let mut first = LinearConfig::new(2, 2).init(&device);
        first.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.0f32, 1.0, 0.0, 1e-9], [2, 2]),
            &device,
        ));
        let model = Two {
            first,
            second: LinearConfig::new(2, 3).with_bias(false).init(&device),
        };
        let rows = sparsity(&model);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].path, "first.weight");
        assert_eq!((rows[0].numel, rows[0].zeros), (4, 2));
        assert_eq!(rows[0].fraction(), 0.5);
        assert_eq!(rows[1].path, "first.bias");
        assert_eq!(rows[2].path, "second.weight");
        assert_eq!(rows[2].zeros, 0);
    }
}
