//! mdextmon's I/O loop: thin on purpose. It waits on md's sysfs
//! notifications (POLLPRI), on signals (signalfd) and on the control socket,
//! re-reads the kernel's state of an array after any wake, feeds it to the
//! pure state machine ([`crate::monitor`]) and carries out the actions it
//! returns, in order, stopping at the first failure.
//!
//! Many arrays, one thread: every array's notifying attributes, the
//! signal fd, the writer pool's answers and the control socket sit in one
//! epoll set ([`WaitSet`]), registered once ([`Managed::watch_new`]), so a
//! wake is one `epoll_wait(2)` whatever the number of arrays. A batch that writes a record hands the members' copies to the
//! writer pool ([`crate::writers`]) and waits in its array
//! ([`Managed::pump`]), not in the loop: the pool's eventfd wakes the loop
//! when answers come that something waits for ([`Managed::awaits_answers`];
//! a record nobody waits for is collected at a time of its array's own,
//! [`Managed::recheck_due`]), and an array with a slow member holds only
//! its own writes. Requests about an array whose batch waits are answered after it;
//! a stop is stepped ([`Managed::stop_step`]) while every other array is
//! served.
//!
//! No timer runs while the arrays are clean: with nothing happening, the
//! daemon sleeps in `epoll_wait(2)` with an infinite timeout. An array last seen
//! busy (writable and not clean) is looked at again after
//! [`crate::managed::BUSY_RECHECK`] whether or not md notified (the
//! interval doubles, up to [`crate::managed::BUSY_RECHECK_MAX`], while
//! each check or look finds steady writes): md's
//! notifications are edges, and a systemd guest under load once showed the
//! daemon asleep while md held a write. A control client that connected but
//! has not finished its request bounds the sleep by its deadline
//! ([`control::Server`]); clients never block the loop. Under systemd with
//! a watchdog (`WatchdogSec=`), the next `WATCHDOG=1` is such a deadline
//! too, at half the interval.
//!
//! Under systemd (`Type=notify`) it says `READY=1` once the arrays it was
//! given or found are managed, and keeps a one-line `STATUS=` current
//! ([`crate::service`]).
//!
//! Takeover ([`Config::takeover`]): a new daemon asks the running one to
//! hand over ([`Request::Handover`]); the old one answers once nothing is
//! under way and exits without touching the arrays or the socket file, and
//! the new one moves its own socket into place and adopts every array at
//! once. A write md holds meanwhile waits for the new daemon, which is
//! already running and about to look.

use crate::control::{self, ControlError, ErrorKind, Pong, Request, Response};
use crate::device::DeviceError;
use crate::managed::{Managed, ManagedError, Stopping};
use crate::md::ArrayState;
use crate::report::Reporter;
use crate::service::Notifier;
use crate::sysfs::Sysfs;
use crate::waitset::WaitSet;
use log::{error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sd_notify::NotifyState;
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The sysfs tree.
    pub sysfs: Sysfs,
    /// Where the socket and pid file live.
    pub run_dir: PathBuf,
    /// Arrays to manage at start (md device names).
    pub arrays: Vec<String>,
    /// The configuration file (`PROGRAM`; re-read on SIGHUP).
    pub config: PathBuf,
    /// journald's native socket (events go there when it listens).
    pub journal_socket: PathBuf,
    /// Replace a running instance (`--takeover`): ask it to hand over,
    /// then adopt every array. With none running, just start.
    pub takeover: bool,
    /// Notifications to the service manager (`Type=notify`).
    pub notifier: Notifier,
}

/// How long a daemon asked to hand over may take to answer (it finishes
/// the batch under way first).
const HANDOVER_ANSWER: Duration = Duration::from_secs(30);

/// How long an older daemon that cannot hand over is given to die after
/// SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// While stopping, how often the arrays still in use are looked at again
/// (nothing notifies an unmount or a close).
const IN_USE_RECHECK: Duration = Duration::from_secs(2);

/// Daemon errors.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Setup failed.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The control socket could not be created.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// The running daemon could not be taken over.
    #[error("takeover: {0}")]
    Takeover(String),
}

fn setup(what: &'static str) -> impl FnOnce(nix::Error) -> DaemonError {
    move |e| DaemonError::Setup {
        what,
        source: e.into(),
    }
}

