//! `mdextctl wait [--clean]`: wait until an array's resync, rebuild or
//! scrub has ended, or (`--clean`) until every member's metadata records
//! the array clean. Event-driven: md's sysfs notifications (POLLPRI on
//! `sync_action`, `sync_completed`, `array_state`, `degraded`) and inotify
//! on the member device nodes (mdextmon's metadata writes modify them) wake
//! the waiter; a look every [`SAFETY_LOOK`] at most guards against a
//! notification that never comes. Needs only sysfs, the member devices and
//! (for `--clean`) a running mdextmon: it works after the root filesystem
//! was remounted read-only.
//!
//! The decisions are pure ([`judge_sync`], [`judge_clean`]); the bound for
//! `--clean` is in the caller's timeout and in [`judge_clean`]'s
//! "impossible" answers (no daemon, array read-only with a dirty record).

use crate::device::{Access, Device};
use crate::md::{ArrayState, SyncAction, SyncCompleted};
use crate::sysfs::{HeldAttr, MdDev, Sysfs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The longest the waiter sleeps without looking (a guard, not the
/// mechanism: notifications wake it).
pub const SAFETY_LOOK: Duration = Duration::from_secs(5);

/// The default bound of `wait --clean` (writes must stop and mdextmon
/// record the array clean within it).
pub const CLEAN_TIMEOUT: Duration = Duration::from_secs(30);

/// What waiting for one array came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The activity waited for has ended (or the record is clean).
    Done {
        /// Whether there was anything to wait for.
        waited: bool,
    },
    /// The state cannot be reached; why.
    Impossible(String),
    /// The bound passed first.
    TimedOut,
    /// The array stopped while waited for.
    Stopped,
}

impl Outcome {
    /// `mdextctl wait`'s exit status for this outcome, as mdadm's `--wait`
    /// gives it: 0 waited and done, 1 nothing was running (plain `wait`
    /// only), 2 not reached (timed out, stopped, cannot become clean).
    pub fn exit_code(&self, clean: bool) -> u8 {
        match self {
            Outcome::Done { waited: true } => 0,
            Outcome::Done { waited: false } => u8::from(!clean),
            _ => 2,
        }
    }
}

/// Whether nothing runs that `wait` waits for.
pub fn judge_sync(a: SyncAction) -> bool {
    matches!(a, SyncAction::Idle | SyncAction::Frozen)
}

/// One member's record as read from the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// The device.
    pub device: String,
    /// The array UUID of its record (`None`: unreadable).
    pub uuid: Option<uuid::Uuid>,
    /// Whether its record says clean.
    pub clean: bool,
    /// Its event count.
    pub events: u64,
}

/// What `wait --clean` decides at one look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CleanVerdict {
    /// Every member records clean.
    Clean,
    /// Not yet; look again at the next wake.
    Waiting,
    /// It cannot become clean; why.
    Impossible(String),
}

/// Judge `--clean` from the member records, the kernel's `array_state` and
/// whether mdextmon answers. Clean means every record says so and md is not
/// writing: a whole mirror's record stays clean while md writes to it (its
/// bits cover the writes, `monitor::dirty_may_trail`), so a clean record
/// alone is not the end of the writes.
pub fn judge_clean(
    records: &[MemberRecord],
    uuid: uuid::Uuid,
    state: Option<ArrayState>,
    daemon: bool,
) -> CleanVerdict {
    if records.is_empty() {
        return CleanVerdict::Impossible("no member device to read".into());
    }
    if let Some(r) = records.iter().find(|r| r.uuid != Some(uuid)) {
        return CleanVerdict::Impossible(format!("{}: its metadata cannot be read", r.device));
    }
    let recorded = records.iter().all(|r| r.clean);
    let writing = matches!(
        state,
        Some(ArrayState::Active | ArrayState::ActiveIdle | ArrayState::WritePending)
    );
    if recorded && !writing {
        return CleanVerdict::Clean;
    }
    if !daemon {
        return CleanVerdict::Impossible(
            "mdextmon does not answer: nobody can record it clean".into(),
        );
    }
    if !recorded && matches!(state, Some(ArrayState::Readonly | ArrayState::ReadAuto)) {
        return CleanVerdict::Impossible(
            "read-only with a dirty record: it is recorded clean only once writable and idle"
                .into(),
        );
    }
    CleanVerdict::Waiting
}

