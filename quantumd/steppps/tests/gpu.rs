//! GPUs: a node without an NVIDIA driver (this one) has no GPU figures, and
//! says why; it is never an error.

use quantum_steppps::{Availability, Gpus};

#[test]
fn without_an_nvidia_driver_the_probe_says_no_gpu_and_why() {
    let has_driver = std::path::Path::new("/proc/driver/nvidia/version").exists();
    let gpus = Gpus::probe();
    match (&gpus, has_driver) {
        (Gpus::NoGpu { reason }, false) => {
            assert!(!reason.is_empty());
            if cfg!(feature = "gpu") {
                assert!(
                    reason.starts_with("no NVIDIA driver (NVML did not load: libnvidia-ml.so.1: "),
                    "{reason}"
                );
            }
            assert_eq!(gpus.figures(), Availability::unavailable(reason.clone()));
            assert_eq!(gpus.describe(), format!("none: {reason}"));
        }
        (Gpus::NoGpu { reason }, true) => panic!("an NVIDIA driver is loaded, yet: {reason}"),
        #[cfg(feature = "gpu")]
        (Gpus::Nvml(_), _) => {
            let figures = gpus.figures();
            let devices = figures.available().map(|f| f.devices.len()).unwrap_or(0);
            assert!(devices >= 1, "NVML loaded, but no device figures: {figures:?}");
        }
    }
}
