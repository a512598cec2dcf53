//! mdextmon as a systemd service: the readiness, status and watchdog
//! notifications of `sd_notify(3)` (`Type=notify`), whether systemd runs
//! the machine, and the one-line `STATUS=` summary of the managed arrays.
//!
//! The notification vocabulary and the watchdog variables are the
//! `sd-notify` crate's. Its `notify` reads `NOTIFY_SOCKET` from the
//! environment at every call, which would have to stay set and so be
//! inherited by every program the daemon runs (a child would then speak for
//! mdextmon's unit). [`Notifier::from_env`] instead takes `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC` and `WATCHDOG_PID` out of the environment once, at the
//! start of `main`, and [`Notifier::send`] writes the datagrams itself.
//!
//! [`status_line`] is pure: the statuses in, the summary out.

use crate::md::{ArrayState, SyncAction};
use crate::status::{ArrayStatus, Health, Progress};
use sd_notify::NotifyState;
use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// The environment variable that overrides how `mdextctl` starts the
/// daemon: `systemd` (ask systemd to start `mdextmon.service`) or `spawn`
/// (run it directly). Unset: systemd when it runs the machine.
pub const START_ENV: &str = "MDEXT_DAEMON_START";

/// The unit `mdextctl` asks systemd to start.
pub const UNIT: &str = "mdextmon.service";

/// The unit `mdextctl` asks systemd to start in an initrd that runs
/// systemd (dracut): the daemon that serves the root array across the
/// switch to the real root, where `mdextmon.service` takes it over.
pub const INITRD_UNIT: &str = "mdextmon-initrd.service";

/// The file every initrd has (systemd's initrd interface): its presence
/// tells an initrd from the real root.
pub const INITRD_RELEASE: &str = "/etc/initrd-release";

/// The unit to start: [`INITRD_UNIT`] in an initrd, [`UNIT`] elsewhere.
pub fn unit(in_initrd: bool) -> &'static str {
    if in_initrd {
        INITRD_UNIT
    } else {
        UNIT
    }
}

/// Whether this runs in an initrd ([`INITRD_RELEASE`] exists).
pub fn in_initrd() -> bool {
    std::path::Path::new(INITRD_RELEASE).exists()
}

/// How the daemon gets started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartBy {
    /// `systemctl start mdextmon.service` (`mdextmon-initrd.service` in
    /// an initrd).
    Systemd,
    /// Spawned directly (no service manager: an initramfs without systemd,
    /// the test guests).
    Spawn,
}

/// Decide how to start the daemon from the override (the value of
/// [`START_ENV`], if set) and whether systemd runs the machine. An
/// unknown override is an error naming it.
pub fn start_by(env: Option<&str>, systemd_runs: bool) -> Result<StartBy, String> {
    match env {
        Some("systemd") => Ok(StartBy::Systemd),
        Some("spawn") => Ok(StartBy::Spawn),
        Some(v) => Err(format!(
            "{START_ENV}={v:?} is not understood (systemd or spawn)"
        )),
        None if systemd_runs => Ok(StartBy::Systemd),
        None => Ok(StartBy::Spawn),
    }
}

/// Whether systemd runs this machine (`/run/systemd/system` exists, as
/// `sd_booted(3)` checks).
pub fn systemd_runs() -> bool {
    sd_notify::booted().unwrap_or(false)
}

/// Where to send notifications, and the watchdog interval, taken from the
/// environment the service manager gave.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<OsString>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Take `NOTIFY_SOCKET` and the watchdog settings (`WATCHDOG_USEC`,
    /// for this process if `WATCHDOG_PID` says so) and remove all three
    /// from the environment, so that no child inherits them.
    ///
    /// Call it at the start of `main`, before any thread exists: changing
    /// the environment races with other threads reading it.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        for v in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(v);
        }
        Notifier { socket, watchdog }
    }

    /// A notifier that sends nothing.
    pub fn none() -> Notifier {
        Notifier::default()
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog interval the service manager asked for (`None`: no
    /// watchdog). Pings go out at half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Send one notification datagram (`READY=1`, `STATUS=...`,
    /// `WATCHDOG=1`, ...). Without a socket, nothing happens.
    pub fn send(&self, states: &[NotifyState<'_>]) -> std::io::Result<()> {
        let Some(path) = &self.socket else {
            return Ok(());
        };
        let msg = message(states);
        let sock = UnixDatagram::unbound()?;
        // Never block: the service manager may itself wait on a write to
        // an array this daemon must answer. A notification that does not
        // fit now fails (EAGAIN) and the caller sends it again later.
        sock.set_nonblocking(true)?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.connect_addr(&addr)?;
        } else {
            sock.connect(path)?;
        }
        let n = sock.send(msg.as_bytes())?;
        if n != msg.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("notification cut at {n} of {} bytes", msg.len()),
            ));
        }
        Ok(())
    }
}

