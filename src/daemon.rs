//! mdextmon's I/O loop: thin on purpose. It waits on md's sysfs
//! notifications (POLLPRI), on signals (signalfd) and on the control socket,
//! re-reads the kernel's state of an array after any wake, feeds it to the
//! pure state machine ([`crate::monitor`]) and carries out the actions it
//! returns, in order, stopping at the first failure.
//!
//! There are no timers: with nothing happening, the daemon sleeps in
//! `poll(2)` with an infinite timeout.

use crate::control::{self, Request, Response};
use crate::managed::Managed;
use crate::sysfs::Sysfs;
use log::{error, info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The sysfs tree.
    pub sysfs: Sysfs,
    /// Where the socket and pid file live.
    pub run_dir: PathBuf,
    /// Arrays to manage at start (md device names).
    pub arrays: Vec<String>,
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
    listener: UnixListener,
    signals: SignalFd,
    arrays: BTreeMap<String, Managed>,
    terminating: bool,
    /// Arrays whose last wake did not settle: retried on a short timeout.
    unsettled: Vec<String>,
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
        // The write-pending path must not wait on page faults of the daemon
        // itself: a page-in might need the very array that is blocked.
        if let Err(e) = nix::sys::mman::mlockall(
            nix::sys::mman::MlockAllFlags::MCL_CURRENT | nix::sys::mman::MlockAllFlags::MCL_FUTURE,
        ) {
            warn!("mlockall failed ({e}); continuing without locked memory");
        }
        let listener = control::listen(&cfg.run_dir)?;
        listener
            .set_nonblocking(true)
            .map_err(|source| DaemonError::Setup {
                what: "control socket",
                source,
            })?;
        let pid = cfg.run_dir.join("mdextmon.pid");
        let _ = std::fs::write(&pid, format!("{}\n", std::process::id()));
        let mut d = Daemon {
            cfg,
            listener,
            signals,
            arrays: BTreeMap::new(),
            terminating: false,
            unsettled: Vec::new(),
        };
        // With no arrays named, take over every running mdext array (a
        // restart, or a takeover from another instance).
        let names = if d.cfg.arrays.is_empty() {
            crate::managed::running_arrays(&d.cfg.sysfs)
        } else {
            d.cfg.arrays.clone()
        };
        for md in names {
            if let Err(e) = d.manage(&md, false) {
                error!("{md}: cannot manage: {e}");
            }
        }
        Ok(d)
    }

    fn manage(&mut self, md: &str, readonly: bool) -> Result<(), String> {
        if self.arrays.contains_key(md) {
            return Ok(());
        }
        let mut m = Managed::take_over(&self.cfg.sysfs, md).map_err(|e| e.to_string())?;
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
            if self.terminating {
                let all_clean = self.arrays.values_mut().all(|m| m.make_clean());
                if all_clean {
                    info!("all arrays clean; exiting");
                    break;
                }
            }
            // Watch fds of every array, then the signal fd and the listener.
            let woke: Vec<String>;
            let (sig, lis);
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
                fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
                // While terminating with an array not yet clean, or while an
                // array has not settled (an action failed), look again soon:
                // the kernel does not notify again for what it already shows.
                let timeout = if self.terminating || !self.unsettled.is_empty() {
                    PollTimeout::from(200u16)
                } else {
                    PollTimeout::NONE
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
                lis = ready(&fds[nw + 1]);
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
                        }
                        _ => {}
                    }
                }
            }
            if lis {
                self.accept_clients();
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

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => self.serve(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!("accept: {e}");
                    break;
                }
            }
        }
    }

    /// One request per connection: read a line (bounded in size and time),
    /// answer, close.
    fn serve(&mut self, s: UnixStream) {
        let resp = match control::check_peer(&s) {
            Err(e) => Response::error(e.to_string()),
            Ok(()) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                let read = s.try_clone().map(|c| {
                    BufReader::new(c)
                        .take(control::MAX_LINE as u64 + 1)
                        .read_line(&mut line)
                });
                match read {
                    Ok(Ok(_)) => match control::parse_request(&line) {
                        Ok(req) => self.handle(req),
                        Err(e) => Response::error(e.to_string()),
                    },
                    Ok(Err(e)) | Err(e) => Response::error(format!("reading request: {e}")),
                }
            }
        };
        let mut s = s;
        let mut out = serde_json::to_string(&resp)
            .unwrap_or_else(|_| "{\"status\":\"error\",\"message\":\"internal\"}".into());
        out.push('\n');
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(out.as_bytes());
    }

    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Ping => Response::Ok {
                data: serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "pid": std::process::id(),
                    "arrays": self.arrays.keys().collect::<Vec<_>>(),
                }),
            },
            Request::Manage { md, readonly } => match self.manage(&md, readonly) {
                Ok(()) => Response::ok(),
                Err(e) => Response::error(e),
            },
            Request::Status => Response::Ok {
                data: serde_json::Value::Array(self.arrays.values().map(Managed::status).collect()),
            },
            Request::Detail { md } => match self.arrays.get(&md) {
                Some(m) => Response::Ok { data: m.status() },
                None => Response::error(format!("{md}: not managed by mdextmon")),
            },
            Request::Shutdown => {
                self.terminating = true;
                Response::ok()
            }
            Request::Release { md } => match self.arrays.get_mut(&md) {
                Some(m) => {
                    m.make_clean();
                    self.arrays.remove(&md);
                    Response::ok()
                }
                None => Response::error(format!("{md}: not managed by mdextmon")),
            },
            Request::Stop { md } => match self.arrays.get_mut(&md) {
                Some(m) => match m.stop() {
                    Ok(()) => {
                        self.arrays.remove(&md);
                        Response::ok()
                    }
                    Err(e) => Response::error(e),
                },
                None => Response::error(format!("{md}: not managed by mdextmon")),
            },
            Request::Fail { md, device } => self.member_op(&md, |m| m.fail(&device)),
            Request::Remove { md, device } => self.member_op(&md, |m| m.remove(&device)),
            Request::Add { md, device } => self.member_op(&md, |m| m.add(&device)),
        }
    }
}

impl Daemon {
    fn member_op(
        &mut self,
        md: &str,
        f: impl FnOnce(&mut Managed) -> Result<(), String>,
    ) -> Response {
        match self.arrays.get_mut(md) {
            None => Response::error(format!("{md}: not managed by mdextmon")),
            Some(m) => {
                let r = f(m);
                // Whatever the request started (a rebuild, a removal) is
                // followed up on the next turn even without a notification.
                self.unsettled.push(md.to_string());
                match r {
                    Ok(()) => Response::ok(),
                    Err(e) => Response::error(e),
                }
            }
        }
    }
}