/// Progress seen while waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// md device.
    pub md: String,
    /// What runs (`recover`, `resync`, ...); `None` when it ended.
    pub action: Option<SyncAction>,
    /// `(done, total)` sectors, when md tells.
    pub progress: Option<(u64, u64)>,
}

/// What to wait for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Wait for a clean record instead of the end of sync activity.
    pub clean: bool,
    /// Give up after this long (`None`: never).
    pub timeout: Option<Duration>,
    /// mdextmon's run directory (`--clean` asks whether it answers).
    pub run_dir: PathBuf,
}

/// The watches that wake the waiter.
struct Wakers {
    attrs: Vec<HeldAttr>,
    ino: Option<inotify::Inotify>,
}

impl Wakers {
    fn open(md: &MdDev) -> Wakers {
        let attrs = ["sync_action", "sync_completed", "array_state", "degraded"]
            .iter()
            .filter_map(|a| md.watch(a).ok())
            .collect();
        let ino = inotify::Inotify::init().ok().inspect(|ino| {
            for k in md.members() {
                let _ = ino
                    .watches()
                    .add(format!("/dev/{k}"), inotify::WatchMask::MODIFY);
            }
        });
        Wakers { attrs, ino }
    }

    /// Sleep until a notification, at most `limit`.
    fn sleep(&mut self, limit: Duration) {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds: Vec<PollFd> = self
            .attrs
            .iter()
            .map(|w| PollFd::new(w.as_fd(), PollFlags::POLLPRI | PollFlags::POLLERR))
            .collect();
        if let Some(i) = &self.ino {
            fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
        }
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        let t = PollTimeout::try_from(Duration::from_millis(ms)).unwrap_or(PollTimeout::MAX);
        let _ = nix::poll::poll(&mut fds, t);
        drop(fds);
        // Re-arm: read every attribute, drain inotify.
        for w in &self.attrs {
            let _ = w.read_fresh();
        }
        if let Some(i) = &mut self.ino {
            let mut buf = [0u8; 4096];
            let _ = i.read_events(&mut buf);
        }
    }
}

fn member_records(md: &MdDev) -> Vec<MemberRecord> {
    md.members()
        .into_iter()
        .filter(|k| {
            // A faulty member is never written again: it is not waited for.
            !md.member(k).flags().is_ok_and(|f| f.faulty)
        })
        .map(|k| {
            let device = format!("/dev/{k}");
            let sb = Device::open(std::path::Path::new(&device), Access::Read)
                .and_then(|d| d.read_superblock())
                .ok()
                .map(|r| r.superblock);
            MemberRecord {
                device,
                uuid: sb.as_ref().map(|s| s.array.uuid),
                clean: sb.as_ref().is_some_and(|s| s.array.clean),
                events: sb.as_ref().map_or(0, |s| s.array.events),
            }
        })
        .collect()
}

