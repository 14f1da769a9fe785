//! Tensors to the host and back, and the collectives on Burn tensors: kiln's engines move host
//! memory, so every tensor crosses as f32 values ([`to_host`], exact for f16 and bf16) and
//! comes back on its device with its dtype ([`from_host`]). Every kiln-dist module converts
//! through these two.

use burn::tensor::{DType, Tensor, TensorData};

use crate::communicator::ReduceOp;
use crate::error::{DistError, Result};
use crate::process_group::ProcessGroup;

/// A tensor's values as f32, whatever its dtype.
pub fn to_host<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    data_to_host(tensor.into_data())
}

/// [`to_host`] of data already read back (a backend primitive's, inside an operation).
pub(crate) fn data_to_host(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| DistError::Tensor(format!("{e:?}")))
}

/// A tensor of `shape` and `dtype` on the device of `like`, from f32 values. (The dtype goes
/// with the device: `Tensor::from_data` on a device alone makes the device's default float,
/// f32, whatever the data's dtype.)
pub fn from_host<const D: usize>(
    values: Vec<f32>,
    shape: &[usize],
    dtype: DType,
    like: &Tensor<D>,
) -> Tensor<D> {
    let data = TensorData::new(values, shape.to_vec());
    Tensor::from_data(data, (&like.device(), dtype))
}

fn host<const D: usize>(tensor: &Tensor<D>) -> Result<Vec<f32>> {
    to_host(tensor.clone())
}

fn back<const D: usize>(values: Vec<f32>, shape: Vec<usize>, like: &Tensor<D>) -> Tensor<D> {
    from_host(values, &shape, like.dtype(), like)
}

impl ProcessGroup {
    /// The elementwise reduction of every rank's `tensor` (all of one shape).
    pub fn all_reduce_tensor<const D: usize>(
        &self,
        tensor: Tensor<D>,
        op: ReduceOp,
    ) -> Result<Tensor<D>> {
        let mut values = host(&tensor)?;
        self.all_reduce_f32(&mut values, op)?;
        Ok(back(values, tensor.dims().to_vec(), &tensor))
    }

    /// Rank `root`'s `tensor` on every rank (every rank passes one of that shape).
    pub fn broadcast_tensor<const D: usize>(
        &self,
        tensor: Tensor<D>,
        root: usize,
    ) -> Result<Tensor<D>> {
        let mut values = host(&tensor)?;
        self.broadcast_f32(&mut values, root)?;
        Ok(back(values, tensor.dims().to_vec(), &tensor))
    }

    /// Every rank's `tensor` (all of one shape) concatenated along dimension `dim`, in rank
    /// order.
    pub fn all_gather_tensor<const D: usize>(
        &self,
        tensor: Tensor<D>,
        dim: usize,
    ) -> Result<Tensor<D>> {
        let values = host(&tensor)?;
        let mut all = vec![0.0; values.len() * self.size()];
        self.all_gather_f32(&values, &mut all)?;
        let parts: Vec<Tensor<D>> = all
            .chunks(values.len().max(1))
            .take(self.size())
            .map(|chunk| back(chunk.to_vec(), tensor.dims().to_vec(), &tensor))
            .collect();
        Ok(Tensor::cat(parts, dim))
    }

    /// Reduces every rank's `tensor` and leaves block `rank` of dimension `dim` (whose size
    /// must divide by the group size) on this rank.
    pub fn reduce_scatter_tensor<const D: usize>(
        &self,
        tensor: Tensor<D>,
        dim: usize,
        op: ReduceOp,
    ) -> Result<Tensor<D>> {
        let size = self.size();
        let dims = tensor.dims();
        if dim >= D || !dims[dim].is_multiple_of(size) {
            return Err(DistError::InvalidArgument(format!(
                "reduce_scatter along dimension {dim} of {dims:?}: not divisible by {size} ranks"
            )));
        }
        // Blocks of dimension `dim` must be contiguous: move it to the front.
        let blocks: Vec<Tensor<D>> = tensor.clone().chunk(size, dim);
        let send: Vec<f32> = blocks
            .iter()
            .map(host)
            .collect::<Result<Vec<_>>>()?
            .concat();
        let mut mine = vec![0.0; send.len() / size];
        self.reduce_scatter_f32(&send, &mut mine, op)?;
        let shape = blocks[0].dims().to_vec();
        Ok(back(mine, shape, &tensor))
    }
}
