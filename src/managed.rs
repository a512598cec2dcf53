//! One array under mdextmon's management: its members' metadata I/O, its
//! sysfs watches, and the reactions to what the kernel shows.
//!
//! The reactions are the kernel's contract for external metadata:
//! - `write-pending`: the first write on a clean array is held until
//!   userspace records "dirty" and writes `active`. We record dirty durably
//!   on every member, then write `active`.
//! - `active-idle`: the kernel never goes clean by itself. We write `clean`
//!   first and record clean only once the kernel reads `clean` (recording
//!   first would let a write slip in while the metadata says clean).
//! - after any resync or recovery the kernel sets `write-pending` without
//!   notifying `array_state`, so every wake re-reads `array_state`.
//! - resync progress (`sync_completed`) is recorded as the checkpoint, never
//!   ahead of what the kernel reports done.

use crate::device::{Access, Device};
use crate::meta::{ArrayMeta, DeviceMeta};
use crate::sysfs::{
    ArrayState, AttrWatch, Checkpoint, MdDev, SyncAction, SyncCompleted, Sysfs, SysfsError,
};
use crate::units::Sectors;
use log::{debug, error, info, warn};
use std::path::PathBuf;

/// Errors while taking over or operating an array.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// Not an mdext array.
    #[error("{md}: not an mdext array (metadata_version is '{version}')")]
    NotMdext {
        /// md device.
        md: String,
        /// What it reads.
        version: String,
    },
    /// sysfs.
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// A member's metadata could not be read or written.
    #[error("{md}: member {member}: {message}")]
    Member {
        /// md device.
        md: String,
        /// Member kernel name.
        member: String,
        /// What went wrong.
        message: String,
    },
    /// Members disagree about which array they belong to.
    #[error("{md}: members belong to different arrays")]
    Mixed {
        /// md device.
        md: String,
    },
}

/// A member's metadata I/O handle.
struct MemberIo {
    kname: String,
    dev: Device,
    device: DeviceMeta,
}

/// An array under management.
pub struct Managed {
    md: MdDev,
    meta: ArrayMeta,
    members: Vec<MemberIo>,
    watches: Vec<AttrWatch>,
    gone: bool,
    /// Resync checkpoint granularity: record progress every 1/16 of the
    /// total (no clock; bounded number of metadata writes per resync).
    last_checkpoint: Option<Sectors>,
    /// Leave a read-only array read-only.
    readonly: bool,
}

const WATCHED: [&str; 4] = ["array_state", "degraded", "sync_action", "sync_completed"];

impl Managed {
    /// Take over a running md device: read its members' metadata (the
    /// newest event count wins) and open its watches.
    pub fn take_over(sysfs: &Sysfs, name: &str) -> Result<Managed, ManagedError> {
        let md = sysfs.md(name);
        let version = md.metadata_version()?;
        if !crate::meta::is_mdext_version(&version) {
            return Err(ManagedError::NotMdext {
                md: name.into(),
                version,
            });
        }
        let mut members = Vec::new();
        let mut newest: Option<ArrayMeta> = None;
        for kname in md.members() {
            let path = PathBuf::from("/dev").join(&kname);
            let merr = |message: String| ManagedError::Member {
                md: name.into(),
                member: kname.clone(),
                message,
            };
            let dev = Device::open(&path, Access::SharedWrite).map_err(|e| merr(e.to_string()))?;
            let sb = dev
                .read_superblock()
                .map_err(|e| merr(e.to_string()))?
                .superblock;
            if let Some(n) = &newest {
                if n.uuid != sb.array.uuid {
                    return Err(ManagedError::Mixed { md: name.into() });
                }
            }
            if newest.as_ref().is_none_or(|n| sb.array.events > n.events) {
                newest = Some(sb.array.clone());
            }
            members.push(MemberIo {
                kname,
                dev,
                device: sb.device,
            });
        }
        let meta = newest.ok_or_else(|| ManagedError::Member {
            md: name.into(),
            member: "-".into(),
            message: "the array has no members".into(),
        })?;
        let mut watches = Vec::new();
        for a in WATCHED {
            watches.push(md.watch(a)?);
        }
        for m in &members {
            watches.push(md.member(&m.kname).watch_state()?);
        }
        Ok(Managed {
            md,
            meta,
            members,
            watches,
            gone: false,
            last_checkpoint: None,
            readonly: false,
        })
    }

