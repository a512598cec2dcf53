//! One array under mdextmon's management: the I/O around the pure state
//! machine ([`crate::monitor`]). It reads a snapshot of the array's sysfs
//! state, feeds it to the machine, and carries out the returned actions in
//! order, stopping at the first failure and feeding it back. No decisions
//! about metadata are taken here.

use crate::device::{Access, Device, DeviceError};
use crate::events::Facts;
use crate::md::{ArrayState, Checkpoint, MemberCommand};
use crate::meta::{ArrayMeta, DeviceMeta, MemberState, Superblock};
use crate::monitor::{
    Action, AdminRequest, DeviceFacts, Event, KernelMember, KernelView, Monitor, Refusal,
};
use crate::status::{ArrayStatus, KernelState};
use crate::sysfs::{DevNum, HeldMd, Liveness, MdDev, Sysfs, SysfsError};
use crate::units::Sectors;
use log::{debug, error, info, warn};
use std::path::{Path, PathBuf};
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
    /// Somebody holds the md device open (mounted, or held open).
    #[error("{md}: in use (mounted, or held open); not stopped")]
    InUse {
        /// md device.
        md: String,
    },
    /// An operation failed; the message names the array and the step.
    #[error("{0}")]
    Failed(String),
    /// The state machine refused an admin request; nothing was changed.
    #[error("{md}: {}{reason}", device.as_deref().map(|d| format!("{d}: ")).unwrap_or_default())]
    Refused {
        /// md device.
        md: String,
        /// The device the request named, if any.
        device: Option<String>,
        /// Why.
        reason: Refusal,
    },
    /// The device named is not one of the array's members.
    #[error("{device} is not a member of {md}")]
    NotMember {
        /// md device.
        md: String,
        /// What the admin named.
        device: String,
    },
    /// The device named cannot be used (missing, busy, not a block
    /// device, unreadable).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The device named is a regular file, not a block device.
    #[error("{0}: not a block device")]
    NotBlock(String),
    /// Signature probing failed.
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    /// An action of the request's batch failed; what ran before it stays
    /// done, and the daemon finishes or undoes the rest by itself.
    #[error("{md}: the request failed part-way: {source}")]
    PartFailed {
        /// md device.
        md: String,
        /// The failure.
        #[source]
        source: ExecError,
    },
}

impl ManagedError {
    /// Whether nothing was changed (a refusal), as opposed to a failure.
    pub fn changed_nothing(&self) -> bool {
        matches!(
            self,
            ManagedError::NotMdext { .. }
                | ManagedError::Mixed { .. }
                | ManagedError::Refused { .. }
                | ManagedError::NotMember { .. }
                | ManagedError::Device(_)
                | ManagedError::NotBlock(_)
        )
    }
}

/// Why one action of a batch failed (the executor's errors).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A sysfs write or read.
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// A member device's I/O.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The metadata write failed on these members (each with its error).
    #[error("metadata write failed: {}", .0.iter().map(|(m, e)| format!("{m}: {e}")).collect::<Vec<_>>().join("; "))]
    MetadataWrite(Vec<(String, ExecError)>),
    /// No device holds this table index.
    #[error("no device for member {0}")]
    NoMember(usize),
    /// No device waits to be added for this slot.
    #[error("no device waiting to be added for slot {0}")]
    NoPending(usize),
    /// A slot number md cannot take (past `u32`).
    #[error("slot {0} out of range")]
    SlotRange(usize),
    /// A member's writer thread could not start or is gone.
    #[error("{0}: writer thread: {1}")]
    Writer(String, String),
    /// No member is left to copy the layout or the bitmap from.
    #[error("no member left to copy the bitmap from")]
    NoSourceMember,
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
    /// A metadata copy index found invalid on some member (the next write
    /// goes there: [`crate::format::damaged_copy`]).
    pub rewrite: Option<usize>,
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
        let mut copies = Vec::new();
        for kname in md.members() {
            let path = PathBuf::from("/dev").join(&kname);
            let dev = Device::open(&path, access).map_err(|e| merr(name, &kname, e.to_string()))?;
            let outcome = dev
                .read_superblock()
                .map_err(|e| merr(name, &kname, e.to_string()))?;
            copies.push([
                outcome.copy_errors[0].is_none(),
                outcome.copy_errors[1].is_none(),
            ]);
            let sb = outcome.superblock;
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
        Ok(Record {
            md,
            meta,
            devices,
            rewrite: crate::format::damaged_copy(copies),
        })
    }

    /// The array's status (for `status` and `detail`).
    pub fn status(&self) -> ArrayStatus {
        let devices: Vec<(usize, &str)> =
            self.devices.iter().map(|d| (d.3, d.0.as_str())).collect();
        ArrayStatus::new(
            self.md.name(),
            &self.meta,
            &devices,
            &kernel_state(&self.md),
        )
    }
}

/// What the kernel shows of an array, for its status (unreadable values
/// stay empty).
fn kernel_state(md: &MdDev) -> KernelState {
    KernelState {
        array_state: md.array_state().ok(),
        degraded: md.degraded().ok(),
        sync_action: md.sync_action().ok(),
        sync_completed: md.sync_completed().ok(),
        can_clear: md.can_clear().ok().flatten(),
    }
}

/// A member's metadata I/O handle (its records are written on the
/// shared pool, [`crate::writers`]).
struct MemberIo {
    kname: String,
    dev: Arc<Device>,
    device: DeviceMeta,
    index: usize,
}

/// How many times an admin request is retried after the array moved on
/// between settling and the request's snapshot (each retry first runs the
/// machine's own batch).
const ADMIN_SETTLE_ATTEMPTS: u32 = 50;

impl MemberIo {
    fn new(
        kname: String,
        dev: Device,
        device: DeviceMeta,
        index: usize,
    ) -> Result<MemberIo, ExecError> {
        Ok(MemberIo {
            kname,
            dev: Arc::new(dev),
            device,
            index,
        })
    }
}

/// A stop under way ([`Managed::stop_begin`]).
#[derive(Debug, Clone, Copy)]
pub struct Stopping {
    since: Instant,
    /// When the machine was asked to stop (the array was clean).
    asked: Option<Instant>,
    /// md refused the stop as busy: since when, and when to ask again.
    busy: Option<(Instant, Instant)>,
}

/// How long a stop md refuses as busy (the array open, but not
/// exclusively) is asked again: a program that opens the device for a
/// moment (udev's probe after a write, `blkid`) is gone by then; one that
/// holds it open gets "in use". mdadm's `--stop` retries for as long.
pub const STOP_BUSY_RETRY: Duration = Duration::from_secs(5);

/// How often a stop md refused as busy is asked again.
pub const STOP_BUSY_EVERY: Duration = Duration::from_millis(200);

/// How long a stop waits for writes to drain, and then for md to stop.
pub const STOP_DRAIN: Duration = Duration::from_secs(10);