/// Wait for one running array (md device name). `update` is told about
/// progress (and once more when the activity ends). For `--clean`, the
/// member records of the last look are returned with the outcome.
pub fn wait_one(
    sysfs: &Sysfs,
    md_name: &str,
    o: &Options,
    update: &mut dyn FnMut(&Update),
) -> (Outcome, Vec<MemberRecord>) {
    let md = sysfs.md(md_name);
    let t0 = Instant::now();
    let mut wakers = Wakers::open(&md);
    let mut waited = false;
    let uuid = crate::managed::Record::read(sysfs, md_name, Access::Read)
        .ok()
        .map(|r| r.meta.uuid);
    loop {
        if !md.array_state().is_ok_and(|s| s.is_running()) {
            return (Outcome::Stopped, Vec::new());
        }
        if o.clean {
            // md's state first, then the records: mdextmon writes the
            // record that ends a burst of writes before it takes md to
            // `clean`, so records read after a `clean` are the last ones.
            let state = md.array_state().ok();
            let recs = member_records(&md);
            let daemon = crate::control::ping(&o.run_dir, Duration::from_secs(5)).is_ok();
            match judge_clean(&recs, uuid.unwrap_or_default(), state, daemon) {
                CleanVerdict::Clean => return (Outcome::Done { waited }, recs),
                CleanVerdict::Impossible(why) => return (Outcome::Impossible(why), recs),
                CleanVerdict::Waiting => waited = true,
            }
        } else {
            let action = md.sync_action().unwrap_or(SyncAction::Idle);
            if judge_sync(action) {
                if waited {
                    update(&Update {
                        md: md_name.to_string(),
                        action: None,
                        progress: None,
                    });
                }
                return (Outcome::Done { waited }, Vec::new());
            }
            waited = true;
            let progress = match md.sync_completed() {
                Ok(SyncCompleted::Progress { done, total }) => Some((done.0, total.0)),
                _ => None,
            };
            update(&Update {
                md: md_name.to_string(),
                action: Some(action),
                progress,
            });
        }
        let left = match o.timeout {
            Some(t) => match t.checked_sub(t0.elapsed()) {
                Some(l) if !l.is_zero() => l,
                _ => return (Outcome::TimedOut, Vec::new()),
            },
            None => SAFETY_LOOK,
        };
        wakers.sleep(left.min(SAFETY_LOOK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(dev: &str, clean: bool) -> MemberRecord {
        MemberRecord {
            device: dev.into(),
            uuid: Some(uuid::Uuid::from_u128(1)),
            clean,
            events: 7,
        }
    }

    const U: uuid::Uuid = uuid::Uuid::from_u128(1);

    #[test]
    fn sync_ends_when_idle_or_frozen() {
        assert!(judge_sync(SyncAction::Idle));
        assert!(judge_sync(SyncAction::Frozen));
        for a in [
            SyncAction::Resync,
            SyncAction::Recover,
            SyncAction::Check,
            SyncAction::Repair,
        ] {
            assert!(!judge_sync(a), "{a}");
        }
    }

    #[test]
    fn clean_needs_every_member() {
        let both = [rec("/dev/a", true), rec("/dev/b", true)];
        assert_eq!(
            judge_clean(&both, U, Some(ArrayState::Clean), true),
            CleanVerdict::Clean
        );
        // Clean on disk is clean, daemon or not.
        assert_eq!(
            judge_clean(&both, U, Some(ArrayState::Clean), false),
            CleanVerdict::Clean
        );
        let one = [rec("/dev/a", true), rec("/dev/b", false)];
        assert_eq!(
            judge_clean(&one, U, Some(ArrayState::Active), true),
            CleanVerdict::Waiting
        );
        // A mirror md writes to keeps its record clean: not clean yet.
        for s in [
            ArrayState::Active,
            ArrayState::ActiveIdle,
            ArrayState::WritePending,
        ] {
            assert_eq!(
                judge_clean(&both, U, Some(s), true),
                CleanVerdict::Waiting,
                "{s:?}"
            );
        }
        assert_eq!(
            judge_clean(&both, U, Some(ArrayState::ReadAuto), true),
            CleanVerdict::Clean
        );
    }

    #[test]
    fn clean_that_cannot_come_is_not_waited_for() {
        let dirty = [rec("/dev/a", false)];
        assert!(matches!(
            judge_clean(&dirty, U, Some(ArrayState::Active), false),
            CleanVerdict::Impossible(w) if w.contains("mdextmon")
        ));
        // Nobody takes an active array back to clean without mdextmon.
        assert!(matches!(
            judge_clean(&[rec("/dev/a", true)], U, Some(ArrayState::Active), false),
            CleanVerdict::Impossible(w) if w.contains("mdextmon")
        ));
        assert!(matches!(
            judge_clean(&dirty, U, Some(ArrayState::Readonly), true),
            CleanVerdict::Impossible(w) if w.contains("read-only")
        ));
        assert!(matches!(
            judge_clean(&[], U, Some(ArrayState::Clean), true),
            CleanVerdict::Impossible(_)
        ));
        let mut other = rec("/dev/b", true);
        other.uuid = None;
        assert!(matches!(
            judge_clean(&[rec("/dev/a", true), other], U, Some(ArrayState::Clean), true),
            CleanVerdict::Impossible(w) if w.contains("/dev/b")
        ));
    }

    #[test]
    fn exit_codes_follow_mdadm() {
        assert_eq!(Outcome::Done { waited: true }.exit_code(false), 0);
        assert_eq!(Outcome::Done { waited: false }.exit_code(false), 1);
        assert_eq!(Outcome::Done { waited: false }.exit_code(true), 0);
        assert_eq!(Outcome::TimedOut.exit_code(true), 2);
        assert_eq!(Outcome::Stopped.exit_code(false), 2);
        assert_eq!(Outcome::Impossible("x".into()).exit_code(true), 2);
    }
}
