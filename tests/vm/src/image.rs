//! A built guest image, as `image-builder/build-rootfs.sh` leaves it in the
//! cache: a directory with `image.env` describing the kernel, initramfs,
//! kernel command line, ext4 disk and root tree.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::env_file::EnvFile;

/// The variant the smoke tests and `make vm-run` use.
pub const DEFAULT_VARIANT: &str = "test-guest";

/// A composed guest image of one variant.
#[derive(Debug, Clone)]
pub struct Image {
    /// The image's directory (`$QUANTUM_CACHE/image/<variant>/<hash>`).
    pub dir: PathBuf,
    pub variant: String,
    /// The content hash the image is cached under.
    pub hash: String,
    /// The kernel release inside the image (`uname -r` under QEMU).
    pub kernel_version: String,
    pub kernel: PathBuf,
    /// None for a kernel that boots the disk by itself (the QuantumOS
    /// kernel has virtio-blk and ext4 built in): `INITRD=` empty.
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Raw ext4 image of the root filesystem, for QEMU.
    pub disk: PathBuf,
    /// The same root filesystem as a directory, for systemd-nspawn.
    pub tree: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
}

impl Image {
    /// The repository this crate belongs to.
    pub fn repo_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// Where the build script keeps its cache (`QUANTUM_CACHE` or `.cache`).
    pub fn cache_dir() -> PathBuf {
        match std::env::var_os("QUANTUM_CACHE") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => Self::repo_root().join(".cache"),
        }
    }

    /// Where the current image of `variant` is expected: `QUANTUM_IMAGE`
    /// (an image directory or its `image.env`) if set, else the cache's
    /// `image/<variant>/current`.
    pub fn expected_location(variant: &str) -> PathBuf {
        match std::env::var_os("QUANTUM_IMAGE") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => Self::cache_dir().join("image").join(variant).join("current"),
        }
    }

    /// The current image of `variant`, or `None` when none has been built.
    /// An image that exists but cannot be read is an error, not `None`.
    pub fn locate(variant: &str) -> Result<Option<Image>> {
        let location = Self::expected_location(variant);
        let env_file = if location.is_dir() {
            location.join("image.env")
        } else {
            location.clone()
        };
        if !env_file.is_file() {
            return Ok(None);
        }
        Self::load(&env_file).map(Some)
    }

    /// Reads an `image.env` written by the build script.
    pub fn load(env_file: &Path) -> Result<Image> {
        let env = EnvFile::read(env_file)?;
        let cmdline_file = env.existing_path("CMDLINE_FILE")?;
        let cmdline = fs::read_to_string(&cmdline_file)
            .with_context(|| format!("reading {}", cmdline_file.display()))?
            .trim()
            .to_owned();
        Ok(Image {
            variant: env.get("VARIANT")?.to_owned(),
            hash: env.get("IMAGE_HASH")?.to_owned(),
            kernel_version: env.get("KERNEL_VERSION")?.to_owned(),
            kernel: env.existing_path("KERNEL")?,
            initrd: match env.get_or_empty("INITRD") {
                "" => None,
                _ => Some(env.existing_path("INITRD")?),
            },
            cmdline,
            disk: env.existing_path("DISK")?,
            tree: env.existing_path("TREE")?,
            memory_mib: env.number("VM_MEMORY_MIB", 2560)?,
            cpus: env.number("VM_CPUS", 2)?,
            dir: env.dir,
        })
    }

    /// The short form of the hash, for messages.
    pub fn short_hash(&self) -> &str {
        &self.hash[..self.hash.len().min(12)]
    }
}
