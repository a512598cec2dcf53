//! One array under mdextmon's management: the I/O around the pure state
//! machine ([`crate::monitor`]). It reads a snapshot of the array's sysfs
//! state, feeds it to the machine, and carries out the returned actions in
//! order, stopping at the first failure and feeding it back. No decisions
//! about metadata are taken here.

use crate::device::{Access, Device};
use crate::md::{ArrayState, Checkpoint, MemberCommand, MemberFlags};
use crate::meta::{ArrayMeta, DeviceMeta, MemberState, Superblock};
use crate::monitor::{
    Action, AdminRequest, Event, KernelMember, KernelView, Monitor, OwnRecord, ReturningDevice,
};
use crate::sysfs::{AttrWatch, DevNum, MdDev, Sysfs, SysfsError};
use crate::units::Sectors;
use log::{debug, error, info, warn};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The md devices running mdext arrays (md's `metadata_version` says so;
/// the record is not read).
pub fn running_arrays(sysfs: &Sysfs) -> Vec<String> {
    sysfs
        .list_md()
        .into_iter()
        .filter(|n| {
            sysfs
                .md(n)
                .metadata_version()
                .is_ok_and(|v| crate::meta::is_mdext_version(&v))
        })
        .collect()
}

/// A running array's record as its members hold it: what `take_over`
/// starts from, and all that the read-only commands (`detail`, `status`,
/// finding an array by name) need, without writer threads or watches.
pub struct Record {
    /// The md device.
    pub md: MdDev,
    /// The newest metadata among the members.
    pub meta: ArrayMeta,
    /// Each member md lists that the table knows: kernel name, open device,
    /// its own device metadata, table index.
    pub devices: Vec<(String, Device, DeviceMeta, usize)>,
}

impl Record {
    /// Read the metadata of every member of md device `name` (the newest
    /// event count wins). Members are opened with `access`.
    pub fn read(sysfs: &Sysfs, name: &str, access: Access) -> Result<Record, ManagedError> {
        let md = sysfs.md(name);
        let version = md.metadata_version()?;
        if !crate::meta::is_mdext_version(&version) {
            return Err(ManagedError::NotMdext {
                md: name.into(),
                version,
            });
        }
        let mut opened = Vec::new();
        let mut newest: Option<ArrayMeta> = None;
        for kname in md.members() {
            let path = PathBuf::from("/dev").join(&kname);
            let dev = Device::open(&path, access).map_err(|e| merr(name, &kname, e.to_string()))?;
            let sb = dev
                .read_superblock()
                .map_err(|e| merr(name, &kname, e.to_string()))?
                .superblock;
            if newest.as_ref().is_some_and(|n| n.uuid != sb.array.uuid) {
                return Err(ManagedError::Mixed { md: name.into() });
            }
            if newest.as_ref().is_none_or(|n| sb.array.events > n.events) {
                newest = Some(sb.array.clone());
            }
            opened.push((kname, dev, sb.device));
        }
        let meta = newest.ok_or_else(|| merr(name, "-", "the array has no members"))?;
        let mut devices = Vec::new();
        for (kname, dev, device) in opened {
            match meta.index_of(&device.uuid) {
                Some(index) => devices.push((kname, dev, device, index)),
                None => warn!("{name}: {kname} is not in the member table; ignored"),
            }
        }
        Ok(Record { md, meta, devices })
    }

    /// A JSON summary (for `status` and `detail`).
    pub fn status(&self) -> serde_json::Value {
        let devices: Vec<(usize, &str)> =
            self.devices.iter().map(|d| (d.3, d.0.as_str())).collect();
        status_json(&self.md, &self.meta, &devices)
    }
}

/// The JSON summary of an array: its record, the kernel's view, and which
/// device holds each table entry (`(index, kernel name)`).
fn status_json(md: &MdDev, meta: &ArrayMeta, devices: &[(usize, &str)]) -> serde_json::Value {
    serde_json::json!({
        "md": md.name(),
        "name": meta.name,
        "uuid": meta.uuid.to_string(),
        "level": meta.geometry.level.as_str(),
        "raid_disks": meta.geometry.raid_disks,
        "component_size_sectors": meta.geometry.component_size.0,
        "array_state": md.read("array_state").unwrap_or_default(),
        "degraded": md.degraded().unwrap_or(0),
        "sync_action": md.read("sync_action").unwrap_or_default(),
        "sync_completed": md.read("sync_completed").unwrap_or_default(),
        "can_clear": md.read("bitmap/can_clear").unwrap_or_default(),
        "events": meta.events,
        "clean": meta.clean,
        "resync": meta.resync.to_string(),
        "forced_start_events": meta.forced_start,
        "bitmap": {
            "offset_sectors": meta.bitmap.offset.0,
            "chunk_bytes": meta.bitmap.chunk.0,
            "time_base": meta.bitmap.time_base,
            "events_cleared": meta.bitmap.events_cleared,
        },
        "members": meta.members.iter().enumerate().map(|(i, e)| {
            let dev = devices.iter().find(|(j, _)| *j == i).map(|(_, k)| format!("/dev/{k}"));
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

/// A member's metadata I/O handle, with its own writer thread.
struct MemberIo {
    kname: String,
    dev: Arc<Device>,
    device: DeviceMeta,
    index: usize,
    writer: Writer,
}

/// A long-lived thread that writes one member's metadata, so that the
/// members of an array are written in parallel without creating threads on
/// the write-pending path (under `mlockall(MCL_FUTURE)` every new thread
/// stack would be populated and locked right there). The channels are
/// bounded to one message, so sending allocates nothing.
struct Writer {
    jobs: SyncSender<Superblock>,
    done: Receiver<Result<usize, String>>,
}

/// Stack of a writer thread: it only encodes 4 KiB and calls pwrite.
const WRITER_STACK: usize = 256 << 10;

impl Writer {
    fn start(name: &str, dev: Arc<Device>) -> std::io::Result<Writer> {
        let (jobs, rx) = sync_channel::<Superblock>(1);
        let (tx, done) = sync_channel(1);
        std::thread::Builder::new()
            .name(format!("write-{name}"))
            .stack_size(WRITER_STACK)
            .spawn(move || {
                // Ends when the member is dropped (its sender goes away).
                while let Ok(sb) = rx.recv() {
                    let r = dev.write_superblock(&sb).map_err(|e| e.to_string());
                    if tx.send(r).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Writer { jobs, done })
    }
}

impl MemberIo {
    fn new(
        kname: String,
        dev: Device,
        device: DeviceMeta,
        index: usize,
    ) -> Result<MemberIo, String> {
        let dev = Arc::new(dev);
        let writer = Writer::start(&kname, dev.clone())
            .map_err(|e| format!("{kname}: writer thread: {e}"))?;
        Ok(MemberIo {
            kname,
            dev,
            device,
            index,
            writer,
        })
    }
}

/// A device waiting to be hot-added by an `AddDevice` action.
struct PendingAdd {
    index: usize,
    devnum: DevNum,
    dev: Device,
    device: DeviceMeta,
}

/// An array under management.
pub struct Managed {
    md: MdDev,
    mon: Monitor,
    members: Vec<MemberIo>,
    watches: Option<Watches>,
    gone: bool,
    readonly: bool,
    pending: Option<PendingAdd>,
}

/// The attributes md notifies, kept open. Reading one both re-arms its
/// notification and gives its current value, so a snapshot reads each once.
struct Watches {
    array_state: AttrWatch,
    degraded: AttrWatch,
    sync_action: AttrWatch,
    sync_completed: AttrWatch,
    /// Each member's `state`, by kernel name (after `remove` an old fd
    /// never wakes again, so they are opened afresh when members change).
    members: Vec<(String, AttrWatch)>,
}

impl Watches {
    fn open(md: &MdDev, members: &[MemberIo]) -> Result<Watches, SysfsError> {
        Ok(Watches {
            array_state: md.watch("array_state")?,
            degraded: md.watch("degraded")?,
            sync_action: md.watch("sync_action")?,
            sync_completed: md.watch("sync_completed")?,
            members: members
                .iter()
                .filter_map(|m| Some((m.kname.clone(), md.member(&m.kname).watch_state().ok()?)))
                .collect(),
        })
    }

    fn all(&self) -> impl Iterator<Item = &AttrWatch> {
        [
            &self.array_state,
            &self.degraded,
            &self.sync_action,
            &self.sync_completed,
        ]
        .into_iter()
        .chain(self.members.iter().map(|(_, w)| w))
    }
}

/// Read a watched attribute afresh and parse it.
fn parse_watch<T: std::str::FromStr>(w: &AttrWatch) -> Result<T, SysfsError> {
    let v = w.read_fresh()?;
    v.trim().parse().map_err(|_| SysfsError::Parse {
        attr: w.attr().to_string(),
        value: v,
    })
}

/// Most batches run for one wake (each batch is followed by a fresh
/// snapshot because the kernel does not notify everything our actions
/// cause); a stable array needs one empty batch.
const MAX_BATCHES: usize = 16;

fn merr(md: &str, member: &str, message: impl Into<String>) -> ManagedError {
    ManagedError::Member {
        md: md.into(),
        member: member.into(),
        message: message.into(),
    }
}

impl Managed {
    /// Take over a running md device: read its members' metadata (the
    /// newest event count wins), open its watches, and let the state machine
    /// restore the invariant before anything else.
    pub fn take_over(sysfs: &Sysfs, name: &str) -> Result<Managed, ManagedError> {
        let Record { md, meta, devices } = Record::read(sysfs, name, Access::SharedWrite)?;
        let mut members = Vec::new();
        for (kname, dev, device, index) in devices {
            members.push(MemberIo::new(kname, dev, device, index).map_err(|e| merr(name, "-", e))?);
        }
        let mut m = Managed {
            md,
            mon: Monitor::new(meta),
            members,
            watches: None,
            gone: false,
            readonly: false,
            pending: None,
        };
        m.rewatch()?;
        Ok(m)
    }

    fn rewatch(&mut self) -> Result<(), SysfsError> {
        self.watches = Some(Watches::open(&self.md, &self.members)?);
        Ok(())
    }

    /// Keep (or stop keeping) a read-only array read-only.
    pub fn set_readonly(&mut self, ro: bool) {
        self.readonly = ro;
    }

    /// The array's name.
    pub fn name(&self) -> &str {
        &self.mon.meta().name
    }

    /// The array's UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        self.mon.meta().uuid
    }

    /// The md device name.
    pub fn md_name(&self) -> &str {
        self.md.name()
    }

    /// The record the machine holds.
    pub fn meta(&self) -> &ArrayMeta {
        self.mon.meta()
    }

    /// The descriptors to poll (POLLPRI) for this array's notifications.
    pub fn watch_fds(&self) -> impl Iterator<Item = std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.watches.iter().flat_map(Watches::all).map(AsFd::as_fd)
    }

    /// Whether the md device has been stopped by someone else.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Read the kernel's state. `array_state` is read last: the kernel moves
    /// it to write-pending on failures and at the end of a resync without
    /// notifying it.
    pub fn snapshot(&self) -> Result<KernelView, SysfsError> {
        let md = &self.md;
        let w = self.watches.as_ref().ok_or(SysfsError::Read {
            attr: format!("block/{}/md", md.name()),
            errno: nix::errno::Errno::ENODEV,
        })?;
        let mut members = Vec::new();
        for m in &self.members {
            // A member md no longer lists (its state cannot be read) is
            // left out of the view.
            let Some(flags) = w
                .members
                .iter()
                .find(|(k, _)| *k == m.kname)
                .and_then(|(_, x)| parse_watch::<MemberFlags>(x).ok())
            else {
                continue;
            };
            let h = md.member(&m.kname);
            members.push(KernelMember {
                index: m.index,
                flags,
                slot: h.slot().unwrap_or(None),
                recovery_start: h.recovery_start().unwrap_or(Checkpoint::None),
            });
        }
        let degraded = parse_watch(&w.degraded)?;
        let sync_action = parse_watch(&w.sync_action)?;
        let sync_completed = parse_watch(&w.sync_completed)?;
        let resync_start = md.resync_start()?;
        let can_clear = md.can_clear().unwrap_or(None);
        let array_state = parse_watch(&w.array_state)?;
        Ok(KernelView {
            array_state,
            degraded,
            sync_action,
            sync_completed,
            resync_start,
            can_clear,
            members,
        })
    }

    /// React to whatever the kernel shows now. Called after any wake.
    /// Returns whether the array settled (the machine had nothing left to
    /// do); if not, the daemon must look again soon by itself, because md
    /// does not notify again for a write it already holds.
    pub fn wake(&mut self) -> bool {
        // Every snapshot reads each watched attribute once, which also
        // re-arms its notification.
        for _ in 0..MAX_BATCHES {
            if !self.md.sysfs().md_exists(self.md.name()) {
                self.gone = true;
                return true;
            }
            let view = match self.snapshot() {
                Ok(v) => v,
                Err(e) => {
                    self.gone = !self.md.sysfs().md_exists(self.md.name());
                    if self.gone || self.mon.stopping() {
                        // Stopping: the attributes go away under us.
                        debug!("{}: reading state: {e}", self.md.name());
                    } else {
                        warn!("{}: reading state: {e}", self.md.name());
                    }
                    return self.gone;
                }
            };
            if !view.array_state.is_running() {
                self.gone = matches!(view.array_state, ArrayState::Clear | ArrayState::Inactive)
                    && !self.mon.stopping();
                return true;
            }
            let batch = self.mon.observe(&view);
            if batch.is_empty() {
                // Settled. The assembly starts arrays read-only so that
                // nothing is written before we manage them; make it writable
                // now (a pending resync starts here).
                if matches!(
                    view.array_state,
                    ArrayState::Readonly | ArrayState::ReadAuto
                ) && !self.readonly
                {
                    if let Err(e) = self.md.set_array_state(ArrayState::Clean) {
                        warn!("{}: making it writable: {e}", self.md.name());
                        return false;
                    }
                    continue;
                }
                return true;
            }
            if !self.execute(batch) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        false
    }

    /// Run a batch in order; on the first failure feed it back and stop.
    fn execute(&mut self, batch: Vec<Action>) -> bool {
        let mut membership_changed = false;
        for (i, a) in batch.iter().enumerate() {
            debug!("{}: {a:?}", self.md.name());
            if let Err(e) = self.run_action(a, &mut membership_changed) {
                error!("{}: {e}", self.md.name());
                self.mon.action_failed(i);
                if membership_changed {
                    let _ = self.rewatch();
                }
                return false;
            }
        }
        if membership_changed {
            if let Err(e) = self.rewatch() {
                warn!("{}: re-opening watches: {e}", self.md.name());
            }
        }
        true
    }

    fn run_action(&mut self, a: &Action, membership_changed: &mut bool) -> Result<(), String> {
        let s = |e: SysfsError| e.to_string();
        match a {
            Action::WriteMetadata { meta, targets } => self.write_metadata(meta, targets),
            Action::SetCanClear(true) if failpoint("before-can-clear-true") => {
                // Test hook: die like SIGKILL between recording the array
                // whole and allowing the kernel to clear bits.
                error!(
                    "{}: failpoint before-can-clear-true: aborting",
                    self.md.name()
                );
                std::process::abort()
            }
            Action::SetCanClear(b) => self.md.set_can_clear(*b).map_err(s),
            Action::SetArrayState(st) => self.md.set_array_state(*st).map_err(s),
            Action::SetSyncAction(x) => self.md.set_sync_action(*x).map_err(s),
            Action::Member(i, cmd) => {
                let k = self
                    .members
                    .iter()
                    .find(|m| m.index == *i)
                    .map(|m| m.kname.clone())
                    .ok_or_else(|| format!("no device for member {i}"))?;
                self.md.member(&k).command(*cmd).map_err(s)?;
                if *cmd == MemberCommand::Remove {
                    info!("{}: removed {k} (slot {i})", self.md.name());
                    self.members.retain(|m| m.kname != k);
                    *membership_changed = true;
                }
                Ok(())
            }
            Action::AddDevice {
                index,
                bitmap_based,
            } => {
                let p = self
                    .pending
                    .take()
                    .filter(|p| p.index == *index)
                    .ok_or_else(|| format!("no device waiting to be added for slot {index}"))?;
                let kname = self.md.add_member(p.devnum).map_err(s)?;
                let h = self.md.member(&kname);
                let r = h
                    .set_offset(p.device.data_offset)
                    .and_then(|_| h.set_size(p.device.data_size.kib_floor()))
                    .and_then(|_| {
                        if *bitmap_based {
                            h.command(MemberCommand::InSync)
                        } else {
                            Ok(())
                        }
                    })
                    .and_then(|_| h.set_slot(Some(*index as u32)));
                // Keep it in the member list either way: the next snapshot
                // shows it and the machine removes a half-added device.
                self.members
                    .push(MemberIo::new(kname.clone(), p.dev, p.device, *index)?);
                *membership_changed = true;
                r.map_err(s)?;
                info!(
                    "{}: added {kname} in slot {index}, {} rebuild",
                    self.md.name(),
                    if *bitmap_based { "bitmap" } else { "full" }
                );
                Ok(())
            }
        }
    }

    /// Write the record durably to the listed members, in parallel.
    fn write_metadata(&self, meta: &ArrayMeta, targets: &[usize]) -> Result<(), String> {
        let mut next = meta.clone();
        next.utime = crate::meta::unix_now();
        let chosen: Vec<&MemberIo> = self
            .members
            .iter()
            .filter(|m| targets.contains(&m.index))
            .collect();
        // Hand every member its copy first, then collect: the writes run in
        // parallel on the members' writer threads.
        let mut sent = Vec::with_capacity(chosen.len());
        for m in &chosen {
            let sb = Superblock {
                array: next.clone(),
                device: m.device,
            };
            sent.push(
                m.writer
                    .jobs
                    .send(sb)
                    .map_err(|_| "writer thread gone".to_string()),
            );
        }
        let results: Vec<Result<usize, String>> = chosen
            .iter()
            .zip(sent)
            .map(|(m, s)| {
                s.and_then(|()| {
                    m.writer
                        .done
                        .recv()
                        .unwrap_or_else(|_| Err("writer thread gone".into()))
                })
            })
            .collect();
        let mut errs = Vec::new();
        for (m, r) in chosen.iter().zip(results) {
            if let Err(e) = r {
                errs.push(format!("{}: {e}", m.kname));
            }
        }
        if !errs.is_empty() {
            return Err(format!("metadata write failed: {}", errs.join("; ")));
        }
        debug!(
            "{}: recorded events {} on {} member(s) ({}, resync {}, events_cleared {})",
            self.md.name(),
            next.events,
            chosen.len(),
            if next.clean { "clean" } else { "dirty" },
            next.resync,
            next.bitmap.events_cleared
        );
        Ok(())
    }

    fn member_index_of_path(&self, device: &str) -> Result<usize, String> {
        let p = Path::new(device);
        let kname = if p.is_absolute() {
            let dev = DevNum::of_block_device(p).map_err(|e| format!("{device}: {e}"))?;
            self.md.sysfs().block_name(dev).map_err(|e| e.to_string())?
        } else {
            device.trim_start_matches("dev-").to_string()
        };
        self.members
            .iter()
            .find(|m| m.kname == kname)
            .map(|m| m.index)
            .ok_or_else(|| format!("{device} is not a member of {}", self.md.name()))
    }

    /// `mdextctl fail`.
    pub fn fail(&mut self, device: &str) -> Result<(), String> {
        let i = self.member_index_of_path(device)?;
        self.admin(AdminRequest::Fail(i))
    }

    /// `mdextctl remove`. The daemon removes failed members by itself (as
    /// mdmon does), so removing a device this array records as failed or
    /// missing and that md no longer holds succeeds with nothing to do.
    pub fn remove(&mut self, device: &str) -> Result<(), String> {
        match self.member_index_of_path(device) {
            Ok(i) => self.admin(AdminRequest::Remove(i)),
            Err(e) => {
                let sb = crate::device::read_superblock(Path::new(device))
                    .map_err(|_| e.clone())?
                    .superblock;
                let meta = self.mon.meta();
                let recorded_out = sb.array.uuid == meta.uuid
                    && meta.index_of(&sb.device.uuid).is_some_and(|i| {
                        matches!(
                            meta.members[i].state,
                            MemberState::Failed | MemberState::Missing
                        )
                    });
                if recorded_out {
                    info!("{}: {device} is already removed", self.md.name());
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// `mdextctl add`: a returning member (bitmap rebuild when its own record
    /// shows it missed no cleared bit) or a new device (full rebuild).
    pub fn add(&mut self, device: &str) -> Result<(), String> {
        let path = PathBuf::from(device);
        let meta = self.mon.meta().clone();
        // Exclusive open proves nobody uses it; it is closed again before
        // md opens it.
        let excl = Device::open(&path, Access::ExclusiveWrite).map_err(|e| e.to_string())?;
        if !excl.is_block() {
            return Err(format!("{device}: not a block device"));
        }
        let devnum = match excl.id() {
            crate::device::DevId::Block(r) => DevNum::from_raw(r),
            crate::device::DevId::File(..) => return Err(format!("{device}: not a block device")),
        };
        let size = excl.size();
        let own = excl.read_superblock().ok().map(|r| r.superblock);
        let foreign = crate::probe::probe(&excl).map_err(|e| e.to_string())?;
        drop(excl);
        let layout_offset = self
            .members
            .first()
            .map(|m| m.device.data_offset)
            .ok_or("no member left to copy the layout from")?;
        let (index, returning, device_meta) = match own {
            Some(sb) if sb.array.uuid == meta.uuid && meta.index_of(&sb.device.uuid).is_some() => {
                let i = meta.index_of(&sb.device.uuid).ok_or_else(|| {
                    format!("{device}: its member UUID is not in the array's table")
                })?;
                let own_state = sb
                    .array
                    .members
                    .get(i)
                    .map(|e| e.state)
                    .unwrap_or(MemberState::Missing);
                (
                    i,
                    ReturningDevice {
                        uuid: sb.device.uuid,
                        own: Some(OwnRecord {
                            events: sb.array.events,
                            state: own_state,
                        }),
                    },
                    sb.device,
                )
            }
            Some(sb) if sb.array.uuid != meta.uuid => {
                return Err(format!(
                    "{device}: belongs to another mdext array ({} {}); wipe it first",
                    sb.array.name, sb.array.uuid
                ))
            }
            // Blank, or an old member of this array whose place was taken:
            // a new member, fully rebuilt.
            _ => {
                if let Some(f) = foreign.iter().find(|f| !f.name.starts_with("mdext")) {
                    return Err(format!(
                        "{device}: carries a {} signature; wipe it first",
                        f.name
                    ));
                }
                let n = meta.geometry.raid_disks as usize;
                let i = (0..n)
                    .find(|&i| {
                        matches!(
                            meta.members[i].state,
                            MemberState::Failed | MemberState::Missing
                        ) && !self.members.iter().any(|m| m.index == i)
                    })
                    .ok_or("no failed or missing slot to rebuild")?;
                let data_size = Sectors(size.0 / 512)
                    .checked_sub(layout_offset)
                    .unwrap_or(Sectors(0));
                if data_size < meta.geometry.component_size {
                    return Err(format!(
                        "{device}: too small ({} of data, the array needs {})",
                        crate::units::human(data_size.bytes()),
                        crate::units::human(meta.geometry.component_size.bytes())
                    ));
                }
                (
                    i,
                    ReturningDevice {
                        uuid: uuid::Uuid::new_v4(),
                        own: None,
                    },
                    DeviceMeta {
                        uuid: uuid::Uuid::nil(),
                        data_offset: layout_offset,
                        data_size,
                    },
                )
            }
        };
        let mut device_meta = device_meta;
        device_meta.uuid = returning.uuid;
        let dev = Device::open(&path, Access::SharedWrite).map_err(|e| e.to_string())?;
        if returning.own.is_none() {
            // A new device: give it this array's bitmap area contents (the
            // kernel writes only dirty pages to it) and an empty metadata
            // area; its record is written once it is a member.
            self.prepare_new_device(&dev, &meta)?;
        }
        self.pending = Some(PendingAdd {
            index,
            devnum,
            dev,
            device: device_meta,
        });
        let r = self.admin(AdminRequest::ReAdd {
            index,
            device: returning,
        });
        self.pending = None;
        r
    }

    fn prepare_new_device(&self, dev: &Device, meta: &ArrayMeta) -> Result<(), String> {
        let src = self
            .members
            .first()
            .ok_or("no member to copy the bitmap from")?;
        let bits = src
            .dev
            .read_bitmap(&meta.bitmap)
            .map_err(|e| e.to_string())?;
        dev.zero(0, crate::format::META_AREA as u64)
            .map_err(|e| e.to_string())?;
        dev.write_bitmap(&meta.bitmap, &bits)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn admin(&mut self, req: AdminRequest) -> Result<(), String> {
        // Settle first: the machine refuses requests while it has work.
        self.wake();
        let view = self.snapshot().map_err(|e| e.to_string())?;
        let batch = self
            .mon
            .step(Event::Admin(req, view))
            .map_err(|e| format!("{}: {e}", self.md.name()))?;
        let ok = self.execute(batch);
        self.wake();
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{}: the request failed part-way; see mdextmon's log",
                self.md.name()
            ))
        }
    }

    /// Try to leave the array clean (SIGTERM, release). True when the
    /// metadata records clean and the kernel agrees.
    pub fn make_clean(&mut self) -> bool {
        if !self.md.sysfs().md_exists(self.md.name()) {
            return true;
        }
        self.wake();
        if let Ok(ArrayState::Active | ArrayState::ActiveIdle) = self.md.array_state() {
            let _ = self.md.set_array_state(ArrayState::Clean);
            self.wake();
        }
        match self.md.array_state() {
            Ok(ArrayState::Clean | ArrayState::Readonly | ArrayState::ReadAuto) => {
                self.mon.meta().clean
            }
            Ok(ArrayState::Inactive | ArrayState::Clear) | Err(_) => true,
            _ => false,
        }
    }

    /// Mark clean and stop the md device.
    pub fn stop(&mut self) -> Result<(), String> {
        let name = self.md.name().to_string();
        // md refuses to stop an array somebody has open; say so before
        // anything changes.
        if let Err(crate::device::DeviceError::Busy(_)) =
            Device::open(&self.md.dev_path(), Access::ExclusiveWrite)
        {
            return Err(format!(
                "{name}: in use (mounted, or held open); not stopped"
            ));
        }
        let t0 = Instant::now();
        while !self.make_clean() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("{name}: writes still in flight; not stopped"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.admin(AdminRequest::Stop)?;
        let t0 = Instant::now();
        while self.md.array_state().is_ok_and(|s| s.is_running()) {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("{name}: did not stop"));
            }
            std::thread::sleep(Duration::from_millis(50));
            self.wake();
        }
        self.watches = None;
        crate::assembly::teardown(self.md.sysfs(), &self.md).map_err(|e| e.to_string())?;
        info!(
            "{name}: stopped, metadata clean at events {}",
            self.mon.meta().events
        );
        Ok(())
    }

    /// A JSON summary (for `status` and `detail`).
    pub fn status(&self) -> serde_json::Value {
        let devices: Vec<(usize, &str)> = self
            .members
            .iter()
            .map(|m| (m.index, m.kname.as_str()))
            .collect();
        status_json(&self.md, self.mon.meta(), &devices)
    }
}

/// Fault injection for the guest tests: `MDEXT_FAILPOINT=<name>` in the
/// daemon's environment makes it stop dead at that point.
fn failpoint(name: &str) -> bool {
    std::env::var("MDEXT_FAILPOINT").is_ok_and(|v| v == name)
}
