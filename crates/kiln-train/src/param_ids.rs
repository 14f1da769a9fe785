//! Parameter ids that are the same in every process.
//!
//! Burn draws a random `ParamId` for each parameter when a module is built, and keys optimizer
//! state by it. A run resumed in a new process builds its model again, so its ids would no
//! longer match the saved optimizer state. Deriving each id from the parameter's module path
//! makes them stable: the same model always gets the same ids.

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{Bool, Int, Tensor};

/// Replaces every parameter id of `module` by a hash of its module path
/// (`blocks.0.attn.query.weight` → a fixed 64-bit id).
pub fn stable_param_ids<M: Module>(module: M) -> M {
    module.map(&mut PathIds::default())
}

/// FNV-1a of the path: stable across processes, platforms and Rust versions.
fn path_id(path: &[String]) -> ParamId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            hash = (hash ^ u64::from(b'.')).wrapping_mul(0x0000_0100_0000_01b3);
        }
        for byte in part.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    ParamId::from(hash)
}

#[derive(Default)]
struct PathIds {
    path: Vec<String>,
}

impl PathIds {
    fn id(&self) -> ParamId {
        path_id(&self.path)
    }
}

impl ModuleMapper for PathIds {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (_, value, mapper) = param.consume();
        Param::from_mapped_value(self.id(), value, mapper)
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        let (_, value, mapper) = param.consume();
        Param::from_mapped_value(self.id(), value, mapper)
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        let (_, value, mapper) = param.consume();
        Param::from_mapped_value(self.id(), value, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{ModuleVisitor, ParamId};
    use kiln_model::gpt::GptConfig;

    #[derive(Default)]
    struct Ids(Vec<ParamId>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }

    fn ids<M: Module>(m: &M) -> Vec<ParamId> {
        let mut v = Ids::default();
        m.visit(&mut v);
        v.0
    }

    #[test]
    fn two_builds_of_a_model_get_the_same_distinct_ids() {
        let device = burn::tensor::Device::flex();
        let config = GptConfig::new(11)
            .with_block_size(8)
            .with_n_layer(2)
            .with_n_head(2)
            .with_d_model(8);
        let a = config.init(&device).unwrap();
        let b = config.init(&device).unwrap();
        assert_ne!(ids(&a), ids(&b), "Burn draws random ids");
        let (a, b) = (stable_param_ids(a), stable_param_ids(b));
        assert_eq!(ids(&a), ids(&b));
        let mut unique = ids(&a);
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids(&a).len(), "ids must stay distinct");
    }
}
