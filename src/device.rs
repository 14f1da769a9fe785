//! Choosing a Burn [`Device`] by name, so programs take the backend as a flag or from the
//! `KILN_DEVICE` environment variable instead of hard-coding it.
//!
//! | name | backend | Cargo feature |
//! |---|---|---|
//! | `flex` (or `cpu`) | Burn's pure-Rust CPU backend | `flex` (default) |
//! | `wgpu`, `wgpu:N`, `wgpu:cpu` | WGSL through wgpu (Vulkan, Metal, DX12) | `wgpu` |
//! | `vulkan`, `vulkan:N` | cubecl's SPIR-V on Vulkan | `vulkan` |
//! | `metal`, `metal:N` | Metal | `metal` |
//! | `cuda`, `cuda:N` | CUDA | `cuda` |
//! | `auto` | the first compiled of cuda, metal, vulkan, wgpu, flex | |

use burn::tensor::Device;

/// The environment variable [`from_env`] reads.
pub const DEVICE_ENV: &str = "KILN_DEVICE";

/// Why a device name could not be turned into a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The name is not one kiln knows.
    #[error(
        "unknown device `{0}` (expected flex, cpu, wgpu, vulkan, metal, cuda, optionally with :N, or auto)"
    )]
    Unknown(String),
    /// The backend exists but this binary was built without it.
    #[error(
        "device `{name}` needs kiln's `{feature}` Cargo feature, which this build does not have"
    )]
    NotCompiled {
        /// The name asked for.
        name: String,
        /// The feature to enable.
        feature: &'static str,
    },
    /// The index after `:` is not a number.
    #[error("bad device index in `{0}`")]
    BadIndex(String),
    /// No backend at all was compiled in.
    #[error(
        "no backend was compiled in: enable one of kiln's features flex, wgpu, vulkan, metal, cuda"
    )]
    NoBackend,
}

/// Parses `name` (see the module docs) into a device.
pub fn from_name(name: &str) -> Result<Device, DeviceError> {
    let name = name.trim().to_ascii_lowercase();
    let (backend, index) = match name.split_once(':') {
        Some((backend, index)) => (backend, Some(index)),
        None => (name.as_str(), None),
    };
    let number = || -> Result<usize, DeviceError> {
        index
            .map(|i| i.parse().map_err(|_| DeviceError::BadIndex(name.clone())))
            .unwrap_or(Ok(0))
    };
    let not_compiled = |feature| DeviceError::NotCompiled {
        name: name.clone(),
        feature,
    };
    match backend {
        "auto" if index.is_none() => auto(),
        "flex" | "cpu" if index.is_none() => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[cfg(not(feature = "flex"))]
            return Err(not_compiled("flex"));
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            return Ok(Device::wgpu(gpu_kind(index, &name)?));
            #[cfg(not(feature = "wgpu"))]
            return Err(not_compiled("wgpu"));
        }
        "vulkan" => {
            #[cfg(feature = "vulkan")]
            return Ok(Device::vulkan(gpu_kind(index, &name)?));
            #[cfg(not(feature = "vulkan"))]
            return Err(not_compiled("vulkan"));
        }
        "metal" => {
            #[cfg(feature = "metal")]
            return Ok(Device::metal(gpu_kind(index, &name)?));
            #[cfg(not(feature = "metal"))]
            return Err(not_compiled("metal"));
        }
        "cuda" => {
            let index = number()?;
            #[cfg(feature = "cuda")]
            return Ok(Device::cuda(index));
            #[cfg(not(feature = "cuda"))]
            {
                let _ = index;
                Err(not_compiled("cuda"))
            }
        }
        _ => Err(DeviceError::Unknown(name.clone())),
    }
}

/// The device named by `KILN_DEVICE`, or `auto` when it is unset.
pub fn from_env() -> Result<Device, DeviceError> {
    from_name(&std::env::var(DEVICE_ENV).unwrap_or_else(|_| "auto".into()))
}

/// A program's `--device` flag: the backend `name`, else `KILN_DEVICE`, else `flex` (the
/// examples' rule: nothing chosen means the CPU, whatever else is compiled in).
pub fn from_flag(name: Option<&str>) -> Result<Device, DeviceError> {
    match name {
        Some(name) => from_name(name),
        None => from_name(&std::env::var(DEVICE_ENV).unwrap_or_else(|_| "flex".into())),
    }
}

/// The most capable backend compiled in: cuda, then metal, vulkan, wgpu, and flex last.
pub fn auto() -> Result<Device, DeviceError> {
    #[cfg(feature = "cuda")]
    return Ok(Device::cuda(0));
    #[cfg(all(feature = "metal", not(feature = "cuda")))]
    return Ok(Device::metal(burn::tensor::DeviceKind::DefaultDevice));
    #[cfg(all(feature = "vulkan", not(any(feature = "cuda", feature = "metal"))))]
    return Ok(Device::vulkan(burn::tensor::DeviceKind::DefaultDevice));
    #[cfg(all(
        feature = "wgpu",
        not(any(feature = "cuda", feature = "metal", feature = "vulkan"))
    ))]
    return Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
    #[cfg(all(
        feature = "flex",
        not(any(
            feature = "cuda",
            feature = "metal",
            feature = "vulkan",
            feature = "wgpu"
        ))
    ))]
    return Ok(Device::flex());
    #[allow(unreachable_code)]
    Err(DeviceError::NoBackend)
}

/// `wgpu` -> the default adapter, `wgpu:N` -> discrete GPU N, `wgpu:cpu` -> a CPU adapter
/// (lavapipe), `wgpu:integrated` -> the first integrated GPU.
#[cfg(any(feature = "wgpu", feature = "vulkan", feature = "metal"))]
fn gpu_kind(index: Option<&str>, name: &str) -> Result<burn::tensor::DeviceKind, DeviceError> {
    use burn::tensor::DeviceKind;
    Ok(match index {
        None => DeviceKind::DefaultDevice,
        Some("cpu") => DeviceKind::Cpu,
        Some("integrated") => DeviceKind::IntegratedGpu(0),
        Some(i) => DeviceKind::DiscreteGpu(
            i.parse()
                .map_err(|_| DeviceError::BadIndex(name.to_owned()))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_and_cpu_name_the_flex_backend() {
        assert_eq!(from_name("flex").unwrap(), Device::flex());
        assert_eq!(from_name(" CPU ").unwrap(), Device::flex());
    }

    #[test]
    fn unknown_names_and_bad_indices_are_errors() {
        assert_eq!(from_name("tpu"), Err(DeviceError::Unknown("tpu".into())));
        assert_eq!(
            from_name("cuda:x"),
            Err(DeviceError::BadIndex("cuda:x".into()))
        );
        assert!(matches!(from_name("flex:1"), Err(DeviceError::Unknown(_))));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_backend_not_compiled_in_says_which_feature_to_enable() {
        let err = from_name("cuda:1").unwrap_err();
        assert_eq!(
            err,
            DeviceError::NotCompiled {
                name: "cuda:1".into(),
                feature: "cuda"
            }
        );
        assert!(err.to_string().contains("`cuda` Cargo feature"));
    }

    #[test]
    fn auto_prefers_a_compiled_gpu_backend_over_flex() {
        let device = auto().unwrap();
        if cfg!(any(
            feature = "cuda",
            feature = "metal",
            feature = "vulkan",
            feature = "wgpu"
        )) {
            assert_ne!(device, Device::flex());
        } else {
            assert_eq!(device, Device::flex());
        }
    }
}
