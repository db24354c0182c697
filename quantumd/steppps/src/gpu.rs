//! GPUs through NVML. A node without an NVIDIA driver is normal, not an
//! error: [`Gpus::probe`] then says why there is no GPU, once.

use crate::figures::{Availability, GpuFigures};

/// The GPU backend in use.
pub enum Gpus {
    /// No GPU figures on this node.
    NoGpu {
        /// Why, for a person.
        reason: String,
    },
    /// NVML is loaded and sees at least one GPU.
    #[cfg(feature = "gpu")]
    Nvml(Box<nvml_wrapper::Nvml>),
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

// The driver ships the versioned name; the unversioned one exists only where
// development files are installed, so try the versioned one first.
#[cfg(feature = "gpu")]
const NVML_LIBRARIES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

impl Gpus {
    /// Loads NVML and counts the GPUs; never fails.
    pub fn probe() -> Gpus {
        let gpus = Self::probe_inner();
        tracing::info!(gpus = %gpus.describe(), "GPU figures");
        gpus
    }

    #[cfg(not(feature = "gpu"))]
    fn probe_inner() -> Gpus {
        Gpus::NoGpu {
            reason: "quantum-steppps was built without the `gpu` feature".to_owned(),
        }
    }

    #[cfg(feature = "gpu")]
    fn probe_inner() -> Gpus {
        let mut failures = Vec::new();
        for library in NVML_LIBRARIES {
            match nvml_wrapper::Nvml::builder().lib_path(std::ffi::OsStr::new(library)).init() {
                Ok(nvml) => {
                    return match nvml.device_count() {
                        Ok(0) => Gpus::NoGpu {
                            reason: "the NVIDIA driver is loaded but sees no GPU".to_owned(),
                        },
                        Ok(_) => Gpus::Nvml(Box::new(nvml)),
                        Err(e) => Gpus::NoGpu {
                            reason: format!("NVML cannot count GPUs: {e}"),
                        },
                    };
                }
                Err(e) => failures.push(format!("{library}: {e}")),
            }
        }
        Gpus::NoGpu {
            reason: format!("no NVIDIA driver (NVML did not load: {})", failures.join("; ")),
        }
    }

    /// Which backend is in use, in words.
    pub fn describe(&self) -> String {
        match self {
            Gpus::NoGpu { reason } => format!("none: {reason}"),
            #[cfg(feature = "gpu")]
            Gpus::Nvml(nvml) => format!(
                "NVML, {} GPU(s), driver {}",
                nvml.device_count().unwrap_or(0),
                nvml.sys_driver_version().unwrap_or_else(|_| "unknown".to_owned())
            ),
        }
    }

    /// Current utilisation and memory of each GPU. A figure NVML refuses for
    /// one device is left out rather than failing the rest.
    pub fn figures(&self) -> Availability<GpuFigures> {
        match self {
            Gpus::NoGpu { reason } => Availability::unavailable(reason.clone()),
            #[cfg(feature = "gpu")]
            Gpus::Nvml(nvml) => Availability::Available(nvml_figures(nvml)),
        }
    }
}

#[cfg(feature = "gpu")]
fn nvml_figures(nvml: &nvml_wrapper::Nvml) -> GpuFigures {
    use crate::figures::GpuDevice;

    fn ok<T>(what: &str, index: u32, r: Result<T, nvml_wrapper::error::NvmlError>) -> Option<T> {
        r.map_err(|e| tracing::debug!(gpu = index, "NVML {what}: {e}")).ok()
    }
    let count = ok("device count", 0, nvml.device_count()).unwrap_or(0);
    let devices = (0..count)
        .map(|index| {
            let Some(device) = ok("device", index, nvml.device_by_index(index)) else {
                return GpuDevice {
                    index,
                    ..GpuDevice::default()
                };
            };
            let utilization = ok("utilization", index, device.utilization_rates());
            let memory = ok("memory", index, device.memory_info());
            GpuDevice {
                index,
                name: ok("name", index, device.name()),
                uuid: ok("uuid", index, device.uuid()),
                utilization_percent: utilization.as_ref().map(|u| u.gpu),
                memory_utilization_percent: utilization.as_ref().map(|u| u.memory),
                memory_used_bytes: memory.as_ref().map(|m| m.used),
                memory_total_bytes: memory.as_ref().map(|m| m.total),
            }
        })
        .collect();
    GpuFigures {
        driver_version: ok("driver version", 0, nvml.sys_driver_version()),
        devices,
    }
}