/// The datagram for `states`: one `KEY=value` line each. A status text
/// with a newline would end its line early; newlines become spaces.
pub fn message(states: &[NotifyState<'_>]) -> String {
    let mut msg = String::new();
    for s in states {
        let line = s.to_string().replace('\n', " ");
        msg.push_str(&line);
        msg.push('\n');
    }
    msg
}

/// One array's state in a few words: `md127 in sync`, `md126 degraded (1
/// of 2)`, `md125 rebuilding 42%`, `md124 read-only`.
///
/// Whether a whole array is clean or active is left out on purpose: it
/// flips with every burst of writes, and each change of the line is a
/// datagram that the service manager must read and process.
pub fn array_summary(s: &ArrayStatus) -> String {
    let pct = |p: &Progress| {
        let pct = p
            .done_sectors
            .saturating_mul(100)
            .checked_div(p.total_sectors)
            .unwrap_or(0);
        // At most 100.
        u8::try_from(pct).unwrap_or(100)
    };
    let running = s.sync_action.and_then(|a| match a {
        SyncAction::Recover => Some("rebuilding"),
        SyncAction::Resync => Some("resyncing"),
        SyncAction::Check => Some("checking"),
        SyncAction::Repair => Some("repairing"),
        SyncAction::Reshape => Some("reshaping"),
        SyncAction::Idle | SyncAction::Frozen => None,
    });
    if let (Some(verb), Some(p)) = (running, &s.sync_completed) {
        return format!("{} {verb} {}%", s.md, pct(p));
    }
    match s.health {
        Health::Degraded => {
            let working = s
                .degraded
                .map(|d| s.raid_disks.saturating_sub(d))
                .unwrap_or_else(|| {
                    let n = s
                        .members
                        .iter()
                        .take(s.raid_disks as usize)
                        .filter(|m| m.entry.state == crate::status::EntryState::InSync)
                        .count();
                    u32::try_from(n).unwrap_or(s.raid_disks)
                });
            format!("{} degraded ({working} of {})", s.md, s.raid_disks)
        }
        Health::Unusable => format!("{} unusable", s.md),
        Health::Unknown => format!("{} state unknown", s.md),
        Health::Whole => {
            let st = match s.array_state {
                Some(
                    ArrayState::Clean
                    | ArrayState::Active
                    | ArrayState::ActiveIdle
                    | ArrayState::WritePending,
                ) => "in sync",
                Some(ArrayState::Readonly | ArrayState::ReadAuto) => "read-only",
                Some(other) => other.as_str(),
                None => "state unknown",
            };
            format!("{} {st}", s.md)
        }
    }
}

/// The `STATUS=` line: how many arrays and each one's state, and, while
/// stopping, which arrays keep the daemon (in use). For example `3
/// arrays: md127 in sync, md126 degraded (1 of 2), md125 rebuilding 42%`.
pub fn status_line(arrays: &[ArrayStatus], stopping: bool, in_use: &[String]) -> String {
    let mut line = match arrays.len() {
        0 => "no arrays".to_string(),
        n => {
            let each: Vec<String> = arrays.iter().map(array_summary).collect();
            format!(
                "{n} array{}: {}",
                if n == 1 { "" } else { "s" },
                each.join(", ")
            )
        }
    };
    if stopping {
        if in_use.is_empty() {
            line = format!("stopping; {line}");
        } else {
            line = format!("stopping once not in use: {}; {line}", in_use.join(", "));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn initrd_starts_the_initrd_unit() {
        assert_eq!(super::unit(true), "mdextmon-initrd.service");
        assert_eq!(super::unit(false), "mdextmon.service");
    }

    use super::*;
    use crate::meta::MemberState;
    use crate::status::KernelState;

    fn status(
        md: &str,
        state: ArrayState,
        degraded: u32,
        action: SyncAction,
        done: Option<(u64, u64)>,
    ) -> ArrayStatus {
        let mut meta = crate::meta::test_raid1(
            2,
            crate::units::Sectors(1 << 16),
            crate::units::Bytes(64 << 10),
            5,
        );
        if degraded > 0 {
            meta.members[1].state = MemberState::Failed;
        }
        let k = KernelState {
            array_state: Some(state),
            degraded: Some(degraded),
            sync_action: Some(action),
            sync_completed: Some(match done {
                Some((d, t)) => crate::md::SyncCompleted::Progress {
                    done: crate::units::Sectors(d),
                    total: crate::units::Sectors(t),
                },
                None => crate::md::SyncCompleted::None,
            }),
            can_clear: Some(true),
        };
        ArrayStatus::new(md, &meta, &[(0, "loop0"), (1, "loop1")], &k)
    }

    #[test]
    fn the_summary_names_each_array_state() {
        let a = [
            status("md127", ArrayState::Clean, 0, SyncAction::Idle, None),
            status("md126", ArrayState::Active, 1, SyncAction::Idle, None),
            status(
                "md125",
                ArrayState::Active,
                1,
                SyncAction::Recover,
                Some((42, 100)),
            ),
        ];
        assert_eq!(
            status_line(&a, false, &[]),
            "3 arrays: md127 in sync, md126 degraded (1 of 2), md125 rebuilding 42%"
        );
        assert_eq!(
            status_line(&a[..1], true, &["md127".into()]),
            "stopping once not in use: md127; 1 array: md127 in sync"
        );
        assert_eq!(status_line(&[], false, &[]), "no arrays");
        let ro = status("md1", ArrayState::Readonly, 0, SyncAction::Idle, None);
        assert_eq!(array_summary(&ro), "md1 read-only");
        let rs = status(
            "md2",
            ArrayState::Active,
            0,
            SyncAction::Resync,
            Some((1, 3)),
        );
        assert_eq!(array_summary(&rs), "md2 resyncing 33%");
    }

    #[test]
    fn start_by_follows_the_override_then_systemd() {
        assert_eq!(start_by(None, true), Ok(StartBy::Systemd));
        assert_eq!(start_by(None, false), Ok(StartBy::Spawn));
        assert_eq!(start_by(Some("spawn"), true), Ok(StartBy::Spawn));
        assert_eq!(start_by(Some("systemd"), false), Ok(StartBy::Systemd));
        assert!(start_by(Some("maybe"), true)
            .unwrap_err()
            .contains("MDEXT_DAEMON_START"));
    }

    #[test]
    fn messages_are_one_line_per_state() {
        assert_eq!(
            message(&[NotifyState::Ready, NotifyState::Status("a\nb")]),
            "READY=1\nSTATUS=a b\n"
        );
    }

    /// A notify socket in a temporary directory, and a notifier for it.
    fn listening() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        let n = Notifier {
            socket: Some(p.into_os_string()),
            watchdog: None,
        };
        (dir, rx, n)
    }

    #[test]
    fn notifications_reach_the_socket_and_nothing_without_one() {
        let (_dir, rx, n) = listening();
        n.send(&[
            NotifyState::Ready,
            NotifyState::Status("1 array: md127 in sync"),
        ])
        .unwrap();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..len]).unwrap(),
            "READY=1\nSTATUS=1 array: md127 in sync\n"
        );
        assert!(Notifier::none().send(&[NotifyState::Ready]).is_ok());
    }

    /// The service manager stops reading (PID 1 waits on a write to an
    /// array this daemon must answer; its notify socket queues only
    /// `net.unix.max_dgram_qlen` datagrams, 10 by default): a send fails
    /// at once instead of blocking, and goes out again once there is room.
    #[test]
    fn a_full_notify_socket_never_blocks() {
        let (_dir, rx, n) = listening();
        let mut refused = 0;
        for i in 0..10_000 {
            if n.send(&[NotifyState::Status(&format!("turn {i}"))])
                .is_err()
            {
                refused += 1;
                break;
            }
        }
        assert_eq!(
            refused, 1,
            "10 000 datagrams queued: the socket never filled"
        );
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), "STATUS=turn 0\n");
        n.send(&[NotifyState::Ready])
            .expect("room again after one read");
    }
}
