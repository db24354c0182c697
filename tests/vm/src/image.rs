//! A built guest image, as `image-builder/build-rootfs.sh` leaves it in the
//! cache: a directory with `image.env` describing the kernel, initramfs,
//! kernel command line, ext4 disk and root tree.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

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
    pub initrd: PathBuf,
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
        let text = fs::read_to_string(env_file).with_context(|| format!("reading {}", env_file.display()))?;
        let dir = env_file
            .parent()
            .context("image.env has no parent directory")?
            .canonicalize()
            .with_context(|| format!("resolving the directory of {}", env_file.display()))?;
        let values: HashMap<&str, &str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .collect();
        let get = |key: &str| -> Result<&str> {
            values
                .get(key)
                .copied()
                .with_context(|| format!("{}: no {key}=", env_file.display()))
        };
        let path = |key: &str| -> Result<PathBuf> {
            let path = dir.join(get(key)?);
            if !path.exists() {
                bail!("{}: {key} names {}, which does not exist", env_file.display(), path.display());
            }
            Ok(path)
        };
        let number = |key: &str, default: u32| -> Result<u32> {
            match values.get(key) {
                Some(v) if !v.is_empty() => v
                    .parse()
                    .with_context(|| format!("{}: {key}={v} is not a number", env_file.display())),
                _ => Ok(default),
            }
        };
        let cmdline_file = path("CMDLINE_FILE")?;
        let cmdline = fs::read_to_string(&cmdline_file)
            .with_context(|| format!("reading {}", cmdline_file.display()))?
            .trim()
            .to_owned();
        Ok(Image {
            variant: get("VARIANT")?.to_owned(),
            hash: get("IMAGE_HASH")?.to_owned(),
            kernel_version: get("KERNEL_VERSION")?.to_owned(),
            kernel: path("KERNEL")?,
            initrd: path("INITRD")?,
            cmdline,
            disk: path("DISK")?,
            tree: path("TREE")?,
            memory_mib: number("VM_MEMORY_MIB", 2560)?,
            cpus: number("VM_CPUS", 2)?,
            dir,
        })
    }

    /// The short form of the hash, for messages.
    pub fn short_hash(&self) -> &str {
        &self.hash[..self.hash.len().min(12)]
    }
}
