//! The same small models on flex (CPU) and on a GPU backend: forward outputs and one AdamW
//! training step must agree (`kiln::device::parity`). CI runs it on software Vulkan (Mesa's
//! lavapipe, `wgpu:cpu`); `KILN_PARITY_DEVICE` names another device (`cuda`, `vulkan`, `wgpu`
//! on a GPU machine). Compiled only with a GPU backend's feature.
#![cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda"))]

use kiln::device::{describe, from_name, parity};

fn device_name() -> String {
    std::env::var("KILN_PARITY_DEVICE").unwrap_or_else(|_| "wgpu:cpu".into())
}

#[test]
fn gpt_step_and_bert_forward_match_flex() {
    let name = device_name();
    let device = from_name(&name).unwrap_or_else(|e| panic!("{e}"));
    let adapter = describe(&device).unwrap();
    eprintln!("parity against {name}: {adapter}");
    let parity = parity::measure(&device).unwrap();
    eprintln!("{parity:?}");
    assert!(parity.failures().is_empty(), "{:?}", parity.failures());
}

/// A software rasterizer is never handed out as a GPU: on CI's machine (lavapipe only)
/// `wgpu` must be refused by name while `wgpu:cpu` opens lavapipe.
#[cfg(feature = "wgpu")]
#[test]
fn a_software_adapter_is_not_handed_out_as_a_gpu() {
    use kiln::device::{AdapterKind, DeviceError};
    let cpu = from_name("wgpu:cpu").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(describe(&cpu).unwrap().kind, AdapterKind::Software);
    match from_name("wgpu") {
        Ok(gpu) => assert_eq!(describe(&gpu).unwrap().kind, AdapterKind::Gpu),
        Err(err) => {
            assert!(matches!(err, DeviceError::SoftwareAdapter { .. }), "{err}");
            assert!(err.to_string().contains("wgpu:cpu"), "{err}");
        }
    }
}