/// The running daemon.
pub struct Daemon {
    cfg: Config,
    server: control::Server,
    signals: SignalFd,
    arrays: BTreeMap<String, Managed>,
    terminating: bool,
    /// Arrays whose last wake did not settle: retried on a short timeout.
    unsettled: Vec<String>,
    /// Where events go ([`crate::report`]).
    reporter: Reporter,
    /// While terminating: the arrays in use, which keep the daemon.
    in_use: Vec<String>,
    /// While terminating: when to look at the arrays in use again.
    recheck: Option<Instant>,
    /// A handover was answered: exit without touching anything.
    handed_over: bool,
    notifier: Notifier,
    /// The watchdog ping interval (half of `WatchdogSec=`) and the next
    /// ping's deadline.
    watchdog: Option<(Duration, Instant)>,
    /// The last `STATUS=` sent.
    status: String,
    /// `READY=1` went out.
    ready: bool,
    /// A notification did not go (the manager's queue was full): look
    /// again soon.
    unsent: bool,
    /// The configuration file as last read (at start and on SIGHUP): the
    /// event program and the spare groups.
    conf: crate::config::Config,
    /// Stops under way, each answered when its array has stopped (or the
    /// stop failed); the loop serves every other array meanwhile.
    stops: Vec<(String, control::ClientId, Stopping)>,
    /// Requests about an array whose batch waits for record writes,
    /// answered once it has ended (in order).
    waiting: Vec<(control::ClientId, Request)>,
    /// What the loop sleeps on: every array's notifiers, the signal fd,
    /// the writer pool's answers and the control socket, in one epoll set
    /// ([`WaitSet`]).
    waits: WaitSet,
}

