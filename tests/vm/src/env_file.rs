//! The `KEY=VALUE` files the image scripts leave beside what they build
//! (`image.env` of build-rootfs.sh, `iso.env` of build-iso.sh).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One parsed env file; every error names the file and the key.
pub(crate) struct EnvFile {
    path: PathBuf,
    /// The file's directory, resolved: paths in the file are relative to it.
    pub(crate) dir: PathBuf,
    values: HashMap<String, String>,
}

impl EnvFile {
    /// Reads `path`; blank lines and `#` comments are skipped.
    pub(crate) fn read(path: &Path) -> Result<EnvFile> {
        let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let dir = path
            .parent()
            .with_context(|| format!("{} has no parent directory", path.display()))?
            .canonicalize()
            .with_context(|| format!("resolving the directory of {}", path.display()))?;
        let values = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(EnvFile {
            path: path.to_owned(),
            dir,
            values,
        })
    }

    /// The value of a key that must be there.
    pub(crate) fn get(&self, key: &str) -> Result<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{}: no {key}=", self.path.display()))
    }

    /// The value of a key that may be missing (then empty).
    pub(crate) fn get_or_empty(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or_default()
    }

    /// A number, or `default` when the key is missing or empty.
    pub(crate) fn number(&self, key: &str, default: u32) -> Result<u32> {
        match self.values.get(key) {
            Some(v) if !v.is_empty() => v
                .parse()
                .with_context(|| format!("{}: {key}={v} is not a number", self.path.display())),
            _ => Ok(default),
        }
    }

    /// A path relative to the file's directory that must exist.
    pub(crate) fn existing_path(&self, key: &str) -> Result<PathBuf> {
        let path = self.dir.join(self.get(key)?);
        if !path.exists() {
            bail!("{}: {key} names {}, which does not exist", self.path.display(), path.display());
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_numbers_and_paths_are_read_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("disk.raw"), b"").unwrap();
        let file = dir.path().join("image.env");
        fs::write(&file, "# comment\n\nVARIANT=test-guest\nDISK=disk.raw\nVM_CPUS=\nVM_MEMORY_MIB=x\n").unwrap();
        let env = EnvFile::read(&file).unwrap();
        assert_eq!(env.get("VARIANT").unwrap(), "test-guest");
        assert_eq!(env.get_or_empty("MISSING"), "");
        assert!(env.get("MISSING").unwrap_err().to_string().contains("no MISSING="));
        assert_eq!(env.number("VM_CPUS", 2).unwrap(), 2);
        assert!(format!("{:#}", env.number("VM_MEMORY_MIB", 1).unwrap_err()).contains("is not a number"));
        assert_eq!(env.existing_path("DISK").unwrap(), env.dir.join("disk.raw"));
        assert!(env.existing_path("VARIANT").unwrap_err().to_string().contains("does not exist"));
    }
}
