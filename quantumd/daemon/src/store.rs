//! Instance records under `<state-dir>/instances/`: written before a unit is
//! started and removed when it is gone, so that a quantumd killed at any
//! moment finds every unit it owns when it comes back.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::credentials::{CredentialError, Credentials};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    pub instance: String,
    pub cell: String,
    pub unit: String,
    pub slice: String,
    pub manifest_path: PathBuf,
    pub params: BTreeMap<String, String>,
    pub parent: Option<String>,
    /// Needed instances this one started or reuses.
    pub needs: Vec<String>,
    /// Started only because another cell needed it.
    pub auto_started: bool,
    /// The slice of this instance's family, when it has children.
    pub family_slice: Option<String>,
    pub started_usec: u64,
    /// Who asked for it (`uid:N`, or `quantumd` for restarts), for the trail.
    #[serde(default)]
    pub actor: String,
    /// blake3 of the manifest it was started from (hex).
    #[serde(default)]
    pub manifest_blake3: Option<String>,
    /// Its secret parameters' names; their values are not here but in
    /// crate::credentials, for the unit alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Credentials(#[from] CredentialError),
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    credentials: Credentials,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.join("instances");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let credentials = Credentials::open(state_dir)?;
        Ok(Store { dir, credentials })
    }

    /// Where live instances' secrets are kept; an instance's go with its
    /// record (`remove`).
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    fn path(&self, instance: &str) -> PathBuf {
        self.dir.join(format!("{instance}.json"))
    }

    /// Writes a record atomically: a crash leaves the old one or the new one.
    pub fn save(&self, r: &Record) -> Result<(), StoreError> {
        self.write(r, true)
    }

    /// Writes the record of an instance about to start, atomically but
    /// without waiting for the disk. Its unit is transient and cannot
    /// outlive the kernel: the record must survive a crash of quantumd,
    /// which the page cache does, and after a crash of the machine there is
    /// no unit left for it to describe (a record the crash tore is set
    /// aside by `load_all`, and reported). The fsync was 19 ms of a start
    /// under TCG, on the path before systemd is asked.
    pub fn save_before_start(&self, r: &Record) -> Result<(), StoreError> {
        self.write(r, false)
    }

    fn write(&self, r: &Record, sync: bool) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(r).map_err(|e| StoreError::Io {
            op: "encode",
            path: self.path(&r.instance),
            source: std::io::Error::other(e),
        })?;
        write_atomically(&self.path(&r.instance), &data, sync)
    }

    /// Where the instance numbers handed out so far end
    /// (`<state-dir>/instances/next-number`).
    fn numbers_path(&self) -> PathBuf {
        self.dir.join("next-number")
    }

    /// The first instance number not yet reserved: numbers below it may
    /// have been handed out before this start of quantumd, and are never
    /// given again, so that `quantumctl logs web-server.3` (read from the
    /// journal by unit name) never mixes two runs. 1 on a fresh node; an
    /// unreadable file is reported and counted from the records alone.
    pub fn reserved_numbers(&self) -> u64 {
        let path = self.numbers_path();
        let read = match fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 1,
            read => read.map_err(|e| e.to_string()),
        };
        read.and_then(|text| text.trim().parse().map_err(|e: std::num::ParseIntError| e.to_string()))
            .unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "unreadable instance number reservation; counting from the records");
                1
            })
    }

    /// Reserves every number below `end`, durably (synced) before any of
    /// them is used: a crash of the machine must not give a number twice
    /// either, since the trail names instances by it.
    pub fn reserve_numbers(&self, end: u64) -> Result<(), StoreError> {
        write_atomically(&self.numbers_path(), format!("{end}\n").as_bytes(), true)
    }

    pub fn remove(&self, instance: &str) {
        self.credentials.remove(instance);
        let path = self.path(instance);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove instance record");
            }
        }
    }

    /// Every readable record; unreadable ones are reported and set aside
    /// (renamed `.bad`), never silently dropped.
    pub fn load_all(&self) -> Vec<Record> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.dir) else { return out };
        for e in rd.flatten() {
            let p = e.path();
            match p.extension().and_then(|x| x.to_str()) {
                Some("json") => {}
                Some("tmp") => {
                    let _ = fs::remove_file(&p);
                    continue;
                }
                _ => continue,
            }
            match fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice::<Record>(&d).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "unreadable instance record, set aside as .bad");
                    let _ = fs::rename(&p, p.with_extension("bad"));
                }
            }
        }
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        self.credentials.sweep(|i| out.iter().any(|r| r.instance == i));
        out
    }
}

/// Replaces `path` with `data` through a temporary file and a rename, so
/// that a crash leaves the old content or the new; `sync` waits for the
/// disk before the rename.
pub(crate) fn write_atomically(path: &Path, data: &[u8], sync: bool) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |op, source| StoreError::Io {
        op,
        path: tmp.clone(),
        source,
    };
    let mut f = fs::File::create(&tmp).map_err(|e| io("create", e))?;
    f.write_all(data).map_err(|e| io("write", e))?;
    if sync {
        f.sync_all().map_err(|e| io("sync", e))?;
    }
    fs::rename(&tmp, path).map_err(|source| StoreError::Io {
        op: "rename",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            instance: id.into(),
            cell: "web".into(),
            unit: format!("quantum-{id}.service"),
            slice: "quantum.slice".into(),
            manifest_path: "/x/cell.toml".into(),
            params: BTreeMap::from([("port".into(), "8080".into())]),
            parent: None,
            needs: vec![],
            auto_started: false,
            family_slice: None,
            started_usec: 1,
            actor: "uid:0".into(),
            manifest_blake3: None,
            secrets: vec![],
        }
    }

    #[test]
    fn records_survive_a_reload_and_corrupt_ones_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.save(&record("web.1")).unwrap();
        s.save(&record("web.2")).unwrap();
        fs::write(dir.path().join("instances/web.3.json"), b"{ torn").unwrap();
        fs::write(dir.path().join("instances/web.4.json.tmp"), b"partial").unwrap();
        let loaded = s.load_all();
        assert_eq!(loaded, vec![record("web.1"), record("web.2")]);
        assert!(dir.path().join("instances/web.3.bad").exists());
        assert!(!dir.path().join("instances/web.4.json.tmp").exists());
        s.remove("web.1");
        assert_eq!(s.load_all(), vec![record("web.2")]);
        // Secrets live as long as their record.
        let secrets = BTreeMap::from([("password".to_owned(), "x".to_owned())]);
        let kept = s.credentials().write("web.2", &secrets).unwrap();
        let orphan = s.credentials().write("web.9", &secrets).unwrap();
        s.load_all();
        assert!(kept.exists() && !orphan.exists());
        s.remove("web.2");
        assert!(!kept.exists());
    }

    #[test]
    fn reserved_numbers_survive_a_restart_and_start_at_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.reserved_numbers(), 1);
        s.reserve_numbers(1025).unwrap();
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.reserved_numbers(), 1025);
        // The reservation is no record: load_all ignores it.
        assert!(again.load_all().is_empty());
    }
}
