//! mdextmon's I/O loop: thin on purpose. It waits on md's sysfs
//! notifications (POLLPRI), on signals (signalfd) and on the control socket,
//! re-reads the kernel's state of an array after any wake, feeds it to the
//! pure state machine ([`crate::monitor`]) and carries out the actions it
//! returns, in order, stopping at the first failure.
//!
//! There are no timers: with nothing happening, the daemon sleeps in
//! `poll(2)` with an infinite timeout. A control client that connected but
//! has not finished its request bounds the sleep by its deadline
//! ([`control::Server`]); clients never block the loop.

use crate::control::{self, ErrorKind, Pong, Request, Response};
use crate::device::DeviceError;
use crate::managed::{Managed, ManagedError};
use crate::md::ArrayState;
use crate::report::Reporter;
use crate::sysfs::Sysfs;
use log::{error, info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
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
}

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
}

impl Daemon {
    /// Block the signals the loop handles, lock memory, open the socket.
    pub fn new(cfg: Config) -> Result<Daemon, DaemonError> {
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            mask.add(s);
        }
        mask.thread_block().map_err(setup("blocking signals"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(setup("signalfd"))?;
        // The write-pending path must not wait on page faults of the daemon
        // itself: a page-in might need the very array that is blocked.
        if let Err(e) = nix::sys::mman::mlockall(
            nix::sys::mman::MlockAllFlags::MCL_CURRENT | nix::sys::mman::MlockAllFlags::MCL_FUTURE,
        ) {
            warn!("mlockall failed ({e}); continuing without locked memory");
        }
        let server = control::Server::new(control::listen(&cfg.run_dir)?).map_err(|source| {
            DaemonError::Setup {
                what: "control socket",
                source,
            }
        })?;
        let reporter = Reporter::new(&cfg.journal_socket, event_program(&cfg.config));
        let pid = cfg.run_dir.join("mdextmon.pid");
        let _ = std::fs::write(&pid, format!("{}\n", std::process::id()));
        let mut d = Daemon {
            cfg,
            server,
            signals,
            arrays: BTreeMap::new(),
            terminating: false,
            unsettled: Vec::new(),
            reporter,
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
        loop {
            self.report_events();
            if self.terminating {
                let all_clean = self.arrays.values_mut().all(|m| m.make_clean());
                if all_clean {
                    info!("all arrays clean; exiting");
                    break;
                }
            }
            // Watch fds of every array, then the signal fd, then the control
            // socket (listener and clients).
            let woke: Vec<String>;
            let sig;
            let clients: Vec<PollFlags>;
            {
                let mut fds: Vec<PollFd> = Vec::new();
                let mut owners: Vec<&str> = Vec::new();
                for (name, m) in &self.arrays {
                    for fd in m.watch_fds() {
                        fds.push(PollFd::new(fd, PollFlags::POLLPRI | PollFlags::POLLERR));
                        owners.push(name);
                    }
                }
                let nw = fds.len();
                fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
                fds.extend(self.server.poll_fds());
                // While terminating with an array not yet clean, or while an
                // array has not settled (an action failed), look again soon:
                // the kernel does not notify again for what it already shows.
                // A client's deadline bounds the wait too.
                let soon = (self.terminating || !self.unsettled.is_empty())
                    .then_some(Duration::from_millis(200));
                let timeout = match (soon, self.server.timeout(Instant::now())) {
                    (None, None) => PollTimeout::NONE,
                    (a, b) => {
                        let d = a.into_iter().chain(b).min().unwrap_or_default();
                        // Whole milliseconds, rounded up: a deadline less
                        // than 1 ms away must not spin.
                        let ms = d.as_micros().div_ceil(1000);
                        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
                        PollTimeout::try_from(Duration::from_millis(ms)).unwrap_or(PollTimeout::MAX)
                    }
                };
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        error!("poll: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let mut w: Vec<String> = Vec::new();
                for (k, f) in fds[..nw].iter().enumerate() {
                    if ready(f) && w.last().map(String::as_str) != Some(owners[k]) {
                        w.push(owners[k].to_string());
                    }
                }
                woke = w;
                sig = ready(&fds[nw]);
                clients = fds[nw + 1..]
                    .iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect();
            }
            let mut due: Vec<String> = woke;
            due.append(&mut self.unsettled);
            due.sort();
            due.dedup();
            for name in due {
                if let Some(m) = self.arrays.get_mut(&name) {
                    if !m.wake() {
                        self.unsettled.push(name);
                    }
                }
            }
            if sig {
                while let Ok(Some(s)) = self.signals.read_signal() {
                    match Signal::try_from(s.ssi_signo as i32) {
                        Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => {
                            info!(
                                "signal {}: leaving every array clean, then exiting",
                                s.ssi_signo
                            );
                            self.terminating = true;
                        }
                        Ok(Signal::SIGHUP) => {
                            // Look at everything again on the next turn.
                            self.unsettled.extend(self.arrays.keys().cloned());
                            self.reporter.set_program(event_program(&self.cfg.config));
                        }
                        Ok(Signal::SIGCHLD) => self.reporter.reap(),
                        _ => {}
                    }
                }
            }
            for (id, req) in self.server.service(&clients, Instant::now()) {
                let resp = self.handle(req);
                self.server.reply(id, &resp, Instant::now());
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
        }
        let _ = std::fs::remove_file(control::socket_path(&self.cfg.run_dir));
        let _ = std::fs::remove_file(self.cfg.run_dir.join("mdextmon.pid"));
        Ok(())
    }

    fn handle(&mut self, req: Request) -> Response {
        let not_managed = |md: &str| {
            Response::error(
                ErrorKind::NotManaged,
                format!("{md}: not managed by mdextmon"),
            )
        };
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
                self.terminating = true;
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
            Request::Stop { md } => match self.arrays.get_mut(&md) {
                Some(m) => match m.stop() {
                    Ok(()) => {
                        self.arrays.remove(&md);
                        Response::Done
                    }
                    Err(e) => managed_error(&e),
                },
                None => not_managed(&md),
            },
            Request::Fail { md, device } => self.member_op(&md, |m| m.fail(&device)),
            Request::Remove { md, device } => self.member_op(&md, |m| m.remove(&device)),
            Request::Add { md, device } => self.member_op(&md, |m| m.add(&device)),
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
        self.reporter.reap();
    }
}

/// The event program the configuration names. A configuration that cannot
/// be read is logged and ignored: the daemon runs without a program rather
/// than not at all (writes to its arrays would hang).
fn event_program(path: &std::path::Path) -> Option<PathBuf> {
    match crate::config::Config::load(path) {
        Ok(c) => c.program,
        Err(e) => {
            error!("{e}; no event program");
            None
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
        f: impl FnOnce(&mut Managed) -> Result<(), ManagedError>,
    ) -> Response {
        match self.arrays.get_mut(md) {
            None => Response::error(
                ErrorKind::NotManaged,
                format!("{md}: not managed by mdextmon"),
            ),
            Some(m) => {
                let r = f(m);
                // Whatever the request started (a rebuild, a removal) is
                // followed up on the next turn even without a notification.
                self.unsettled.push(md.to_string());
                match r {
                    Ok(()) => Response::Done,
                    Err(e) => managed_error(&e),
                }
            }
        }
    }
}
