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
//! | `auto` | the first of cuda, metal, vulkan, wgpu that opens a GPU, else flex | |
//!
//! A name never silently becomes another device: `cuda` on a machine without a CUDA driver (or
//! with fewer GPUs than the index) is [`DeviceError::NoCuda`], and `wgpu`, `vulkan` or `metal`
//! whose runtime could only find a software rasterizer (lavapipe, llvmpipe, SwiftShader) is
//! [`DeviceError::SoftwareAdapter`]; `wgpu:cpu` asks for one on purpose. [`describe`] says what
//! a device turned out to be, for programs to print beside their figures.

use burn::tensor::Device;

pub mod parity;

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
    /// `cuda` was asked for, and the driver is missing, fails to start, or has no such GPU.
    #[error("device `{name}`: {why}")]
    NoCuda {
        /// The name asked for.
        name: String,
        /// What the driver said (or that `libcuda.so` is not installed).
        why: String,
    },
    /// A GPU was asked for and the runtime found only a software rasterizer, which would run
    /// every kernel on the CPU hundreds of times slower than flex.
    #[error(
        "device `{name}` opened the software adapter `{adapter}`, not a GPU (is the GPU's driver for this API installed? `{backend}:cpu` asks for the software one on purpose)"
    )]
    SoftwareAdapter {
        /// The name asked for.
        name: String,
        /// The backend part of the name.
        backend: String,
        /// What the adapter calls itself.
        adapter: String,
    },
    /// The backend's runtime could not open any device.
    #[error("device `{name}` could not be opened: {why}")]
    Unavailable {
        /// The name asked for.
        name: String,
        /// The runtime's own message.
        why: String,
    },
}

/// What a device turned out to be once opened: the line a program prints beside its figures,
/// so that a number measured on a software rasterizer can never pass for a GPU's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Adapter {
    /// What the device calls itself: `NVIDIA H100 80GB HBM3`, `llvmpipe (LLVM 15.0.6, 256
    /// bits)`, or `flex` for the CPU backend.
    pub name: String,
    /// What the runtime compiles kernels for (`ptx_sm90`, `spirv_4318_8454`); `None` on flex.
    pub compiles_for: Option<String>,
    /// A GPU, a software adapter, or the CPU backend.
    pub kind: AdapterKind,
}

/// Whether a device is real graphics hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// The flex CPU backend.
    Cpu,
    /// A GPU (a card with a bus address).
    Gpu,
    /// A GPU API emulated on the CPU (lavapipe, llvmpipe, SwiftShader).
    Software,
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            AdapterKind::Cpu => "cpu",
            AdapterKind::Gpu => "gpu",
            AdapterKind::Software => "software",
        };
        match &self.compiles_for {
            Some(target) => write!(f, "{} ({kind}, {target})", self.name),
            None => write!(f, "{} ({kind})", self.name),
        }
    }
}

/// Opens `device` and says what it is. Opening a GPU device starts its runtime (seconds on
/// first use); a runtime that cannot open one at all is [`DeviceError::Unavailable`].
pub fn describe(device: &Device) -> Result<Adapter, DeviceError> {
    #[cfg(any(
        feature = "wgpu",
        feature = "vulkan",
        feature = "metal",
        feature = "cuda"
    ))]
    {
        // cubecl's runtimes panic when no adapter exists; that is an answer here, not a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.identity()));
        match opened {
            Ok(Some(identity)) => {
                return Ok(Adapter {
                    kind: if identity.physical.is_some() {
                        AdapterKind::Gpu
                    } else {
                        AdapterKind::Software
                    },
                    name: identity.name,
                    compiles_for: Some(identity.fingerprint),
                });
            }
            Ok(None) => {}
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the runtime panicked".into());
                return Err(DeviceError::Unavailable {
                    name: format!("{device:?}"),
                    why,
                });
            }
        }
    }
    let _ = device;
    Ok(Adapter {
        name: "flex".into(),
        compiles_for: None,
        kind: AdapterKind::Cpu,
    })
}

/// `device` as [`from_name`] hands it out: a GPU name must have opened a GPU.
#[cfg(any(feature = "wgpu", feature = "vulkan", feature = "metal"))]
fn hardware(
    device: Device,
    name: &str,
    backend: &str,
    index: Option<&str>,
) -> Result<Device, DeviceError> {
    if index == Some("cpu") {
        return Ok(device);
    }
    let adapter = describe(&device).map_err(|e| match e {
        DeviceError::Unavailable { why, .. } => DeviceError::Unavailable {
            name: name.to_owned(),
            why,
        },
        e => e,
    })?;
    match adapter.kind {
        AdapterKind::Software => Err(DeviceError::SoftwareAdapter {
            name: name.to_owned(),
            backend: backend.to_owned(),
            adapter: adapter.name,
        }),
        _ => Ok(device),
    }
}