impl Daemon {
    /// Block the signals the loop handles, lock memory, open the socket.
    pub fn new(cfg: Config) -> Result<Daemon, DaemonError> {
        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block().map_err(setup("blocking signals"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(setup("signalfd"))?;
        // One malloc arena for every thread: glibc otherwise reserves an
        // arena of 64 MiB of address space per thread, and under
        // mlockall(MCL_FUTURE) that reserve counts as locked memory
        // (132 MiB for three threads, measured). The daemon's threads
        // allocate little and rarely; they do not contend.
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // before any thread of this process is started.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
        }
        // Every array holds about 16 descriptors open (its attributes, its
        // members): the usual soft limit of 1024 ends near
        // 64 arrays. Raised to the hard limit, as a program that needs many
        // descriptors is expected to do itself.
        raise_nofile();
        // The write-pending path must not wait on page faults of the daemon
        // itself: a page-in might need the very array that is blocked.
        if let Err(e) = nix::sys::mman::mlockall(
            nix::sys::mman::MlockAllFlags::MCL_CURRENT | nix::sys::mman::MlockAllFlags::MCL_FUTURE,
        ) {
            warn!("mlockall failed ({e}); continuing without locked memory");
        }
        let listener = match cfg.takeover {
            true => match take_over_running(&cfg.run_dir)? {
                Some(l) => l,
                None => control::listen(&cfg.run_dir)?,
            },
            false => control::listen(&cfg.run_dir)?,
        };
        let server = control::Server::new(listener).map_err(|source| DaemonError::Setup {
            what: "control socket",
            source,
        })?;
        // The record writers (io_uring, or threads), set up once the
        // daemon can run at all: the log says which before any record.
        crate::writers::pool();
        let conf = load_config(&cfg.config);
        let reporter = Reporter::new(&cfg.journal_socket, conf.program.clone());
        let pid = cfg.run_dir.join("mdextmon.pid");
        let _ = std::fs::write(&pid, format!("{}\n", std::process::id()));
        let notifier = cfg.notifier.clone();
        let waits = WaitSet::new(signals.as_fd()).map_err(setup("epoll"))?;
        let mut d = Daemon {
            cfg,
            server,
            signals,
            arrays: BTreeMap::new(),
            terminating: false,
            unsettled: Vec::new(),
            reporter,
            in_use: Vec::new(),
            recheck: None,
            handed_over: false,
            watchdog: notifier.watchdog().map(|w| (w / 2, Instant::now() + w / 2)),
            notifier,
            status: String::new(),
            ready: false,
            unsent: false,
            conf,
            stops: Vec::new(),
            waiting: Vec::new(),
            waits,
        };
        // With no arrays named, take over every running mdext array (a
        // restart, or a takeover from another instance). An array found
        // read-only stays read-only until a manage request says otherwise:
        // `mdextctl assemble` starts arrays read-only and then starts this
        // daemon, which must not make an array writable on its own (the
        // request that follows says `readonly`, or not). A running writable
        // array is managed as it is.
        let names = if d.cfg.arrays.is_empty() {
            crate::managed::running_arrays(&d.cfg.sysfs)
        } else {
            d.cfg.arrays.clone()
        };
        for md in names {
            let readonly = d
                .cfg
                .sysfs
                .md(&md)
                .array_state()
                .is_ok_and(|s| matches!(s, ArrayState::Readonly | ArrayState::ReadAuto));
            if let Err(e) = d.manage(&md, readonly) {
                error!("{md}: cannot manage: {e}");
            }
        }
        Ok(d)
    }

    /// Manage `md`; `readonly` keeps a read-only array read-only (false
    /// lets the array be made writable once it settles). For an array
    /// already managed, `readonly` replaces what it was.
    fn manage(&mut self, md: &str, readonly: bool) -> Result<(), ManagedError> {
        if let Some(m) = self.arrays.get_mut(md) {
            m.set_readonly(readonly);
            if !m.wake() {
                self.unsettled.push(md.to_string());
            }
            return Ok(());
        }
        let mut m = Managed::take_over(&self.cfg.sysfs, md)?;
        m.set_readonly(readonly);
        // Record writes are collected by the loop (`pump`): an array whose
        // member is slow holds only itself.
        m.set_deferred(true);
        info!("{md}: managing array {} ({})", m.name(), m.uuid());
        self.arrays.insert(md.to_string(), m);
        if let Some(m) = self.arrays.get_mut(md) {
            if !m.wake() {
                self.unsettled.push(md.to_string());
            }
        }
        Ok(())
    }

    /// Run until SIGTERM/SIGINT (or a shutdown request) and every array is
    /// left clean.
    pub fn run(mut self) -> Result<(), DaemonError> {
        info!(
            "mdextmon {} running, pid {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        );
        // Every array given or found is managed now (taken over, and acted
        // on once).
        self.service_duties();
        loop {
            self.report_events();
            if self.terminating && self.release_unused() {
                info!("every array released clean; exiting");
                break;
            }
            self.register_watches();
            // The pool's answers only while something waits for them: a
            // record nobody waits for is collected at its array's next
            // wake or check ([`Managed::awaits_answers`]).
            let pool = crate::writers::pool();
            let waited = !self.waiting.is_empty()
                || !self.stops.is_empty()
                || self.arrays.values().any(Managed::awaits_answers);
            self.waits.answers(pool.notifier(), waited);
            self.waits.server(&self.server.watched());
            // While terminating with an array not yet clean, or while an
            // array has not settled (an action failed), look again soon:
            // the kernel does not notify again for what it already shows.
            // A client's deadline bounds the wait too.
            // Arrays kept only because they are in use are looked at
            // again at IN_USE_RECHECK; the watchdog's next ping is a
            // deadline too.
            let now = Instant::now();
            let releasing = self.terminating && self.arrays.len() > self.in_use.len();
            let soon = (releasing || !self.unsettled.is_empty() || self.unsent)
                .then_some(Duration::from_millis(200));
            // A stop under way is stepped again soon (md's stop and a
            // drained write do not always notify).
            let stepping = (!self.stops.is_empty()).then_some(crate::managed::STOP_STEP);
            let recheck = self.recheck.map(|t| t.saturating_duration_since(now));
            let ping = self.watchdog.map(|(_, t)| t.saturating_duration_since(now));
            // An array last seen busy (writable, not clean) is looked at
            // again after BUSY_RECHECK (up to BUSY_RECHECK_MAX under
            // steady writes) even without a notification.
            let busy = self
                .arrays
                .values()
                .filter_map(Managed::recheck_due)
                .min()
                .map(|t| t.saturating_duration_since(now));
            let deadline = [
                soon,
                stepping,
                recheck,
                ping,
                busy,
                self.server.timeout(now),
            ]
            .into_iter()
            .flatten()
            .min();
            let ready = self.waits.wait(deadline);
            let woke = ready.arrays;
            let sig = ready.signal;
            let answered = ready.answers;
            let clients = ready.server;
            // An array a request waits for is not looked at here once its
            // batch has ended: the request runs first (it looks at the
            // array itself, synchronously), or a busy array would keep it
            // waiting batch after batch.
            if answered {
                // Reset first: an answer sent after this wakes the next
                // turn.
                crate::writers::pool().take_done();
                for (name, m) in self.arrays.iter_mut() {
                    if m.busy() && !m.pump(!waits(&self.waiting, name)) {
                        self.unsettled.push(name.clone());
                    }
                }
            }
            let mut due: Vec<String> = woke;
            due.append(&mut self.unsettled);
            due.sort();
            due.dedup();
            for name in due {
                if let Some(m) = self.arrays.get_mut(&name) {
                    if waits(&self.waiting, &name) || !m.wake() {
                        self.unsettled.push(name);
                    }
                }
            }
            let now = Instant::now();
            for (name, m) in self.arrays.iter_mut() {
                if m.recheck_due().is_some_and(|t| t <= now)
                    && !waits(&self.waiting, name)
                    && !m.recheck()
                {
                    self.unsettled.push(name.clone());
                }
            }
            if sig {
                while let Ok(Some(s)) = self.signals.read_signal() {
                    match Signal::try_from(s.ssi_signo as i32) {
                        Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => {
                            info!(
                                "signal {}: releasing every array not in use clean; exiting once none is left",
                                s.ssi_signo
                            );
                            self.begin_stop();
                        }
                        Ok(Signal::SIGHUP) => {
                            // Look at everything again on the next turn.
                            self.unsettled.extend(self.arrays.keys().cloned());
                            self.conf = load_config(&self.cfg.config);
                            self.reporter.set_program(self.conf.program.clone());
                        }
                        _ => {}
                    }
                }
            }
            for (id, req) in self.server.service(&clients, Instant::now()) {
                let resp = if self.handed_over {
                    Some(Response::error(
                        ErrorKind::Busy,
                        "mdextmon is handing over to a new instance; try again",
                    ))
                } else {
                    self.handle(id, req)
                };
                if let Some(resp) = resp {
                    self.server.reply(id, &resp, Instant::now());
                }
            }
            self.answer_waiting();
            self.step_stops();
            if self.handed_over {
                // The answer must reach the new daemon; then nothing more
                // is done here: no record, no sysfs write, no file
                // removed (the socket file and pid file are the new
                // daemon's now).
                self.server.drain(Duration::from_secs(5));
                info!("handed every array over to the new mdextmon; exiting");
                return Ok(());
            }
            // Arrays that are gone (stopped by someone else) are dropped.
            let gone: Vec<String> = self
                .arrays
                .iter()
                .filter(|(_, m)| m.is_gone())
                .map(|(n, _)| n.clone())
                .collect();
            for n in gone {
                info!("{n}: array stopped; no longer managed");
                self.arrays.remove(&n);
            }
            if !self.terminating {
                self.move_spares();
            }
            self.service_duties();
        }
        let _ = std::fs::remove_file(control::socket_path(&self.cfg.run_dir));
        let _ = std::fs::remove_file(self.cfg.run_dir.join("mdextmon.pid"));
        Ok(())
    }

    /// Spare groups (`spare-group=` in mdext.conf(5)): an array with a
    /// failed or missing slot and no spare of its own takes one from
    /// another array of its group, as [`crate::monitor::spare_moves`]
    /// decides: removed from the donor and its record first, then added to
    /// the array that needs it as a new member (full rebuild).
    fn move_spares(&mut self) {
        let wants_any = self.arrays.values().any(|m| m.spare_need().wants);
        if !wants_any {
            return;
        }
        let conf = &self.conf;
        let names: Vec<String> = self.arrays.keys().cloned().collect();
        let groups: Vec<Option<String>> = names
            .iter()
            .map(|n| {
                self.arrays
                    .get(n)
                    .and_then(|m| conf.spare_group(m.name(), &m.uuid()).map(str::to_string))
            })
            .collect();
        let needs: Vec<(Option<&str>, crate::monitor::SpareNeed)> = names
            .iter()
            .zip(&groups)
            .map(|(n, g)| {
                (
                    g.as_deref(),
                    self.arrays
                        .get(n)
                        .map(Managed::spare_need)
                        .unwrap_or_default(),
                )
            })
            .collect();
        for (from, to) in crate::monitor::spare_moves(&needs) {
            let (Some(from), Some(to)) = (names.get(from), names.get(to)) else {
                continue;
            };
            let Some(index) = self.arrays.get(from).and_then(|m| m.spare_need().spare) else {
                continue;
            };
            let given = match self.arrays.get_mut(from).map(|m| m.give_spare(index)) {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    error!("{from}: giving a spare to {to}: {e}");
                    continue;
                }
                None => continue,
            };
            match self.arrays.get_mut(to).map(|m| m.take_spare(&given)) {
                Some(Ok(())) => info!(
                    "{to}: took spare {} from {from} (spare group)",
                    given.display()
                ),
                Some(Err(e)) => error!(
                    "{to}: taking spare {} from {from}: {e}; the device is in neither array",
                    given.display()
                ),
                None => {}
            }
        }
    }

    /// Answer a request; `None`: answered later (a stop under way,
    /// [`Daemon::step_stops`]).
    fn handle(&mut self, id: control::ClientId, req: Request) -> Option<Response> {
        if let Some(md) = req.md().filter(|_| !matches!(req, Request::Detail { .. })) {
            if self.arrays.get(md).is_some_and(Managed::busy) || waits(&self.waiting, md) {
                // Its batch waits for a record write (a slow member):
                // answered when it is through ([`Daemon::answer_waiting`]),
                // every other array served meanwhile.
                self.waiting.push((id, req));
                return None;
            }
        }
        self.handle_now(id, req)
    }

    /// [`Daemon::handle`] for a request that need not wait.
    fn handle_now(&mut self, id: control::ClientId, req: Request) -> Option<Response> {
        if let Some(md) = req.md().filter(|_| !matches!(req, Request::Detail { .. })) {
            if self.stops.iter().any(|(n, _, _)| n == md) {
                return Some(Response::error(
                    ErrorKind::Busy,
                    format!("{md}: being stopped; try again once it has stopped"),
                ));
            }
        }
        if matches!(req, Request::Handover) && !self.stops.is_empty() {
            return Some(Response::error(
                ErrorKind::Busy,
                "mdextmon is stopping an array; try again",
            ));
        }
        if let Request::Stop { md } = &req {
            return match self.arrays.get(md).map(Managed::stop_begin) {
                None => Some(not_managed(md)),
                Some(Err(e)) => Some(managed_error(&e)),
                Some(Ok(stop)) => {
                    self.stops.push((md.clone(), id, stop));
                    self.step_stops();
                    None
                }
            };
        }
        Some(self.answer(req))
    }

    /// Register the arrays' notifiers that are new since the last turn
    /// (the array came, or its members changed; closed descriptors left
    /// the set by themselves).
    fn register_watches(&mut self) {
        let arrays = &self.arrays;
        self.waits.forget(|n| arrays.contains_key(n), arrays.len());
        let fresh: Vec<(&str, Vec<std::os::fd::BorrowedFd<'_>>)> = self
            .arrays
            .iter_mut()
            .filter_map(|(name, m)| m.watch_new().map(|fds| (name.as_str(), fds)))
            .collect();
        self.waits.arrays(fresh);
    }

    /// Answer the requests that waited for their array's record write,
    /// once it is through.
    fn answer_waiting(&mut self) {
        let mut i = 0;
        while i < self.waiting.len() {
            let busy = self.waiting[i]
                .1
                .md()
                .is_some_and(|md| self.arrays.get(md).is_some_and(Managed::busy));
            let first = !self.waiting[i]
                .1
                .md()
                .is_some_and(|md| waits(&self.waiting[..i], md));
            if busy || !first {
                i += 1;
                continue;
            }
            let (id, req) = self.waiting.remove(i);
            if let Some(resp) = self.handle_now(id, req) {
                self.server.reply(id, &resp, Instant::now());
            }
        }
    }

    /// Step every stop under way; answer those that ended.
    fn step_stops(&mut self) {
        let mut i = 0;
        while i < self.stops.len() {
            let (md, id, stop) = &mut self.stops[i];
            let r = match self.arrays.get_mut(md.as_str()) {
                // Gone meanwhile (stopped by somebody else).
                None => Ok(true),
                // A record write under way (a slow member) is waited for
                // by the loop, not here.
                Some(m) if m.busy() => Ok(false),
                Some(m) => m.stop_step(stop),
            };
            let resp = match r {
                Ok(false) => {
                    i += 1;
                    continue;
                }
                Ok(true) => {
                    self.arrays.remove(md.as_str());
                    Response::Done
                }
                Err(e) => managed_error(&e),
            };
            let id = *id;
            self.stops.remove(i);
            self.server.reply(id, &resp, Instant::now());
        }
    }

    fn answer(&mut self, req: Request) -> Response {
        match req {
            Request::Ping => Response::Pong(Pong {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                arrays: self.arrays.keys().cloned().collect(),
            }),
            Request::Manage { md, readonly } => match self.manage(&md, readonly) {
                Ok(()) => Response::Done,
                Err(e) => managed_error(&e),
            },
            Request::Status => Response::Status {
                arrays: self.arrays.values().map(own_status).collect(),
            },
            Request::Detail { md } => match self.arrays.get(&md) {
                Some(m) => Response::Detail {
                    array: own_status(m),
                },
                None => not_managed(&md),
            },
            Request::Shutdown => {
                self.begin_stop();
                Response::Done
            }
            Request::Handover => {
                // Whatever batch an array had under way is finished (its
                // record writes waited for). From the answer on, nothing
                // is acted on.
                info!("a new mdextmon asks to take over; handing over");
                for m in self.arrays.values_mut() {
                    m.finish();
                }
                self.handed_over = true;
                Response::Done
            }
            Request::Release { md } => match self.arrays.get_mut(&md) {
                Some(m) => {
                    m.make_clean();
                    self.arrays.remove(&md);
                    Response::Done
                }
                None => not_managed(&md),
            },
            // Stepped by the loop (`handle`); never waited for here.
            Request::Stop { md } => not_managed(&md),
            Request::Fail { md, device } => self.member_op(&md, &device, |m| m.fail(&device)),
            Request::Remove { md, device } => self.member_op(&md, &device, |m| m.remove(&device)),
            Request::Add {
                md,
                device,
                write_mostly,
                spare,
            } => self.member_op(&md, &device, |m| m.add(&device, write_mostly, spare)),
            Request::Grow {
                md,
                size_sectors,
                max,
                raid_devices,
            } => {
                let name = md.clone();
                self.member_op(&md, &name, |m| match (size_sectors, max, raid_devices) {
                    (Some(s), false, None) => m.grow_size(Some(crate::units::Sectors(s))),
                    (None, true, None) => m.grow_size(None),
                    (None, false, Some(n)) => m.grow_raid_devices(n),
                    _ => Err(ManagedError::Failed(format!(
                        "{name}: grow takes one of a size, max or a number of devices"
                    ))),
                })
            }
            Request::Replace { md, old, new } => {
                self.member_op(&md, &old, |m| m.replace(&old, &new))
            }
        }
    }
}

impl Daemon {
    /// Hand every array's new events to the reporter.
    fn report_events(&mut self) {
        for m in self.arrays.values_mut() {
            let ev = m.take_events();
            self.reporter.report(&ev);
        }
    }
    /// Send a notification; false if it did not go (the service manager's
    /// queue is full, or it is gone). Never blocks.
    fn notify(&self, states: &[NotifyState<'_>]) -> bool {
        match self.notifier.send(states) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("sd_notify: {e}");
                false
            }
        }
    }

    /// The `STATUS=` line for the arrays managed now.
    fn status_line(&self) -> String {
        let st: Vec<crate::status::ArrayStatus> = self.arrays.values().map(own_status).collect();
        crate::service::status_line(&st, self.terminating, &self.in_use)
    }

    /// At the start and after each turn: `READY=1` until it went, the
    /// watchdog ping when due, and `STATUS=` when it changed. Nothing at
    /// all without a service manager.
    fn service_duties(&mut self) {
        if !self.notifier.enabled() {
            return;
        }
        let now = Instant::now();
        // A notification that did not go is sent again after the next
        // turn: the status is level-triggered (the latest line wins), and
        // a missed ping stays due.
        let status = self.status_line();
        if !self.ready {
            if self.notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
                self.ready = true;
                self.status = status.clone();
                if let Some((every, _)) = self.watchdog {
                    self.watchdog = Some((every, now));
                }
            }
        } else if status != self.status && self.notify(&[NotifyState::Status(&status)]) {
            self.status = status.clone();
        }
        if let Some((every, next)) = self.watchdog {
            if self.ready && now >= next && self.notify(&[NotifyState::Watchdog]) {
                self.watchdog = Some((every, now + every));
            }
        }
        self.unsent = !self.ready
            || status != self.status
            || self.watchdog.is_some_and(|(_, next)| now >= next);
    }

