//! Compiles the CO-RE programs in src/bpf/ with clang and generates their
//! libbpf-rs skeletons into OUT_DIR (the scx layout: one `<name>.bpf.c` per
//! program beside the shared `intf.h`).
//!
//! `vmlinux.h` is committed (see src/bpf/update-vmlinux.sh for why), so the
//! build needs clang but neither bpftool nor the build host's BTF.

use std::env;
use std::error::Error;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] = &["runqlat", "events", "netpolicy"];
const HEADERS: &[&str] = &["intf.h", "scope.bpf.h", "vmlinux.h"];

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let bpf_dir = manifest_dir.join("src/bpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // BPF_CLANG lets a packager pick a versioned clang (clang-14, ...).
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-env-changed=BPF_CLANG");

    // Paths relative to the package, so that a copy of the tree elsewhere
    // (the Debian package build, scripts/build-deb.sh) reuses this build
    // instead of rerunning the script and rebuilding everything above it.
    for header in HEADERS {
        println!("cargo:rerun-if-changed=src/bpf/{header}");
    }
    for name in PROGRAMS {
        let source = bpf_dir.join(format!("{name}.bpf.c"));
        println!("cargo:rerun-if-changed=src/bpf/{name}.bpf.c");
        SkeletonBuilder::new()
            .source(&source)
            .clang(&clang)
            .clang_args([format!("-I{}", bpf_dir.display()), "-Wall".to_owned()])
            .build_and_generate(out_dir.join(format!("{name}.skel.rs")))
            .map_err(|e| {
                format!(
                    "building the BPF program {} with `{clang}` failed (is clang installed?): {e:#}",
                    source.display()
                )
            })?;
    }
    Ok(())
}