/// CUDA GPU `index`, once the driver has said it exists: cudarc panics on a machine without
/// `libcuda.so`, and a missing GPU would otherwise surface at the first kernel.
#[cfg(feature = "cuda")]
fn cuda(index: usize, name: &str) -> Result<Device, DeviceError> {
    use cudarc::driver::result;
    let no_cuda = |why: String| DeviceError::NoCuda {
        name: name.to_owned(),
        why,
    };
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(no_cuda(
            "no CUDA driver: libcuda.so was not found (is the NVIDIA driver installed, and its library on the loader's path?)".into(),
        ));
    }
    result::init().map_err(|e| no_cuda(format!("the CUDA driver did not start: {e}")))?;
    let count = result::device::get_count()
        .map_err(|e| no_cuda(format!("the CUDA driver could not count GPUs: {e}")))?;
    if index >= count.max(0) as usize {
        return Err(no_cuda(format!(
            "this machine has {count} CUDA GPU(s); index {index} does not exist"
        )));
    }
    Ok(Device::cuda(index))
}

/// Parses `name` (see the module docs) into a device. A GPU name is checked against what is
/// there: the CUDA driver is asked whether the GPU exists, and a wgpu/vulkan/metal device is
/// opened to make sure it is not a software rasterizer.
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
            return hardware(Device::wgpu(gpu_kind(index, &name)?), &name, "wgpu", index);
            #[cfg(not(feature = "wgpu"))]
            return Err(not_compiled("wgpu"));
        }
        "vulkan" => {
            #[cfg(feature = "vulkan")]
            return hardware(
                Device::vulkan(gpu_kind(index, &name)?),
                &name,
                "vulkan",
                index,
            );
            #[cfg(not(feature = "vulkan"))]
            return Err(not_compiled("vulkan"));
        }
        "metal" => {
            #[cfg(feature = "metal")]
            return hardware(
                Device::metal(gpu_kind(index, &name)?),
                &name,
                "metal",
                index,
            );
            #[cfg(not(feature = "metal"))]
            return Err(not_compiled("metal"));
        }
        "cuda" => {
            let index = number()?;
            #[cfg(feature = "cuda")]
            return cuda(index, &name);
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

/// The most capable device this machine has among the backends compiled in: a CUDA GPU, then
/// a Metal, Vulkan or wgpu GPU (a software rasterizer does not count), then flex. The error of
/// the last GPU backend tried is returned when flex is not compiled in either.
pub fn auto() -> Result<Device, DeviceError> {
    // Why each GPU backend was passed over; only read where flex is not compiled in (and
    // untouched where no GPU backend is).
    #[allow(unused_mut, unused_variables)]
    let mut passed_over: Vec<DeviceError> = Vec::new();
    #[cfg(feature = "cuda")]
    match cuda(0, "auto") {
        Ok(device) => return Ok(device),
        Err(e) => passed_over.push(e),
    }
    #[cfg(any(feature = "metal", feature = "vulkan", feature = "wgpu"))]
    {
        use burn::tensor::DeviceKind::DefaultDevice;
        // Each compiled GPU backend's default device, in order of preference.
        type Open = fn() -> Device;
        let gpus: Vec<(&str, Open)> = vec![
            #[cfg(feature = "metal")]
            ("metal", || Device::metal(DefaultDevice)),
            #[cfg(feature = "vulkan")]
            ("vulkan", || Device::vulkan(DefaultDevice)),
            #[cfg(feature = "wgpu")]
            ("wgpu", || Device::wgpu(DefaultDevice)),
        ];
        for (backend, open) in gpus {
            match hardware(open(), "auto", backend, None) {
                Ok(device) => return Ok(device),
                Err(e) => passed_over.push(e),
            }
        }
    }
    #[cfg(feature = "flex")]
    return Ok(Device::flex());
    #[allow(unreachable_code)]
    Err(passed_over.pop().unwrap_or(DeviceError::NoBackend))
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
    fn auto_takes_a_gpu_only_where_one_opened() {
        let device = auto().unwrap();
        let adapter = describe(&device).unwrap();
        // Without a GPU (every build and CI machine) auto is flex, never a software adapter.
        assert_ne!(adapter.kind, AdapterKind::Software, "{adapter}");
        if device == Device::flex() {
            assert_eq!(adapter.kind, AdapterKind::Cpu);
        } else {
            assert_eq!(adapter.kind, AdapterKind::Gpu);
        }
    }

    #[test]
    fn flex_describes_itself_as_the_cpu() {
        let adapter = describe(&Device::flex()).unwrap();
        assert_eq!(adapter.kind, AdapterKind::Cpu);
        assert_eq!(adapter.to_string(), "flex (cpu)");
    }

    /// Only a binary built with `cuda` and run where no driver is installed (every build
    /// machine; `scripts/build_cuda_offline.sh` runs it) can see this error.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_without_a_driver_or_gpu_is_a_typed_error() {
        // SAFETY: only tries to dlopen the driver library.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            let count = cudarc::driver::result::init()
                .and_then(|_| cudarc::driver::result::device::get_count())
                .unwrap() as usize;
            let err = from_name(&format!("cuda:{count}")).unwrap_err();
            assert!(err.to_string().contains("does not exist"), "{err}");
        } else {
            let err = from_name("cuda").unwrap_err();
            assert!(matches!(err, DeviceError::NoCuda { .. }), "{err}");
            assert!(err.to_string().contains("libcuda.so"), "{err}");
        }
    }
}