    /// SIGTERM, SIGINT or a shutdown request.
    fn begin_stop(&mut self) {
        if !self.terminating {
            self.terminating = true;
            self.notify(&[NotifyState::Stopping]);
        }
    }

    /// While stopping: release (recorded clean) every array that is not in
    /// use; keep managing the ones in use, so that no write to a mounted
    /// array is left waiting for nobody. True once no array is left.
    fn release_unused(&mut self) -> bool {
        let now = Instant::now();
        if self.recheck.is_some_and(|t| now < t) && self.arrays.len() == self.in_use.len() {
            return false;
        }
        let mut in_use = Vec::new();
        let names: Vec<String> = self.arrays.keys().cloned().collect();
        for n in names {
            if array_in_use(&self.cfg.sysfs, &n) {
                in_use.push(n);
                continue;
            }
            if let Some(m) = self.arrays.get_mut(&n) {
                if m.make_clean() {
                    info!("{n}: recorded clean; released");
                    self.arrays.remove(&n);
                }
            }
        }
        if !in_use.is_empty() && in_use != self.in_use {
            warn!(
                "{}: in use (mounted, or held open exclusively): still managed; unmount or stop it \
                 and this daemon exits, or start `mdextmon --takeover` to replace it",
                in_use.join(", ")
            );
        }
        self.recheck = (!in_use.is_empty()).then(|| now + IN_USE_RECHECK);
        self.in_use = in_use;
        self.arrays.is_empty()
    }
}

