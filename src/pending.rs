//! The pending map of incremental assembly: which devices of which array
//! have been seen while the array does not run, kept under
//! `/run/mdext/incremental/` (the analogue of mdadm's map file).
//!
//! One file per array, `UUID.json` (a [`PendingArray`]), each replaced by
//! an atomic rename. udev runs the rules of several devices at once, so two
//! `mdextctl incremental` calls for two members of one array race: every
//! reader and writer of the map, and every array start (`assemble` too),
//! holds an exclusive `flock(2)` on `incremental/lock` for the whole
//! read-decide-start-write sequence. Whoever comes second sees what the
//! first recorded, or the array the first started.

use crate::incremental::PendingArray;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Errors of the pending map (a file or directory and the errno).
#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    /// A file operation failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> PendingError {
    let path = path.to_path_buf();
    move |source| PendingError::Io { path, op, source }
}

/// The map, locked: only one holder at a time (released on drop).
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// The map's directory under `run_dir`.
    pub fn dir(run_dir: &Path) -> PathBuf {
        run_dir.join("incremental")
    }

    /// Take the lock, waiting for another holder to finish (creating the
    /// directory if needed).
    pub fn lock(run_dir: &Path) -> Result<Store, PendingError> {
        let dir = Store::dir(run_dir);
        // Root only, as mdextmon keeps its run directory.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir, "creating the directory"))?;
        let lp = dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lp)
            .map_err(io(&lp, "opening"))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&lp, "flock")(std::io::Error::from(e)))?;
        Ok(Store { dir, _lock: lock })
    }

    fn file(&self, uuid: &Uuid) -> PathBuf {
        self.dir.join(format!("{uuid}.json"))
    }

    /// The pending set of one array (`None`: nothing recorded). A file
    /// that does not parse (written by another version) counts as empty:
    /// the map is a cache of what udev reported, and the next events
    /// rebuild it.
    pub fn load(&self, uuid: &Uuid) -> Result<Option<PendingArray>, PendingError> {
        let p = self.file(uuid);
        match std::fs::read(&p) {
            Ok(b) => Ok(serde_json::from_slice::<PendingArray>(&b)
                .ok()
                .filter(|a| a.uuid == *uuid)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p, "reading")(e)),
        }
    }

    /// Every pending set, by UUID order.
    pub fn all(&self) -> Result<Vec<PendingArray>, PendingError> {
        let mut v = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(io(&self.dir, "listing"))?;
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(u) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            if let Some(a) = self.load(&u)? {
                v.push(a);
            }
        }
        v.sort_by_key(|a| a.uuid);
        Ok(v)
    }

    /// Replace an array's pending set (atomically: a temporary file renamed
    /// over it). An empty set removes the file.
    pub fn save(&self, a: &PendingArray) -> Result<(), PendingError> {
        if a.devices.is_empty() {
            return self.remove(&a.uuid);
        }
        let p = self.file(&a.uuid);
        let tmp = self.dir.join(format!(".{}.json.tmp", a.uuid));
        let mut body = serde_json::to_vec_pretty(a).map_err(|e| {
            io(&p, "encoding")(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        body.push(b'\n');
        let mut f = File::create(&tmp).map_err(io(&tmp, "creating"))?;
        f.write_all(&body).map_err(io(&tmp, "writing"))?;
        drop(f);
        std::fs::rename(&tmp, &p).map_err(io(&p, "renaming into place"))
    }

    /// Forget an array's pending set (it runs now, or has no devices left).
    pub fn remove(&self, uuid: &Uuid) -> Result<(), PendingError> {
        let p = self.file(uuid);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p, "removing")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incremental::SeenDevice;
    use crate::sysfs::DevNum;

    fn set(u: u128, n: usize) -> PendingArray {
        let mut a = PendingArray::new(Uuid::from_u128(u), "x");
        for i in 0..n {
            a.record(SeenDevice {
                path: format!("/dev/loop{i}").into(),
                dev: DevNum {
                    major: 7,
                    minor: u32::try_from(i).expect("small"),
                },
                member_uuid: Uuid::from_u128(0x100 + u128::from(u8::try_from(i).expect("small"))),
                events: 3,
            });
        }
        a
    }

    #[test]
    fn save_load_all_remove() {
        let d = tempfile::tempdir().expect("tmp");
        let s = Store::lock(d.path()).expect("lock");
        assert_eq!(s.load(&Uuid::from_u128(1)).expect("load"), None);
        s.save(&set(1, 2)).expect("save");
        s.save(&set(2, 1)).expect("save");
        assert_eq!(s.load(&Uuid::from_u128(1)).expect("load"), Some(set(1, 2)));
        assert_eq!(s.all().expect("all"), vec![set(1, 2), set(2, 1)]);
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(Store::dir(d.path()))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        s.save(&set(1, 0)).expect("empty removes");
        assert_eq!(s.load(&Uuid::from_u128(1)).expect("load"), None);
        s.remove(&Uuid::from_u128(2)).expect("remove");
        s.remove(&Uuid::from_u128(2)).expect("twice");
        assert!(s.all().expect("all").is_empty());
        // A damaged file counts as nothing recorded.
        std::fs::write(
            Store::dir(d.path()).join(format!("{}.json", Uuid::from_u128(3))),
            b"{",
        )
        .expect("write");
        assert_eq!(s.load(&Uuid::from_u128(3)).expect("load"), None);
    }

    #[test]
    fn the_lock_is_exclusive() {
        let d = tempfile::tempdir().expect("tmp");
        let s = Store::lock(d.path()).expect("lock");
        let dir = d.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _s2 = Store::lock(&dir).expect("second lock");
            tx.send(()).expect("send");
        });
        // The second holder waits while the first holds it.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        drop(s);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second got the lock once the first let go");
        t.join().expect("join");
    }
}