/// How often a stop under way is looked at without a notification.
pub const STOP_STEP: Duration = Duration::from_millis(50);

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
    /// Every attribute read or written, held open from take-over on (so a
    /// daemon whose `/sys` path vanished keeps working); `None` once the
    /// daemon stopped the array itself.
    ///
    /// Reading a held attribute re-arms its notification: md's
    /// notification since the last read is spent by any read, and poll(2)
    /// reports nothing more. So every read of them is one [`Managed::wake`]
    /// acts on (or is followed by a wake), never a read for show: a status
    /// request that read `array_state` just after md moved it to
    /// `write-pending` left the held write unannounced, and the daemon
    /// asleep beside it. Status comes from `seen`.
    held: Option<HeldMd>,
    gone: bool,
    readonly: bool,
    pending: Option<PendingAdd>,
    /// What the last look showed, for [`crate::events::events`].
    facts: Option<Facts>,
    /// Events not yet taken by the daemon ([`Managed::take_events`]).
    events: Vec<crate::events::Event>,
    /// Members whose last metadata write failed, with the error.
    write_failed: Vec<(String, String)>,
    /// Where the writer pool answers this array's record writes.
    answers: crate::writers::Answers,
    /// When the last look was taken.
    looked_at: Option<std::time::Instant>,
    /// How long after `looked_at` the next check without a notification
    /// is due: doubled by every check or look that finds steady writes, up
    /// to [`BUSY_RECHECK_MAX`]; [`BUSY_RECHECK`] after a look that finds
    /// anything else.
    recheck_every: Duration,
    /// A `write-pending` was answered at once and no look has been taken
    /// since: when the next check is due (the array's next notification
    /// brings a whole look first). While such a check finds md `active`
    /// it is one read ([`Managed::recheck`]).
    look_after: Option<std::time::Instant>,
    /// What the last look showed of the kernel (for status, and for when
    /// to look again).
    seen: KernelState,
    /// The spare-group need the machine saw when it last settled.
    need: crate::monitor::SpareNeed,
    /// A batch waiting for its record writes ([`Managed::set_deferred`]).
    inflight: Option<Inflight>,
    /// Whether [`Managed::wake`] may leave a batch waiting for its record
    /// writes (the daemon, which collects them: [`Managed::pump`]).
    deferred: bool,
    /// The record last written durably to every target (`None` at start
    /// and after a failed write): what the next record's need for a flush
    /// before it is judged against ([`ArrayMeta::needs_flush_before`]).
    durable: Option<ArrayMeta>,
    /// Whether the held notifiers were handed out to be watched since they
    /// were last opened ([`Managed::watch_new`]).
    watched: bool,
}

/// A batch stopped at a record write whose answers have not all come.
struct Inflight {
    batch: Vec<Action>,
    /// The `WriteMetadata` action waiting.
    at: usize,
    membership_changed: bool,
    write: RecordWrite,
    /// `None` when the loop is to wake for the answers as they come;
    /// otherwise when to collect them ([`Managed::recheck_due`]), unless
    /// the array wakes first. For a record last in its batch that nothing
    /// waits on: the one that only marks the array dirty (md's write was
    /// answered already) at the array's next check, and the one that
    /// only marks it clean again [`COLLECT_CLEAN`] later, when every
    /// member's copy is normally in: one wake for the record, not one per
    /// member's answer. A notification, a request, a stop or the time
    /// passing makes it urgent ([`Managed::hasten`]).
    collect_at: Option<std::time::Instant>,
}

/// One record being written to an array's members.
struct RecordWrite {
    next: ArrayMeta,
    /// Kernel names of the members written, in tag order.
    names: Vec<String>,
    results: Vec<Result<(), ExecError>>,
    outstanding: usize,
    /// Whether the device being added is among the targets.
    pending: bool,
    /// Whether the members' earlier writes were made durable first.
    preflush: bool,
}

impl RecordWrite {
    /// One member's answer.
    fn take(&mut self, (k, r): crate::writers::Answer) {
        if let Some(slot) = self.results.get_mut(k) {
            *slot = r.map(|_| ()).map_err(ExecError::Device);
            self.outstanding = self.outstanding.saturating_sub(1);
        }
    }
}

/// How a batch run ended.
enum Run {
    Done(Result<(), ExecError>),
    /// Left waiting for record writes ([`Managed::pump`] goes on).
    Waiting,
}

/// How often an array last seen writable and not clean (`active`,
/// `active-idle`, `write-pending`) is looked at again without a
/// notification. md's notifications are edges, and at least one of its
/// transitions is silent (a write resets `active-idle` to `active`
/// without one). Systemd guests under load showed the daemon asleep in
/// poll(2) while md held a write in `write-pending`; the cause found was
/// the daemon's own reads for its status (see the `held` field), which
/// spent the notification. This check stays as a second line. A clean
/// array waits for notifications alone: no timer runs while nothing is
/// written.
pub const BUSY_RECHECK: Duration = Duration::from_secs(1);

/// The longest interval between those checks while they find the array
/// under steady writes (`active`, no sync): each such check, and each look
/// that finds them (the look after md's first write, the one after its
/// record), doubles the interval from [`BUSY_RECHECK`]; a look that finds
/// anything else resets it.
/// Steady writes then cost one wake in 8 s (the bench counts the daemon's
/// CPU during its write runs; mdmon has no such check at all).
pub const BUSY_RECHECK_MAX: Duration = Duration::from_secs(8);

/// How long after answering md's first write after clean at once the
/// array is checked (unless it notifies first, which brings a whole look).
/// The released writer runs first: traced on one CPU (TCG), a look at once
/// ran while the writer waited to run, 1.8-3 ms of a 6 ms write; the
/// scheduler favours the daemon, which had slept. Nothing is recorded for
/// the writes themselves (md's bits cover them,
/// [`crate::monitor::Monitor::observe`]); the check is the one an array
/// under steady writes gets ([`BUSY_RECHECK_MAX`], and again as long as it
/// finds md `active`): one read of `array_state`, a whole look otherwise.
/// It starts at the longest interval, not at [`BUSY_RECHECK`]: the
/// daemon knows what md did (a first write, answered, nothing to record),
/// and everything else md does meanwhile notifies (a failure, a resync,
/// the writes' end as `active-idle`) and brings a whole look at once. The
/// check only bounds a lost notification, as under steady writes. Checks
/// at 1 and 3 s were two of the five wakes a 5 s burst of writes cost
/// (schedstat in the guest: 0.5 ms of CPU each under TCG).
pub const ANSWER_LOOK_DELAY: Duration = BUSY_RECHECK_MAX;

/// When the answers of the record that marks an array clean again are
/// collected (unless the array wakes first): its copies go to every member
/// at once and all normally answer within a few milliseconds; collected
/// together, they cost one wake. Answers not all in by then wake the loop
/// as they come.
pub const COLLECT_CLEAN: Duration = Duration::from_millis(20);

/// Most batches run for one wake (each batch is followed by a fresh
/// snapshot because the kernel does not notify everything our actions
/// cause); a stable array needs one empty batch.
const MAX_BATCHES: usize = 16;

