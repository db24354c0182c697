//! Cell state on a real btrfs: a loop-mounted image this test makes, mounts
//! and always unmounts (also when an assertion fails). Needs root, as
//! quantumd does.

use std::path::{Path, PathBuf};
use std::process::Command;

use quantum_steppps::btrfs::{Access, BtrfsError, CellState, SnapshotName, Subvolume};

/// A btrfs image mounted on a temporary directory; unmounted on drop.
struct LoopBtrfs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl LoopBtrfs {
    fn new() -> LoopBtrfs {
        let dir = tempfile::tempdir().expect("temporary directory");
        let img = dir.path().join("btrfs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(256 << 20))
            .expect("sparse 256 MiB image");
        run(Command::new("mkfs.btrfs").arg("-q").arg(&img));
        // Build the guard before mounting so that a failed assertion after a successful mount still unmounts.
        let fs = LoopBtrfs { _dir: dir, mnt };
        run(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&fs.mnt));
        fs
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        // The loop device is set to auto-clear by mount, so unmounting frees it too.
        let status = Command::new("umount").arg(&self.mnt).status();
        if !matches!(status, Ok(s) if s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn name(s: &str) -> SnapshotName {
    SnapshotName::try_from(s).expect("valid snapshot name")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn subvolumes_are_created_snapshotted_and_deleted() {
    let fs = LoopBtrfs::new();
    let sub = Subvolume::create(&fs.mnt.join("sub")).expect("create");
    assert!(Subvolume::is_subvolume(sub.path()).expect("inspect"));
    assert!(sub.id() >= 256, "top-level is 5, new subvolumes start at 256: {}", sub.id());
    std::fs::create_dir(fs.mnt.join("plain")).expect("plain directory");
    assert!(!Subvolume::is_subvolume(&fs.mnt.join("plain")).expect("inspect"));
    assert!(matches!(Subvolume::open(&fs.mnt.join("plain")), Err(BtrfsError::NotSubvolume(_))));

    std::fs::write(sub.path().join("f"), "one").expect("write");
    let ro = sub.snapshot(&fs.mnt.join("ro"), Access::ReadOnly).expect("read-only snapshot");
    let rw = sub.snapshot(&fs.mnt.join("rw"), Access::ReadWrite).expect("writable snapshot");
    assert_ne!(ro.id(), sub.id());
    assert_eq!(read(&ro.path().join("f")), "one");
    let denied = std::fs::write(ro.path().join("f"), "two").expect_err("a read-only snapshot refuses writes");
    assert_eq!(denied.raw_os_error(), Some(libc::EROFS));
    std::fs::write(rw.path().join("f"), "two").expect("a writable snapshot takes writes");
    assert_eq!(read(&sub.path().join("f")), "one", "snapshots are copies");

    let err = sub
        .snapshot(&fs.mnt.join("ro"), Access::ReadOnly)
        .expect_err("the destination exists");
    assert!(
        err.to_string()
            .starts_with(&format!("snapshot to {}: ", fs.mnt.join("ro").display())),
        "{err}"
    );

    for s in [ro, rw, sub] {
        let path = s.path().to_owned();
        s.delete().expect("delete");
        assert!(!path.exists(), "{} deleted", path.display());
    }
}

#[test]
fn a_cell_state_rolls_back_to_a_snapshot_and_keeps_it() {
    let fs = LoopBtrfs::new();
    let dir = fs.mnt.join("state/web-server.1");
    let state = CellState::open(&dir).expect("first open creates the state");
    let current = state.current();
    assert!(Subvolume::is_subvolume(&current).expect("inspect"));

    std::fs::write(current.join("db"), "v1").expect("write");
    state.snapshot(&name("before-upgrade")).expect("snapshot");
    std::fs::write(current.join("db"), "v2 (broken)").expect("write");
    std::fs::write(current.join("junk"), "x").expect("write");
    state.snapshot(&name("after-upgrade")).expect("snapshot");
    assert_eq!(state.snapshots().expect("list"), [name("after-upgrade"), name("before-upgrade")]);

    let before = Subvolume::open(&current).expect("open").id();
    state.rollback(&name("before-upgrade")).expect("rollback");
    assert_eq!(read(&current.join("db")), "v1");
    assert!(!current.join("junk").exists());
    assert_ne!(Subvolume::open(&current).expect("open").id(), before, "a new subvolume is in place");
    std::fs::write(current.join("db"), "v3").expect("the restored state is writable");
    assert!(!dir.join(".rollback").exists(), "the old state is gone");

    // The snapshot is untouched, so the same rollback can be done again (it is idempotent).
    assert_eq!(read(&dir.join("snapshots/before-upgrade/db")), "v1");
    state.rollback(&name("before-upgrade")).expect("second rollback");
    assert_eq!(read(&current.join("db")), "v1");

    state.delete_snapshot(&name("after-upgrade")).expect("delete snapshot");
    assert_eq!(state.snapshots().expect("list"), [name("before-upgrade")]);
    match state.rollback(&name("after-upgrade")) {
        Err(BtrfsError::NoSnapshot { name, .. }) => assert_eq!(name, "after-upgrade"),
        other => panic!("expected NoSnapshot, got {other:?}"),
    }
}

#[test]
fn opening_after_a_crash_in_a_rollback_keeps_current_and_removes_the_leftover() {
    let fs = LoopBtrfs::new();
    let dir = fs.mnt.join("state");
    let state = CellState::open(&dir).expect("open");
    std::fs::write(state.current().join("db"), "live").expect("write");
    let snap = state.snapshot(&name("s")).expect("snapshot");
    // A crash after step 1 leaves a writable copy at .rollback beside the untouched current.
    snap.snapshot(&dir.join(".rollback"), Access::ReadWrite).expect("leftover");
    drop(state);

    let state = CellState::open(&dir).expect("reopen");
    assert!(!dir.join(".rollback").exists());
    assert_eq!(read(&state.current().join("db")), "live");
}

#[test]
fn a_state_directory_off_btrfs_is_refused() {
    let tmp = tempfile::tempdir_in("/dev/shm").expect("tmpfs directory");
    let err = CellState::open(tmp.path()).expect_err("tmpfs has no subvolumes");
    assert!(
        err.to_string()
            .starts_with(&format!("create subvolume {}: ", tmp.path().join("current").display())),
        "{err}"
    );
}
