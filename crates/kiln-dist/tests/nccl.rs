//! NCCL against MPI, on a machine with one GPU per rank (feature `nccl`). Not run by CI, which
//! has no GPU; `scripts/gpu_check.sh` runs it: `mpirun -np 2 <this test> --ignored`.

#![cfg(feature = "nccl")]

use std::sync::Arc;

use kiln_dist::{NcclCommunicator, ProcessGroup, ReduceOp};

#[test]
#[ignore = "needs GPUs and mpirun: scripts/gpu_check.sh"]
fn nccl_collectives_equal_mpis() {
    let mpi = ProcessGroup::from_env().expect("launched by mpirun");
    assert!(mpi.size() > 1, "run under mpirun -np 2 or more");
    let nccl = NcclCommunicator::new(&mpi, mpi.local_rank()).expect("NCCL initializes");
    let nccl = ProcessGroup::with_communicator(Arc::new(nccl), mpi.local_rank());
    let r = mpi.rank() as f32;
    let values: Vec<f32> = (0..1 << 20).map(|i| (i as f32 * 1e-3 + r).sin()).collect();
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
        let (mut a, mut b) = (values.clone(), values.clone());
        mpi.all_reduce_f32(&mut a, op).unwrap();
        nccl.all_reduce_f32(&mut b, op).unwrap();
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "{op:?}: NCCL and MPI differ by {worst}");
    }
    let mut bytes = if mpi.is_main() {
        b"nccl".to_vec()
    } else {
        vec![0; 4]
    };
    nccl.broadcast_bytes(&mut bytes, 0).unwrap();
    assert_eq!(bytes, b"nccl");
    let mut gathered = vec![0.0f32; mpi.size()];
    nccl.all_gather_f32(&[r], &mut gathered).unwrap();
    assert_eq!(
        gathered,
        (0..mpi.size()).map(|q| q as f32).collect::<Vec<_>>()
    );
    assert_eq!(nccl.communicator().backend(), "nccl");
}