/// Whether md device `md` is in use: mounted, swap, held by another block
/// device, or opened exclusively by a program. Found by opening it with
/// `O_EXCL` (read-only, closed at once), which the kernel refuses then. A
/// device that cannot be opened at all counts as in use: not knowing, the
/// daemon keeps it.
fn array_in_use(sysfs: &Sysfs, md: &str) -> bool {
    use nix::fcntl::{open, OFlag};
    let path = sysfs.md(md).dev_path();
    match open(
        &path,
        OFlag::O_RDONLY | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => {
            drop(fd);
            false
        }
        Err(nix::errno::Errno::EBUSY) => true,
        Err(e) => {
            warn!(
                "{md}: cannot tell whether it is in use ({}: {e}); keeping it",
                path.display()
            );
            true
        }
    }
}

/// `--takeover`: ask the running daemon to hand over, with this daemon's
/// socket bound beside its own; once it has answered (or, an older version
/// that cannot hand over, has been killed), move the socket into place.
/// `None`: no daemon answers, start as usual.
/// Whether a request in `waiting` is about array `md`.
fn waits(waiting: &[(control::ClientId, Request)], md: &str) -> bool {
    waiting.iter().any(|(_, r)| r.md() == Some(md))
}

/// Raise the soft limit on open descriptors to the hard limit.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!("raising the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => warn!("reading the open-file limit: {e}"),
    }
}