/// How many times the record of an array stopped under the daemon is
/// tried before the array is let go.
const STOPPED_ATTEMPTS: usize = 3;

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
        let Record {
            md,
            meta,
            devices,
            rewrite,
        } = Record::read(sysfs, name, Access::SharedWrite)?;
        let mut members = Vec::new();
        for (kname, dev, device, index) in devices {
            members.push(
                MemberIo::new(kname, dev, device, index)
                    .map_err(|e| merr(name, "-", e.to_string()))?,
            );
        }
        let knames: Vec<&str> = members.iter().map(|m| m.kname.as_str()).collect();
        let held = HeldMd::open(&md, &knames)?;
        let m = Managed {
            md,
            mon: Monitor::resume(meta, rewrite),
            members,
            held: Some(held),
            gone: false,
            readonly: false,
            pending: None,
            facts: None,
            events: Vec::new(),
            write_failed: Vec::new(),
            answers: crate::writers::Answers::default(),
            looked_at: None,
            recheck_every: BUSY_RECHECK,
            look_after: None,
            seen: KernelState::default(),
            need: crate::monitor::SpareNeed::default(),
            inflight: None,
            deferred: false,
            durable: None,
            watched: false,
        };
        Ok(m)
    }

    /// After the member list changed: hold the attributes of members that
    /// appeared (opened by path: a member is added by an admin, with a
    /// working root), close those of members that left. The array's own
    /// attributes stay as opened at take-over.
    fn rehold_members(&mut self) {
        self.watched = false;
        let Some(h) = self.held.as_mut() else { return };
        for k in h.member_names() {
            if !self.members.iter().any(|m| m.kname == k) {
                h.drop_member(&k);
            }
        }
        for m in &self.members {
            if !h.has_member(&m.kname) {
                if let Err(e) = h.open_member(&self.md, &m.kname) {
                    warn!("{}: holding {}'s attributes: {e}", self.md.name(), m.kname);
                }
            }
        }
    }

    fn held(&self) -> Result<&HeldMd, SysfsError> {
        self.held.as_ref().ok_or_else(|| SysfsError::Read {
            attr: format!("block/{}/md", self.md.name()),
            errno: nix::errno::Errno::ENODEV,
        })
    }

    /// Keep (or stop keeping) a read-only array read-only.
    pub fn set_readonly(&mut self, ro: bool) {
        self.readonly = ro;
    }

    /// When the array is due for a look without a notification: once
    /// [`BUSY_RECHECK`] has passed since the last look (up to
    /// [`BUSY_RECHECK_MAX`] under steady writes), if that look showed it
    /// writable and not clean; and when the answers of a record nobody
    /// waits on are to be collected. `None` for a clean, read-only or
    /// stopped array with no such record under way.
    pub fn recheck_due(&self) -> Option<std::time::Instant> {
        let collect = self.inflight.as_ref().and_then(|f| f.collect_at);
        let check = if self.look_after.is_some() {
            self.look_after
        } else {
            match (self.seen.array_state, self.looked_at) {
                (
                    Some(ArrayState::Active | ArrayState::ActiveIdle | ArrayState::WritePending),
                    Some(at),
                ) if !self.gone => Some(at + self.recheck_every),
                _ => None,
            }
        };
        collect.into_iter().chain(check).min()
    }

    /// Look again without a notification ([`Managed::recheck_due`]). A
    /// write md holds that no notification announced is logged: it is
    /// the case this check exists for.
    ///
    /// Under steady writes the check costs one read: when md shows `active`
    /// as the last look did (or as the daemon's own answer to
    /// `write-pending` left it, with no notification since), with no
    /// resync or recovery running, nothing the check guards against
    /// happened (a held write, a failure, a resync's end all show as
    /// `write-pending`; anything else is announced), and the whole look is
    /// skipped until the next check.
    pub fn recheck(&mut self) -> bool {
        if self.inflight.is_some() {
            return self.wake();
        }
        let answered = self.look_after.is_some();
        let before = if answered {
            Some(ArrayState::Active)
        } else {
            self.seen.array_state
        };
        match self.held().and_then(HeldMd::array_state) {
            Ok(ArrayState::WritePending) if before != Some(ArrayState::WritePending) => {
                warn!(
                    "{}: a write held in write-pending was found by the periodic check (last seen: {}), not announced by a notification",
                    self.md.name(),
                    before.map_or("none", |s| s.as_str())
                );
            }
            Ok(ArrayState::Active)
                if before == Some(ArrayState::Active)
                    && self.seen.sync_action == Some(crate::md::SyncAction::Idle) =>
            {
                let now = std::time::Instant::now();
                // After an answer at once the checks stay at the longest
                // interval ([`ANSWER_LOOK_DELAY`]).
                self.recheck_every = if answered {
                    BUSY_RECHECK_MAX
                } else {
                    (self.recheck_every * 2).min(BUSY_RECHECK_MAX)
                };
                if answered {
                    self.look_after = Some(now + self.recheck_every);
                } else {
                    self.looked_at = Some(now);
                }
                return true;
            }
            _ => {}
        }
        self.wake()
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
        self.held
            .iter()
            .flat_map(HeldMd::notifiers)
            .map(AsFd::as_fd)
    }

    /// The descriptors of [`Managed::watch_fds`] when they are new since
    /// the last call (the array came, or its attributes were opened again
    /// after its members changed), to be registered in the daemon's wait
    /// set ([`crate::waitset::WaitSet::arrays`]) once, not on every wait.
    /// `None` when nothing new is held.
    pub fn watch_new(&mut self) -> Option<Vec<std::os::fd::BorrowedFd<'_>>> {
        if self.watched || self.held.is_none() {
            return None;
        }
        self.watched = true;
        Some(self.watch_fds().collect())
    }

    /// Let [`Managed::wake`] leave a batch waiting for its record writes
    /// (the caller collects them with [`Managed::pump`] when the writer
    /// pool's notifier is readable). Without it every write is waited for.
    pub fn set_deferred(&mut self, on: bool) {
        self.deferred = on && crate::writers::pool().notifier().is_some();
    }

    /// Whether a batch is waiting for record writes.
    pub fn busy(&self) -> bool {
        self.inflight.is_some()
    }

    /// Whether a batch waits for record writes whose answers the loop is
    /// to wake for (the pool's notifier is then worth polling).
    pub fn awaits_answers(&self) -> bool {
        self.inflight
            .as_ref()
            .is_some_and(|f| f.collect_at.is_none())
    }

    /// Make a waiting batch's answers urgent (a request or a stop waits
    /// for the array).
    pub fn hasten(&mut self) {
        if let Some(f) = self.inflight.as_mut() {
            f.collect_at = None;
        }
    }

    /// Collect the record writes' answers that have come; once all have,
    /// go on with the batch, and then look again ([`Managed::wake`]) if
    /// `look` (a caller about to run a request on the array passes false:
    /// the request looks itself). Returns as `wake` does (true also while
    /// still waiting).
    pub fn pump(&mut self, look: bool) -> bool {
        let Some(mut f) = self.inflight.take() else {
            return true;
        };
        // Answers that did not wake the loop (a batch not urgent) may
        // still be in the ring's completion queue.
        crate::writers::pool().reap();
        while f.write.outstanding > 0 {
            let Some(a) = self.answers.try_next() else {
                break;
            };
            f.write.take(a);
        }
        if f.write.outstanding > 0 {
            self.inflight = Some(f);
            return true;
        }
        match self.resume(f, true) {
            Run::Waiting => true,
            Run::Done(Ok(())) if !look => true,
            Run::Done(Ok(())) => self.wake(),
            Run::Done(Err(_)) if !look => false,
            Run::Done(Err(_)) => {
                // As in `look`: a short pause, then a fresh look.
                std::thread::sleep(Duration::from_millis(50));
                self.wake()
            }
        }
    }

    /// Finish a waiting batch here, waiting for its writes (before
    /// anything that runs the machine synchronously, or a handover).
    pub fn finish(&mut self) {
        if let Some(mut f) = self.inflight.take() {
            self.write_wait(&mut f.write);
            let _ = self.resume(f, false);
        }
    }

    /// Look at the array and run what the machine decides, waiting for
    /// every record write (for admin requests, a stop, a release).
    fn settle(&mut self) -> bool {
        self.finish();
        self.look(false)
    }

    /// Whether the md device has been stopped by someone else.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Map each member device to its table index through its UUID in the
    /// machine's record: a spare that took a slot moves to that slot's
    /// index once it is recorded there.
    fn remap(&mut self) {
        let meta = self.mon.meta();
        for m in &mut self.members {
            if let Some(i) = meta.index_of(&m.device.uuid) {
                m.index = i;
            }
        }
    }

    /// Read the kernel's state. `array_state` is read last: the kernel moves
    /// it to write-pending on failures and at the end of a resync without
    /// notifying it.
    pub fn snapshot(&self) -> Result<KernelView, SysfsError> {
        let h = self.held()?;
        let mut members = Vec::new();
        for m in &self.members {
            // A member md no longer lists (its state cannot be read) is
            // left out of the view.
            let Some(k) = h.member(&m.kname) else {
                continue;
            };
            let Ok(flags) = k.flags() else { continue };
            members.push(KernelMember {
                index: m.index,
                flags,
                slot: k.slot().unwrap_or(None),
                recovery_start: k.recovery_start().unwrap_or(Checkpoint::None),
            });
        }
        let degraded = h.degraded()?;
        let sync_action = h.sync_action()?;
        let sync_completed = h.sync_completed()?;
        let resync_start = h.resync_start()?;
        let can_clear = h.can_clear().unwrap_or(None);
        let time_base = h.time_base().unwrap_or(None);
        let array_state = h.array_state()?;
        Ok(KernelView {
            array_state,
            degraded,
            sync_action,
            sync_completed,
            resync_start,
            can_clear,
            time_base,
            members,
        })
    }

    /// React to whatever the kernel shows now. Called after any wake.
    /// Returns whether the array settled (the machine had nothing left to
    /// do); if not, the daemon must look again soon by itself, because md
    /// does not notify again for a write it already holds.
    pub fn wake(&mut self) -> bool {
        if self.inflight.is_some() {
            if self.deferred {
                // The answers already in (of a record nobody waited for)
                // let the batch go on, and it looks again then. Otherwise
                // they are urgent now, and the batch goes on when they are
                // in; this notification is spent here (every watched
                // attribute read once) so that it does not wake the daemon
                // over and over meanwhile.
                self.hasten();
                let r = self.pump(true);
                if self
                    .inflight
                    .as_ref()
                    .is_some_and(|f| f.write.outstanding > 0)
                {
                    let _ = self.snapshot();
                }
                return r;
            }
            self.finish();
        }
        self.look(self.deferred)
    }

    /// md's first write after clean, answered before the look where the
    /// machine allows it ([`Monitor::may_answer_at_once`]): one read of
    /// `array_state` and, if it reads `write-pending`, `active` (then one
    /// more read, which spends the notification the write itself caused).
    /// True if answered: the array is checked [`ANSWER_LOOK_DELAY`] later
    /// (one read while md stays `active`, [`Managed::recheck`]), or looked
    /// at whole at its next notification. A failure is logged and the look
    /// comes at once.
    fn answer_at_once(&mut self) -> bool {
        if !self.mon.may_answer_at_once() {
            return false;
        }
        let Ok(h) = self.held() else { return false };
        if let Ok(ArrayState::WritePending) = h.array_state() {
            if let Err(e) = h.set_array_state(ArrayState::Active) {
                warn!("{}: answering write-pending: {e}", self.md.name());
                return false;
            }
            let _ = h.array_state();
            return true;
        }
        false
    }

    /// [`Managed::wake`]'s work; `defer` lets a batch wait for its record
    /// writes.
    fn look(&mut self, defer: bool) -> bool {
        if self.look_after.take().is_none() && self.answer_at_once() {
            self.look_after = Some(std::time::Instant::now() + ANSWER_LOOK_DELAY);
            return true;
        }
        // Every snapshot reads each watched attribute once, which also
        // re-arms its notification. Only the held attributes are read: the
        // `/sys` path may no longer resolve (a daemon left in the
        // initramfs's root after switch-root), and its absence says nothing
        // about the array.
        let mut first = true;
        for _ in 0..MAX_BATCHES {
            if self.gone {
                return true;
            }
            self.remap();
            let view = match self.snapshot() {
                Ok(v) => v,
                Err(e) => match self.held().map(HeldMd::liveness) {
                    // Stopped under us: the rest of the view is gone with it.
                    Ok(Liveness::Stopped(st)) => KernelView::stopped(st),
                    _ => {
                        if self.mon.stopping() {
                            // Stopping: the attributes go away under us.
                            debug!("{}: reading state: {e}", self.md.name());
                        } else {
                            warn!("{}: reading state: {e}", self.md.name());
                        }
                        return false;
                    }
                },
            };
            self.looked_at = Some(std::time::Instant::now());
            // A look that finds steady writes (as the look after md's
            // first write usually does) spaces the checks out as a check
            // that finds them does; anything else brings them back to
            // BUSY_RECHECK.
            let steady = view.array_state == ArrayState::Active
                && view.sync_action == crate::md::SyncAction::Idle;
            self.recheck_every = match (steady, first) {
                (true, true) => (self.recheck_every * 2).min(BUSY_RECHECK_MAX),
                (true, false) => self.recheck_every,
                (false, _) => BUSY_RECHECK,
            };
            first = false;
            self.seen = KernelState {
                array_state: Some(view.array_state),
                degraded: Some(view.degraded),
                sync_action: Some(view.sync_action),
                sync_completed: Some(view.sync_completed),
                can_clear: view.can_clear,
            };
            if !view.array_state.is_running() {
                self.stopped(&view);
                return true;
            }
            self.note(&view);
            let batch = self.mon.observe(&view);
            self.need = if batch.is_empty() {
                self.mon.spare_need(&view)
            } else {
                crate::monitor::SpareNeed::default()
            };
            if batch.is_empty() {
                // Settled. The assembly starts arrays read-only so that
                // nothing is written before we manage them; make it writable
                // now (a pending resync starts here).
                if matches!(
                    view.array_state,
                    ArrayState::Readonly | ArrayState::ReadAuto
                ) && !self.readonly
                {
                    let r = self
                        .held()
                        .and_then(|h| h.set_array_state(ArrayState::Clean));
                    if let Err(e) = r {
                        warn!("{}: making it writable: {e}", self.md.name());
                        return false;
                    }
                    continue;
                }
                return true;
            }
            match self.run_batch(batch, 0, false, defer) {
                Run::Waiting => return true,
                Run::Done(Ok(())) => {}
                Run::Done(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        false
    }

    /// The kernel shows the array stopped. Stopped by somebody else: let
    /// the machine record what it decides (clean: md drained everything
    /// before stopping), once, then forget the array. Stopped by this
    /// daemon ([`Managed::stop`]): `stop` finishes the job.
    fn stopped(&mut self, view: &KernelView) {
        let by_us = self.mon.stopping();
        // A failed write is fed back and retried a few times (the machine
        // aims the retry at the same copy); then the array is let go.
        for _ in 0..STOPPED_ATTEMPTS {
            let batch = self.mon.observe(view);
            if batch.is_empty() {
                break;
            }
            match self.execute(batch) {
                Ok(()) => info!(
                    "{}: stopped{}; metadata recorded clean at events {}",
                    self.md.name(),
                    if by_us { "" } else { " by someone else" },
                    self.mon.meta().events
                ),
                Err(e) => error!(
                    "{}: stopped; recording it clean failed: {e}",
                    self.md.name()
                ),
            }
        }
        if !by_us {
            self.gone = true;
            self.held = None;
            self.watched = false;
        }
    }

    /// Compare what `view` and the record show with the last look, and
    /// queue the events ([`crate::events::events`]).
    fn note(&mut self, view: &KernelView) {
        let devices: Vec<(usize, &str)> = self
            .members
            .iter()
            .map(|m| (m.index, m.kname.as_str()))
            .collect();
        let f = Facts::new(
            self.md.name(),
            self.mon.meta(),
            &devices,
            Some(view),
            &self.write_failed,
        );
        if self.facts.as_ref() != Some(&f) {
            self.events
                .extend(crate::events::events(self.facts.as_ref(), &f));
            self.facts = Some(f);
        }
    }

    /// The events found since the last call (the daemon reports them).
    pub fn take_events(&mut self) -> Vec<crate::events::Event> {
        std::mem::take(&mut self.events)
    }

    /// Run a batch in order, waiting for every record write; on the first
    /// failure feed it back and stop.
    fn execute(&mut self, batch: Vec<Action>) -> Result<(), ExecError> {
        self.finish();
        match self.run_batch(batch, 0, false, false) {
            Run::Done(r) => r,
            // Not deferred: never left waiting.
            Run::Waiting => Ok(()),
        }
    }

    /// Run `batch` from action `from`. A record write is handed to the
    /// writer pool; with `defer` the batch is then left waiting in
    /// `inflight` ([`Managed::pump`] resumes it), otherwise its answers
    /// are waited for here.
    fn run_batch(
        &mut self,
        batch: Vec<Action>,
        from: usize,
        mut changed: bool,
        defer: bool,
    ) -> Run {
        for i in from..batch.len() {
            let a = &batch[i];
            debug!("{}: {a:?}", self.md.name());
            let r = match a {
                Action::WriteMetadata { meta, targets } if defer => {
                    let last = i + 1 == batch.len();
                    let prev = self.durable.as_ref();
                    let collect_at = if last && prev.is_some_and(|d| meta.marks_dirty_only(d)) {
                        Some(std::time::Instant::now() + self.recheck_every)
                    } else if last && prev.is_some_and(|d| meta.marks_clean_only(d)) {
                        Some(std::time::Instant::now() + COLLECT_CLEAN)
                    } else {
                        None
                    };
                    match self.write_begin(meta, targets) {
                        Ok(w) if w.outstanding > 0 => {
                            self.inflight = Some(Inflight {
                                batch,
                                at: i,
                                membership_changed: changed,
                                write: w,
                                collect_at,
                            });
                            return Run::Waiting;
                        }
                        r => r.and_then(|w| self.write_end(w)),
                    }
                }
                _ => self.run_action(a, &mut changed),
            };
            if let Err(e) = self.after_action(i, a, r, changed) {
                return Run::Done(Err(e));
            }
        }
        if changed {
            self.rehold_members();
        }
        Run::Done(Ok(()))
    }

    /// Go on with a batch whose record writes have all answered.
    fn resume(&mut self, f: Inflight, defer: bool) -> Run {
        let Inflight {
            batch,
            at,
            membership_changed,
            write,
            collect_at: _,
        } = f;
        let r = self.write_end(write);
        if let Some(a) = batch.get(at) {
            if let Err(e) = self.after_action(at, a, r, membership_changed) {
                return Run::Done(Err(e));
            }
        }
        self.run_batch(batch, at + 1, membership_changed, defer)
    }

    /// What follows action `i`'s result: a record write's failures are
    /// kept for the events; a failure is fed back to the machine.
    fn after_action(
        &mut self,
        i: usize,
        a: &Action,
        r: Result<(), ExecError>,
        membership_changed: bool,
    ) -> Result<(), ExecError> {
        if let Action::WriteMetadata { .. } = a {
            self.write_failed = match &r {
                Err(ExecError::MetadataWrite(errs)) => errs
                    .iter()
                    .map(|(m, e)| (dev_path(m), e.to_string()))
                    .collect(),
                _ => Vec::new(),
            };
        }
        if let Err(e) = r {
            error!("{}: {e}", self.md.name());
            self.mon.action_failed(i);
            if membership_changed {
                self.rehold_members();
            }
            return Err(e);
        }
        Ok(())
    }

    fn run_action(&mut self, a: &Action, membership_changed: &mut bool) -> Result<(), ExecError> {
        let s = ExecError::Sysfs;
        match a {
            Action::WriteMetadata { meta, targets } => {
                let mut w = self.write_begin(meta, targets)?;
                self.write_wait(&mut w);
                self.write_end(w)
            }
            Action::SetCanClear(b) => {
                if *b {
                    // Test hook: between recording the array whole and
                    // allowing the kernel to clear bits.
                    crate::failpoint::point("before-can-clear-true");
                }
                self.held()?.set_can_clear(*b).map_err(s)
            }
            Action::SetArrayState(st) => self.held()?.set_array_state(*st).map_err(s),
            Action::SetSyncAction(x) => self.held()?.set_sync_action(*x).map_err(s),
            Action::Member(i, cmd) => {
                let k = self
                    .members
                    .iter()
                    .find(|m| m.index == *i)
                    .map(|m| m.kname.clone())
                    .ok_or(ExecError::NoMember(*i))?;
                let h = self.held()?;
                match h.member(&k) {
                    Some(m) => m.command(*cmd).map_err(s)?,
                    // Not held (its attributes could not be opened when it
                    // appeared): by path.
                    None => self.md.member(&k).command(*cmd).map_err(s)?,
                }
                if *cmd == MemberCommand::Remove {
                    info!("{}: removed {k} (slot {i})", self.md.name());
                    self.members.retain(|m| m.kname != k);
                    *membership_changed = true;
                }
                Ok(())
            }
            Action::ReleaseHold(t) => {
                self.held()?.set_time_base(*t).map_err(s)?;
                info!("{}: start hold ended (time_base {t})", self.md.name());
                Ok(())
            }
            Action::PrepareDevice { index } => {
                let p = self
                    .pending
                    .as_ref()
                    .filter(|p| p.index == *index)
                    .ok_or(ExecError::NoPending(*index))?;
                self.prepare_new_device(&p.dev, self.mon.meta())
            }
            Action::SetComponentSize(size) => {
                self.md.set_component_size(size.kib_floor()).map_err(s)?;
                info!("{}: component size now {size}", self.md.name());
                Ok(())
            }
            Action::SetRaidDisks(n) => {
                // md's raid1 reshape waits for the metadata handler to
                // record the array dirty (md_allow_write: write-pending)
                // inside the write. The record already says dirty (the
                // machine wrote it in this batch), so the write runs on a
                // thread of its own while this one answers write-pending.
                let md = self.md.clone();
                let n = *n;
                let w = std::thread::Builder::new()
                    .name("raid-disks".into())
                    .spawn(move || md.set_raid_disks(n))
                    .map_err(|e| ExecError::Writer("raid_disks".into(), e.to_string()))?;
                while !w.is_finished() {
                    let h = self.held()?;
                    if let Ok(ArrayState::WritePending) = h.array_state() {
                        h.set_array_state(ArrayState::Active).map_err(s)?;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                w.join()
                    .map_err(|_| ExecError::Writer("raid_disks".into(), "panicked".into()))?
                    .map_err(s)?;
                info!("{}: raid_disks now {n}", self.md.name());
                Ok(())
            }
            Action::AddSpare { index, device } => {
                let kname = self.attach(*index, device, membership_changed, |_| Ok(()))?;
                info!("{}: added {kname} as a spare", self.md.name());
                Ok(())
            }
            Action::ActivateSpare { index, uuid } => {
                let slot = u32::try_from(*index).map_err(|_| ExecError::SlotRange(*index))?;
                let m = self
                    .members
                    .iter()
                    .find(|m| m.device.uuid == *uuid)
                    .ok_or(ExecError::NoMember(*index))?;
                // Its bitmap area as the members hold it, before md writes
                // to it: a member md may later read the bits from.
                // (As for a new member: see `prepare_new_device`.)
                let meta = self.mon.meta();
                let src = self
                    .members
                    .iter()
                    .find(|o| {
                        o.device.uuid != *uuid
                            && meta
                                .members
                                .get(o.index)
                                .is_some_and(|e| e.state.is_in_sync())
                    })
                    .ok_or(ExecError::NoSourceMember)?;
                let bits = src.dev.read_bitmap(&meta.bitmap)?;
                m.dev.write_bitmap(&meta.bitmap, &bits)?;
                self.md.member(&m.kname).set_slot(Some(slot)).map_err(s)?;
                info!(
                    "{}: spare {} activated in slot {index}, full rebuild",
                    self.md.name(),
                    m.kname
                );
                Ok(())
            }
            Action::AddDevice {
                index,
                bitmap_based,
                device,
            } => {
                let slot = u32::try_from(*index).map_err(|_| ExecError::SlotRange(*index))?;
                let kname = self.attach(*index, device, membership_changed, |h| {
                    if *bitmap_based {
                        h.command(MemberCommand::InSync)?;
                    }
                    h.set_slot(Some(slot))
                })?;
                info!(
                    "{}: added {kname} in slot {index}, {} rebuild",
                    self.md.name(),
                    if *bitmap_based { "bitmap" } else { "full" }
                );
                Ok(())
            }
        }
    }

    /// Hot-add the pending device for slot table index `index` to md:
    /// its data offset and size, then `then` (in sync, slot). It is kept
    /// in the member list even if a step failed: the next snapshot shows
    /// it, and the machine removes a half-added device.
    fn attach(
        &mut self,
        index: usize,
        device: &DeviceMeta,
        membership_changed: &mut bool,
        then: impl FnOnce(&crate::sysfs::Member<'_>) -> Result<(), SysfsError>,
    ) -> Result<String, ExecError> {
        let p = self
            .pending
            .take()
            .filter(|p| p.index == index)
            .ok_or(ExecError::NoPending(index))?;
        let kname = self.md.add_member(p.devnum).map_err(ExecError::Sysfs)?;
        let r = {
            let h = self.md.member(&kname);
            h.set_offset(device.data_offset)
                .and_then(|_| h.set_size(device.data_size.kib_floor()))
                .and_then(|_| then(&h))
        };
        self.members
            .push(MemberIo::new(kname.clone(), p.dev, *device, index)?);
        *membership_changed = true;
        r.map_err(ExecError::Sysfs)?;
        Ok(kname)
    }

    /// Start writing the record durably to the listed members, in
    /// parallel on the writer pool ([`Managed::write_end`] finishes).
    fn write_begin(&self, meta: &ArrayMeta, targets: &[usize]) -> Result<RecordWrite, ExecError> {
        let mut next = meta.clone();
        next.utime = crate::meta::unix_now();
        let chosen: Vec<&MemberIo> = self
            .members
            .iter()
            .filter(|m| targets.contains(&m.index))
            .collect();
        let preflush = next.needs_flush_before(self.durable.as_ref());
        let pool = crate::writers::pool();
        pool.ensure(chosen.len(), preflush)
            .map_err(|e| ExecError::Writer("pool".into(), e.to_string()))?;
        let mut w = RecordWrite {
            next,
            names: Vec::with_capacity(chosen.len()),
            results: Vec::with_capacity(chosen.len()),
            outstanding: 0,
            preflush,
            pending: self
                .pending
                .as_ref()
                .is_some_and(|p| targets.contains(&p.index)),
        };
        for (k, m) in chosen.iter().enumerate() {
            let sb = Superblock {
                array: w.next.clone(),
                device: m.device,
            };
            let sent = pool.submit(m.dev.clone(), sb, preflush, k, &self.answers);
            w.outstanding += usize::from(sent);
            w.names.push(m.kname.clone());
            w.results
                .push(Err(ExecError::Writer(m.kname.clone(), "gone".into())));
        }
        pool.send();
        Ok(w)
    }

    /// Wait for every answer of `w`.
    fn write_wait(&self, w: &mut RecordWrite) {
        while w.outstanding > 0 {
            // The channel is ours: it never closes while we wait.
            let Some(a) = crate::writers::pool().wait(&self.answers) else {
                break;
            };
            w.take(a);
        }
    }

    /// Finish a record write whose answers are all in: the device being
    /// added (if a target) gets its record last, before it becomes a
    /// member.
    fn write_end(&mut self, w: RecordWrite) -> Result<(), ExecError> {
        self.durable = None;
        let mut errs = Vec::new();
        for (name, r) in w.names.iter().zip(w.results) {
            if let Err(e) = r {
                errs.push((name.clone(), e));
            }
        }
        if let Some(p) = self.pending.as_ref().filter(|_| w.pending) {
            let sb = Superblock {
                array: w.next.clone(),
                device: p.device,
            };
            if let Err(e) = p.dev.write_superblock(&sb) {
                errs.push((p.dev.path().display().to_string(), e.into()));
            }
        }
        if !errs.is_empty() {
            return Err(ExecError::MetadataWrite(errs));
        }
        debug!(
            "{}: recorded events {} on {} member(s) ({}, resync {}, events_cleared {}{})",
            self.md.name(),
            w.next.events,
            w.names.len(),
            if w.next.clean { "clean" } else { "dirty" },
            w.next.resync,
            w.next.bitmap.events_cleared,
            if w.preflush { ", flushed first" } else { "" }
        );
        self.durable = Some(w.next);
        Ok(())
    }

    fn member_index_of_path(&self, device: &str) -> Result<usize, ManagedError> {
        let not_member = || ManagedError::NotMember {
            md: self.md.name().to_string(),
            device: device.to_string(),
        };
        let p = Path::new(device);
        let kname = if p.is_absolute() {
            let dev = DevNum::of_block_device(p).map_err(|_| not_member())?;
            self.md.sysfs().block_name(dev)?
        } else {
            device.trim_start_matches("dev-").to_string()
        };
        self.members
            .iter()
            .find(|m| m.kname == kname)
            .map(|m| m.index)
            .ok_or_else(not_member)
    }

    /// `mdextctl fail`.
    pub fn fail(&mut self, device: &str) -> Result<(), ManagedError> {
        let i = self.member_index_of_path(device)?;
        self.admin(&AdminRequest::Fail(i))
    }

    /// `mdextctl remove`. The daemon removes failed members by itself (as
    /// mdmon does), so removing a device this array records as failed or
    /// missing and that md no longer holds succeeds with nothing to do.
    pub fn remove(&mut self, device: &str) -> Result<(), ManagedError> {
        match self.member_index_of_path(device) {
            Ok(i) => self.admin(&AdminRequest::Remove(i)),
            Err(e) => {
                let Ok(read) = crate::device::read_superblock(Path::new(device)) else {
                    return Err(e);
                };
                let sb = read.superblock;
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

    /// `mdextctl add`: read what the device holds and hand the facts to the
    /// state machine, which decides (pure [`crate::monitor::admit`]) whether
    /// it returns to its slot or joins a failed or missing one as new, and
    /// whether it is rebuilt from the bitmap or fully.
    /// `write_mostly` (raid1) records it write-mostly; `spare` keeps it as
    /// a spare (the machine refuses the two together).
    pub fn add(
        &mut self,
        device: &str,
        write_mostly: bool,
        spare: bool,
    ) -> Result<(), ManagedError> {
        self.add_as(device, write_mostly, spare, false)
    }

    /// `mdextctl replace`: `new` is added as a spare (recorded, then held
    /// by md without a slot), then md is asked to copy `old` onto a spare
    /// and fail it (`want_replacement`); the machine records the spare in
    /// `old`'s slot when md is done.
    pub fn replace(&mut self, old: &str, new: &str) -> Result<(), ManagedError> {
        let i = self.member_index_of_path(old)?;
        // Refused before anything is added when the array is degraded or
        // the member is not in sync.
        self.settle();
        self.remap();
        let view = self.snapshot()?;
        self.mon
            .replaceable(i, &view)
            .map_err(|reason| ManagedError::Refused {
                md: self.md.name().to_string(),
                device: Some(old.to_string()),
                reason,
            })?;
        self.add_as(new, false, true, false)?;
        self.admin_on(Some(old), &AdminRequest::Replace(i))
    }

    /// `mdextctl grow --size`: `want` sectors, or (`None`) as large as
    /// every device of the array (spares included) allows. The machine
    /// decides ([`crate::monitor::grow_size`]), records, then md resizes.
    pub fn grow_size(&mut self, want: Option<Sectors>) -> Result<(), ManagedError> {
        let member_data = self
            .members
            .iter()
            .map(|m| m.device.data_size)
            .min()
            .unwrap_or(Sectors(0));
        self.admin(&AdminRequest::GrowSize { want, member_data })
    }

    /// `mdextctl grow --raid-devices`: raid1 gains mirror legs from its
    /// spares or drops empty ones; other levels are refused.
    pub fn grow_raid_devices(&mut self, n: u32) -> Result<(), ManagedError> {
        self.admin(&AdminRequest::GrowDisks(n))
    }

    /// The spare-group need seen when the array last settled.
    pub fn spare_need(&self) -> crate::monitor::SpareNeed {
        self.need
    }

    /// Give the spare at table index `index` away to another array of its
    /// spare group: out of md, then out of the record. Returns its path.
    pub fn give_spare(&mut self, index: usize) -> Result<PathBuf, ManagedError> {
        let kname = self
            .members
            .iter()
            .find(|m| m.index == index)
            .map(|m| m.kname.clone())
            .ok_or_else(|| ManagedError::NotMember {
                md: self.md.name().to_string(),
                device: format!("spare {index}"),
            })?;
        self.need = crate::monitor::SpareNeed::default();
        let path = PathBuf::from("/dev").join(&kname);
        self.admin_on(
            Some(&path.display().to_string()),
            &AdminRequest::Remove(index),
        )?;
        Ok(path)
    }

    /// Take a spare another array of the spare group gave away: its record
    /// of that array is not this array's, and the device is a new member
    /// (cleared, then rebuilt fully).
    pub fn take_spare(&mut self, device: &Path) -> Result<(), ManagedError> {
        self.need = crate::monitor::SpareNeed::default();
        self.add_as(&device.display().to_string(), false, false, true)
    }

    fn add_as(
        &mut self,
        device: &str,
        write_mostly: bool,
        spare: bool,
        from_group: bool,
    ) -> Result<(), ManagedError> {
        let path = PathBuf::from(device);
        // Exclusive open proves nobody uses it; it is closed again before
        // md opens it.
        let excl = Device::open(&path, Access::ExclusiveWrite)?;
        let devnum = match excl.id() {
            crate::device::DevId::Block(r) if excl.is_block() => DevNum::from_raw(r),
            _ => return Err(ManagedError::NotBlock(device.to_string())),
        };
        let own = excl
            .read_superblock()
            .ok()
            .map(|r| r.superblock)
            // A spare given by another array of the group: that array's
            // record says nothing about this one.
            .filter(|sb| !from_group || sb.array.uuid == self.mon.meta().uuid);
        let foreign = crate::probe::probe(&excl)?
            .into_iter()
            .filter(|f| !f.name.starts_with("mdext"))
            .map(|f| f.name.to_string())
            .collect();
        let data_offset = self
            .members
            .first()
            .map(|m| m.device.data_offset)
            .ok_or_else(|| ManagedError::PartFailed {
                md: self.md.name().to_string(),
                source: ExecError::NoSourceMember,
            })?;
        let facts = DeviceFacts {
            size: Sectors(excl.size().0 / 512),
            own,
            foreign,
            data_offset,
            new_uuid: uuid::Uuid::new_v4(),
            write_mostly,
        };
        drop(excl);
        let dev = Device::open(&path, Access::SharedWrite)?;
        // What the machine decides is only known from its actions; the
        // executor finds the device here for PrepareDevice, the record write
        // and AddDevice, whatever slot it gets.
        self.pending = Some(PendingAdd {
            index: usize::MAX,
            devnum,
            dev,
            device: DeviceMeta {
                uuid: uuid::Uuid::nil(),
                data_offset,
                data_size: Sectors(0),
            },
        });
        let req = if spare {
            AdminRequest::AddSpare(Box::new(facts))
        } else {
            AdminRequest::Add(Box::new(facts))
        };
        let r = self.admin_on(Some(device), &req);
        self.pending = None;
        r
    }

    fn prepare_new_device(&self, dev: &Device, meta: &ArrayMeta) -> Result<(), ExecError> {
        let src = self.members.first().ok_or(ExecError::NoSourceMember)?;
        let bits = src.dev.read_bitmap(&meta.bitmap)?;
        dev.zero(0, crate::format::META_AREA as u64)?;
        // Version 2's copy 1 too: an old copy there (of another array, with
        // any events) must not outlive the new record.
        dev.zero(
            crate::format::COPY1_V2_OFFSET,
            crate::format::COPY_SIZE as u64,
        )?;
        dev.write_bitmap(&meta.bitmap, &bits)?;
        Ok(())
    }

    fn admin(&mut self, req: &AdminRequest) -> Result<(), ManagedError> {
        self.admin_on(None, req)
    }

    /// [`Managed::admin`] about a device named in errors.
    fn admin_on(&mut self, device: Option<&str>, req: &AdminRequest) -> Result<(), ManagedError> {
        // Settle first: the machine refuses requests while it has work. The
        // kernel may move on between the settling and the snapshot (an idle
        // array turns active-idle, a write arrives): settle again and retry,
        // a bounded number of times, each after the machine's own batch ran.
        let mut attempts = 0;
        let batch = loop {
            self.settle();
            self.remap();
            let view = self.snapshot()?;
            match self.mon.step(Event::Admin(req.clone(), view)) {
                Err(Refusal::Unsettled) if attempts < ADMIN_SETTLE_ATTEMPTS => attempts += 1,
                r => {
                    break r.map_err(|reason| ManagedError::Refused {
                        md: self.md.name().to_string(),
                        device: device.map(str::to_string),
                        reason,
                    })?
                }
            }
        };
        // The machine chose the slot and the device's own record.
        if let Some(p) = self.pending.as_mut() {
            for a in &batch {
                if let Action::AddDevice { index, device, .. }
                | Action::AddSpare { index, device } = a
                {
                    p.index = *index;
                    p.device = *device;
                }
            }
        }
        let r = self.execute(batch);
        self.settle();
        r.map_err(|source| ManagedError::PartFailed {
            md: self.md.name().to_string(),
            source,
        })
    }

    /// Try to leave the array clean (SIGTERM, release). True when the
    /// metadata records clean and the kernel agrees.
    pub fn make_clean(&mut self) -> bool {
        // Decided on what the wakes saw: a read of the held state here
        // would spend a notification nobody acts on.
        self.settle();
        let Some(h) = self.held.as_ref() else {
            // Stopped (and recorded) already.
            return true;
        };
        if let Some(ArrayState::Active | ArrayState::ActiveIdle) = self.seen.array_state {
            let _ = h.set_array_state(ArrayState::Clean);
            self.settle();
        }
        if self.held.is_none() || self.gone {
            return true;
        }
        match self.seen.array_state {
            Some(ArrayState::Clean | ArrayState::Readonly | ArrayState::ReadAuto) => {
                self.mon.meta().clean
            }
            _ => false,
        }
    }

    /// Mark clean and stop the md device, waiting here until it is done
    /// (for callers that serve one array; the daemon steps a stop with
    /// [`Managed::stop_begin`] and [`Managed::stop_step`] so that the other
    /// arrays are served meanwhile).
    pub fn stop(&mut self) -> Result<(), ManagedError> {
        let mut stop = self.stop_begin()?;
        while !self.stop_step(&mut stop)? {
            std::thread::sleep(STOP_STEP);
        }
        Ok(())
    }

    /// Start stopping: refused at once if somebody has the array open (md
    /// refuses to stop it then), before anything changes.
    pub fn stop_begin(&self) -> Result<Stopping, ManagedError> {
        if let Err(crate::device::DeviceError::Busy(_)) =
            Device::open(&self.md.dev_path(), Access::ExclusiveWrite)
        {
            return Err(ManagedError::InUse {
                md: self.md.name().to_string(),
            });
        }
        Ok(Stopping {
            since: Instant::now(),
            asked: None,
            busy: None,
        })
    }

    /// One step of a stop, never waiting: make the array clean (writes
    /// drain first; at most [`STOP_DRAIN`]), then record it clean and stop
    /// it (at most [`STOP_DRAIN`] more; a stop md refuses as busy is asked
    /// again for [`STOP_BUSY_RETRY`]), then let md's device go. True once
    /// stopped; call again after the next wake or [`STOP_STEP`] otherwise.
    pub fn stop_step(&mut self, stop: &mut Stopping) -> Result<bool, ManagedError> {
        let name = self.md.name().to_string();
        let asked = match stop.asked {
            Some(t) => t,
            None => {
                if stop.busy.is_some_and(|(_, next)| Instant::now() < next) {
                    return Ok(false);
                }
                if !self.make_clean() {
                    if stop.since.elapsed() > STOP_DRAIN {
                        return Err(ManagedError::Failed(format!(
                            "{name}: writes still in flight; not stopped"
                        )));
                    }
                    return Ok(false);
                }
                if let Err(e) = self.admin(&AdminRequest::Stop) {
                    // md refuses to stop an array a program has open (not
                    // exclusively: the check in `stop_begin` cannot see
                    // it). The array runs on, managed as before: a refused
                    // stop leaves nothing behind that stops it later.
                    self.mon.cancel_stop();
                    self.settle();
                    let busy = matches!(
                        &e,
                        ManagedError::PartFailed {
                            source: ExecError::Sysfs(SysfsError::Write {
                                errno: nix::errno::Errno::EBUSY,
                                ..
                            }),
                            ..
                        }
                    );
                    if !busy {
                        return Err(e);
                    }
                    let now = Instant::now();
                    let first = stop.busy.map_or(now, |(first, _)| first);
                    if now.duration_since(first) >= STOP_BUSY_RETRY {
                        return Err(ManagedError::InUse { md: name });
                    }
                    stop.busy = Some((first, now + STOP_BUSY_EVERY));
                    return Ok(false);
                }
                if self
                    .held
                    .as_ref()
                    .is_some_and(|h| h.array_state().is_ok_and(|s| s.is_running()))
                {
                    // md took a write between `make_clean` and the stop's
                    // own look: the machine answered it and asked md for no
                    // stop (md stops only from clean, synchronously). Start
                    // over from clean, within the same drain time; left in
                    // stopping, a later look's stop refused as busy would
                    // never be reported as such (the 64-array guest test
                    // saw "did not stop" 14 s after a stop of an array its
                    // writer held open, instead of "in use").
                    self.mon.cancel_stop();
                    self.settle();
                    if stop.since.elapsed() > STOP_DRAIN {
                        return Err(ManagedError::Failed(format!(
                            "{name}: writes still in flight; not stopped"
                        )));
                    }
                    return Ok(false);
                }
                let now = Instant::now();
                stop.asked = Some(now);
                now
            }
        };
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.array_state().is_ok_and(|s| s.is_running()))
        {
            if asked.elapsed() > STOP_DRAIN {
                return Err(ManagedError::Failed(format!("{name}: did not stop")));
            }
            self.settle();
            return Ok(false);
        }
        self.held = None;
        self.watched = false;
        crate::assembly::teardown(self.md.sysfs(), &self.md)
            .map_err(|e| ManagedError::Failed(e.to_string()))?;
        info!(
            "{name}: stopped, metadata clean at events {}",
            self.mon.meta().events
        );
        Ok(true)
    }

    /// The array's status (for `status` and `detail`).
    pub fn status(&self) -> ArrayStatus {
        let devices: Vec<(usize, &str)> = self
            .members
            .iter()
            .map(|m| (m.index, m.kname.as_str()))
            .collect();
        // What the last wake saw, never a fresh read of the held
        // attributes (see `held`).
        let kernel = match &self.held {
            Some(_) => self.seen.clone(),
            None => KernelState::default(),
        };
        ArrayStatus::new(self.md.name(), self.mon.meta(), &devices, &kernel)
    }
}

/// `/dev/loop1` for a kernel name, a path unchanged.
fn dev_path(m: &str) -> String {
    if m.starts_with('/') {
        m.to_string()
    } else {
        format!("/dev/{m}")
    }
}
