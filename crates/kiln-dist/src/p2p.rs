//! Point-to-point transfers between neighbouring pipeline stages (Megatron's
//! `p2p_communication`): a micro-batch's activation `[batch, seq, d]` forward, its gradient
//! backward, as f32 on the host whatever the compute dtype (exact for f16 and bf16).
//!
//! Each transfer is a header (the micro-batch's position in the step and the tensor's dims),
//! then the values. The receiver checks the header against the micro-batch its
//! [`plan`](crate::pipeline::plan) expects, so two stages that run different schedules or
//! different micro-batches fail with [`DistError::StageMismatch`] instead of mixing tensors.

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::error::{DistError, Result};
use crate::process_group::ProcessGroup;
use crate::tensor::to_host;

/// What a transfer carries; also its message tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// A stage's output, to the next stage.
    Activation = 1,
    /// The gradient of a stage's input, to the previous stage.
    Gradient = 2,
}

/// Header of a transfer: the micro-batch's position in the step and the tensor's `[b, s, d]`.
const HEADER: usize = 4 * 8;

/// Transfers of `[b, s, d]` tensors between the stages of a pipeline group.
pub struct StageLink<'a> {
    group: &'a ProcessGroup,
    dtype: DType,
    device: &'a Device,
}

impl<'a> StageLink<'a> {
    /// Transfers within `group` (the pipeline group); received tensors come back in `dtype` on
    /// `device`.
    pub fn new(group: &'a ProcessGroup, dtype: DType, device: &'a Device) -> Self {
        Self {
            group,
            dtype,
            device,
        }
    }

    /// Sends micro-batch `position`'s `tensor` to stage `to`.
    pub fn send(
        &self,
        to: usize,
        message: Message,
        position: usize,
        tensor: Tensor<3>,
    ) -> Result<()> {
        let (header, values) = encode(position, tensor)?;
        self.group
            .communicator()
            .send(&header, to, message as u16)?;
        self.group.send_f32(&values, to, message as u16)
    }

    /// Receives micro-batch `position`'s tensor from stage `from`.
    pub fn recv(&self, from: usize, message: Message, position: usize) -> Result<Tensor<3>> {
        let mut header = [0u8; HEADER];
        self.group
            .communicator()
            .recv(&mut header, from, message as u16)?;
        let dims = self.check(&header, from, position)?;
        let mut values = vec![0.0f32; dims.iter().product()];
        self.group.recv_f32(&mut values, from, message as u16)?;
        Ok(self.tensor(values, dims))
    }

    /// Sends `(position, tensor)` to `peer` while receiving the tensor of micro-batch
    /// `expected` from it (the steady phase of 1F1B, where two plain sends would wait on each
    /// other). Both sides learn both shapes first; the values then travel in buffers of the
    /// longer length, as `send_recv` wants.
    pub fn exchange(
        &self,
        peer: usize,
        (position, tensor): (usize, Tensor<3>),
        expected: usize,
    ) -> Result<Tensor<3>> {
        let comm = self.group.communicator();
        let (header, mut values) = encode(position, tensor)?;
        let mut theirs = [0u8; HEADER];
        comm.send_recv(&header, peer, &mut theirs, peer)?;
        let dims = self.check(&theirs, peer, expected)?;
        let len: usize = dims.iter().product();
        let longest = len.max(values.len());
        values.resize(longest, 0.0);
        let mut received = vec![0.0f32; longest];
        comm.send_recv(
            bytemuck::cast_slice(&values),
            peer,
            bytemuck::cast_slice_mut(&mut received),
            peer,
        )?;
        received.truncate(len);
        Ok(self.tensor(received, dims))
    }

    /// The dims of a received header, which must be for micro-batch `expected`.
    fn check(&self, header: &[u8; HEADER], from: usize, expected: usize) -> Result<[usize; 3]> {
        let word = |k: usize| {
            u64::from_le_bytes(header[8 * k..8 * k + 8].try_into().expect("8 bytes")) as usize
        };
        let (received, shape) = (word(0), [word(1), word(2), word(3)]);
        let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if received != expected || elements.is_none() {
            return Err(DistError::StageMismatch {
                stage: self.group.rank(),
                from,
                expected,
                received,
                shape,
            });
        }
        Ok(shape)
    }

    /// The received values in the compute dtype (`from_data` without a dtype would take the
    /// device's default, f32).
    fn tensor(&self, values: Vec<f32>, dims: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(values, dims), (self.device, self.dtype))
    }
}

/// The header and the f32 values of a tensor.
fn encode(position: usize, tensor: Tensor<3>) -> Result<([u8; HEADER], Vec<f32>)> {
    let [b, s, d] = tensor.dims();
    let mut header = [0u8; HEADER];
    for (k, word) in [position, b, s, d].into_iter().enumerate() {
        header[8 * k..8 * k + 8].copy_from_slice(&(word as u64).to_le_bytes());
    }
    Ok((header, to_host(tensor)?))
}