    /// Keep (or stop keeping) a read-only array read-only.
    pub fn set_readonly(&mut self, ro: bool) {
        self.readonly = ro;
    }

    /// The array's name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The array's UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        self.meta.uuid
    }

    /// The open watches (array attributes, then members' `state`).
    pub fn watches(&self) -> &[AttrWatch] {
        &self.watches
    }

    /// Whether the md device has been stopped by someone else.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Write the metadata (events bumped) durably to every member, in
    /// parallel. Returns false if any member failed.
    fn record(&mut self, change: impl FnOnce(&mut ArrayMeta)) -> bool {
        let mut next = self.meta.clone();
        change(&mut next);
        next.events += 1;
        next.utime = now();
        let results: Vec<Result<usize, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .members
                .iter()
                .map(|m| {
                    let sb = crate::meta::Superblock {
                        array: next.clone(),
                        device: m.device,
                    };
                    s.spawn(move || m.dev.write_superblock(&sb).map_err(|e| e.to_string()))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("writer thread panicked".into()))
                })
                .collect()
        });
        let mut ok = true;
        for (m, r) in self.members.iter().zip(&results) {
            if let Err(e) = r {
                error!(
                    "{}: metadata write to {} failed: {e}",
                    self.md.name(),
                    m.kname
                );
                ok = false;
            }
        }
        if ok {
            self.meta = next;
            debug!(
                "{}: recorded events {} ({}, resync {})",
                self.md.name(),
                self.meta.events,
                if self.meta.clean { "clean" } else { "dirty" },
                self.meta.resync
            );
        }
        ok
    }

    /// React to whatever the kernel shows now. Called after any wake.
    pub fn wake(&mut self) {
        for w in &self.watches {
            // Re-arm every notification (sysfs needs a read after a wake).
            let _ = w.read_fresh();
        }
        if !self.md.sysfs().md_exists(self.md.name()) {
            self.gone = true;
            return;
        }
        // A few passes: our own writes change the state (e.g. active-idle ->
        // clean), and the next decision depends on the new one.
        for _ in 0..4 {
            if !self.pass() {
                break;
            }
        }
    }

    /// One decision. Returns true if it changed something worth re-reading.
    fn pass(&mut self) -> bool {
        let state = match self.md.array_state() {
            Ok(s) => s,
            Err(e) => {
                warn!("{}: {e}", self.md.name());
                self.gone = !self.md.sysfs().md_exists(self.md.name());
                return false;
            }
        };
        self.track_resync();
        match state {
            ArrayState::Clear | ArrayState::Inactive => {
                self.gone = true;
                false
            }
            ArrayState::WritePending => {
                if self.meta.clean && !self.record(|m| m.clean = false) {
                    // The write stays held: better a hung write than data
                    // on disk while the metadata says clean.
                    return false;
                }
                match self.md.set_array_state(ArrayState::Active) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!("{}: {e}", self.md.name());
                        false
                    }
                }
            }
            ArrayState::ActiveIdle => {
                // EBUSY here means a write arrived meanwhile: fine.
                self.md.set_array_state(ArrayState::Clean).is_ok()
            }
            ArrayState::Clean => {
                if !self.meta.clean {
                    self.record(|m| m.clean = true);
                }
                false
            }
            ArrayState::Readonly | ArrayState::ReadAuto if self.readonly => false,
            ArrayState::Readonly | ArrayState::ReadAuto => {
                // Started read-only by the assembly so that nothing is
                // written before we manage it; now make it writable. A
                // pending resync starts here.
                match self.md.set_array_state(ArrayState::Clean) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!("{}: making it writable: {e}", self.md.name());
                        false
                    }
                }
            }
            ArrayState::Active | ArrayState::Suspended | ArrayState::Broken => false,
        }
    }

    /// Record resync progress and completion.
    fn track_resync(&mut self) {
        let action = self.md.sync_action().ok();
        let done = self.md.sync_completed().ok();
        match (action, done) {
            (Some(SyncAction::Resync), Some(SyncCompleted::Progress { done, total })) => {
                let step = Sectors((total.0 / 16).max(1));
                let due = match self.last_checkpoint {
                    None => true,
                    Some(last) => done.0 >= last.0 + step.0,
                };
                if due && self.meta.resync != Checkpoint::None && done.0 > 0 {
                    let cp = Checkpoint::At(done);
                    if self.record(|m| m.resync = cp) {
                        self.last_checkpoint = Some(done);
                    }
                }
            }
            (Some(SyncAction::Idle), _)
                if self.meta.resync != Checkpoint::None
                    && self.md.resync_start().ok() == Some(Checkpoint::None)
                    && self.md.degraded().ok() == Some(0) =>
            {
                info!("{}: resync complete", self.md.name());
                self.record(|m| m.resync = Checkpoint::None);
                self.last_checkpoint = None;
            }
            _ => {}
        }
    }

    /// Try to leave the array clean (SIGTERM, release). True when the
    /// metadata records clean and the kernel agrees.
    pub fn make_clean(&mut self) -> bool {
        if !self.md.sysfs().md_exists(self.md.name()) {
            return true;
        }
        self.wake();
        match self.md.array_state() {
            Ok(ArrayState::Active) | Ok(ArrayState::ActiveIdle) => {
                let _ = self.md.set_array_state(ArrayState::Clean);
            }
            _ => {}
        }
        match self.md.array_state() {
            Ok(ArrayState::Clean)
            | Ok(ArrayState::Readonly)
            | Ok(ArrayState::Inactive)
            | Ok(ArrayState::Clear) => self.meta.clean || self.record(|m| m.clean = true),
            Err(_) => true,
            _ => false,
        }
    }

    /// Mark clean and stop the md device.
    pub fn stop(&mut self) -> Result<(), String> {
        let name = self.md.name().to_string();
        let mut tries = 0;
        while !self.make_clean() {
            tries += 1;
            if tries > 50 {
                return Err(format!("{name}: writes still in flight; not stopped"));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.md
            .set_array_state(ArrayState::Inactive)
            .map_err(|e| format!("{name}: cannot stop (in use?): {e}"))?;
        self.watches.clear();
        crate::assembly::teardown(self.md.sysfs(), &self.md).map_err(|e| e.to_string())?;
        info!(
            "{name}: stopped, metadata clean at events {}",
            self.meta.events
        );
        Ok(())
    }

    /// A JSON summary (for `status` and `detail`).
    pub fn status(&self) -> serde_json::Value {
        let md = &self.md;
        serde_json::json!({
            "md": md.name(),
            "name": self.meta.name,
            "uuid": self.meta.uuid.to_string(),
            "level": self.meta.geometry.level.as_str(),
            "raid_disks": self.meta.geometry.raid_disks,
            "component_size_sectors": self.meta.geometry.component_size.0,
            "array_state": md.read("array_state").unwrap_or_default(),
            "degraded": md.degraded().unwrap_or(0),
            "sync_action": md.read("sync_action").unwrap_or_default(),
            "sync_completed": md.read("sync_completed").unwrap_or_default(),
            "can_clear": md.read("bitmap/can_clear").unwrap_or_default(),
            "events": self.meta.events,
            "clean": self.meta.clean,
            "resync": self.meta.resync.to_string(),
            "bitmap": {
                "offset_sectors": self.meta.bitmap.offset.0,
                "chunk_bytes": self.meta.bitmap.chunk.0,
                "time_base": self.meta.bitmap.time_base,
                "events_cleared": self.meta.bitmap.events_cleared,
            },
            "members": self.meta.members.iter().enumerate().map(|(i, e)| {
                let dev = self.members.iter().find(|m| m.device.uuid == e.uuid).map(|m| format!("/dev/{}", m.kname));
                serde_json::json!({
                    "slot": i,
                    "uuid": e.uuid.to_string(),
                    "state": e.state,
                    "events": e.events,
                    "device": dev,
                })
            }).collect::<Vec<_>>(),
        })
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