fn take_over_running(run_dir: &Path) -> Result<Option<UnixListener>, DaemonError> {
    let old = match control::ping(run_dir, Duration::from_secs(5)) {
        Ok(p) => p,
        Err(ControlError::NotRunning(_)) => {
            info!("takeover: no mdextmon running; starting");
            return Ok(None);
        }
        Err(e) => {
            return Err(DaemonError::Takeover(format!(
                "the running mdextmon does not answer: {e}"
            )))
        }
    };
    let listener = control::listen_aside(run_dir)?;
    info!(
        "taking over from mdextmon {} (pid {}) managing {}",
        old.version,
        old.pid,
        if old.arrays.is_empty() {
            "no arrays".to_string()
        } else {
            old.arrays.join(", ")
        }
    );
    let t0 = Instant::now();
    match control::act(run_dir, &Request::Handover, HANDOVER_ANSWER) {
        Ok(()) => {}
        Err(ControlError::Daemon {
            kind: ErrorKind::Malformed,
            message,
        }) => {
            // An older daemon without the handover request. Killing it is
            // safe at any step (the restart the state machine is checked
            // against); the held writes wait for this daemon, which adopts
            // every array right after.
            warn!(
                "takeover: pid {} cannot hand over ({message}); killing it",
                old.pid
            );
            kill_and_wait(old.pid)?;
        }
        Err(e) => {
            let _ = std::fs::remove_file(control::aside_path(run_dir));
            return Err(DaemonError::Takeover(format!(
                "mdextmon pid {} did not hand over: {e}",
                old.pid
            )));
        }
    }
    control::install_aside(run_dir)?;
    info!(
        "takeover: pid {} handed over after {} ms",
        old.pid,
        t0.elapsed().as_millis()
    );
    Ok(Some(listener))
}

/// SIGKILL `pid` and wait (bounded) until it is gone (or a zombie).
fn kill_and_wait(pid: u32) -> Result<(), DaemonError> {
    let p = nix::unistd::Pid::from_raw(
        i32::try_from(pid).map_err(|_| DaemonError::Takeover(format!("pid {pid} out of range")))?,
    );
    match nix::sys::signal::kill(p, Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => return Err(DaemonError::Takeover(format!("killing pid {pid}: {e}"))),
    }
    let t0 = Instant::now();
    while process_alive(pid) {
        if t0.elapsed() > KILL_WAIT {
            return Err(DaemonError::Takeover(format!(
                "pid {pid} still alive {} s after SIGKILL",
                KILL_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Whether `pid` runs (a zombie has exited).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The configuration (event program, spare groups). A configuration that
/// cannot be read is logged and ignored: the daemon runs without a program
/// or spare groups rather than not at all (writes to its arrays would
/// hang).
fn load_config(path: &std::path::Path) -> crate::config::Config {
    match crate::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}; no event program, no spare groups");
            crate::config::Config::default()
        }
    }
}

/// A managed array's status, as this daemon reports it.
fn own_status(m: &Managed) -> crate::status::ArrayStatus {
    let mut s = m.status();
    s.managed = true;
    s.mdextmon_pid = Some(std::process::id());
    s
}

/// The answer to a request about an array this daemon does not manage.
fn not_managed(md: &str) -> Response {
    Response::error(
        ErrorKind::NotManaged,
        format!("{md}: not managed by mdextmon"),
    )
}

/// The answer to a failed request: refused (nothing changed), busy, or
/// failed part-way.
fn managed_error(e: &ManagedError) -> Response {
    let kind = match e {
        ManagedError::InUse { .. } | ManagedError::Device(DeviceError::Busy(_)) => ErrorKind::Busy,
        e if e.changed_nothing() => ErrorKind::Refused,
        _ => ErrorKind::Failed,
    };
    Response::error(kind, e.to_string())
}

impl Daemon {
    fn member_op(
        &mut self,
        md: &str,
        device: &str,
        f: impl FnOnce(&mut Managed) -> Result<(), ManagedError>,
    ) -> Response {
        match self.arrays.get_mut(md) {
            None => not_managed(md),
            Some(m) => {
                let r = f(m);
                // Whatever the request started (a rebuild, a removal) is
                // followed up on the next turn even without a notification.
                self.unsettled.push(md.to_string());
                match r {
                    Ok(()) => Response::Done,
                    Err(e) => naming_device(managed_error(&e), md, device),
                }
            }
        }
    }
}

/// An error answer to fail, remove or add that names the device asked
/// about, if it does not already ("md127: member 0 is active: fail it
/// first" did not say which device that was).
fn naming_device(resp: Response, md: &str, device: &str) -> Response {
    match resp {
        Response::Error { kind, message } if !message.contains(device) => {
            let rest = message
                .strip_prefix(md)
                .and_then(|r| r.strip_prefix(": "))
                .unwrap_or(&message);
            Response::error(kind, format!("{md}: {device}: {rest}"))
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect: "md127: member 0 is active: fail it first" did not say
    /// which device the refused remove was about.
    #[test]
    fn member_errors_name_the_device() {
        let r = naming_device(
            Response::error(
                ErrorKind::Refused,
                "md127: member 0 is active: fail it first",
            ),
            "md127",
            "/dev/loop2",
        );
        assert_eq!(
            r,
            Response::error(
                ErrorKind::Refused,
                "md127: /dev/loop2: member 0 is active: fail it first"
            )
        );
        let named = Response::error(ErrorKind::Refused, "/dev/loop0 is not a member of md127");
        assert_eq!(naming_device(named.clone(), "md127", "/dev/loop0"), named);
        assert_eq!(
            naming_device(Response::Done, "md127", "/dev/loop0"),
            Response::Done
        );
    }
}
