//! The control socket between `mdextctl` and `mdextmon`.
//!
//! A Unix stream socket in `/run/mdext/` (mode 0600, root only; every peer is
//! checked with `SO_PEERCRED`), speaking JSON lines: one [`Request`] per
//! connection, one [`Response`] line back. Replies are typed, one kind per
//! kind of request (a [`Pong`], the [`ArrayStatus`] of arrays, done), and
//! errors carry an [`ErrorKind`] that clients decide on, never the text. A
//! malformed line gets an error response naming the problem, and changes
//! nothing.
//!
//! The daemon's side ([`Server`]) keeps every connection non-blocking in its
//! poll set, so a client that connects and says nothing delays no one.

use crate::status::ArrayStatus;
use nix::poll::{PollFd, PollFlags};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default directory for the socket and the pid file.
pub const RUN_DIR: &str = "/run/mdext";
/// Socket file name.
pub const SOCKET_NAME: &str = "mdextmon.sock";
/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

/// The socket path under a run directory.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}

/// A request from mdextctl.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Is the daemon alive? Answers with its version and pid.
    Ping,
    /// Take over the running md device `md` (e.g. `md127`).
    Manage {
        /// md device name.
        md: String,
        /// Leave it read-only (otherwise a read-only array is made writable).
        #[serde(default)]
        readonly: bool,
    },
    /// Stop managing `md` (it stays running; metadata left clean if possible).
    Release {
        /// md device name.
        md: String,
    },
    /// Mark `md` clean and stop it.
    Stop {
        /// md device name.
        md: String,
    },
    /// Every managed array's state.
    Status,
    /// One array's state.
    Detail {
        /// md device name.
        md: String,
    },
    /// Fail a member (`device` is a path or kernel name).
    Fail {
        /// md device name.
        md: String,
        /// Member device.
        device: String,
    },
    /// Remove a failed or spare member.
    Remove {
        /// md device name.
        md: String,
        /// Member device.
        device: String,
    },
    /// Add a device: a returning member (rebuilt from the bitmap when that
    /// is safe) or a new one (full rebuild).
    Add {
        /// md device name.
        md: String,
        /// Device path.
        device: String,
        /// raid1: record it write-mostly and set md's `writemostly` (a
        /// returning member recorded so keeps the flag either way).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        write_mostly: bool,
        /// Add it as a spare (recorded as a spare, added to md without a
        /// slot; activated when a member fails).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        spare: bool,
    },
    /// Replace member `old` with device `new`: `new` is added as a spare
    /// and md copies `old` onto it (`want_replacement`), then fails `old`.
    Replace {
        /// md device name.
        md: String,
        /// The member to replace (path or kernel name).
        old: String,
        /// The device to copy it onto.
        new: String,
    },
    /// Grow (or shrink) an array: its component size (`size_sectors`, or
    /// the largest its devices allow with `max`), or for raid1 its number
    /// of mirrors (`raid_devices`).
    Grow {
        /// md device name.
        md: String,
        /// The component size asked for, in sectors.
        #[serde(default)]
        size_sectors: Option<u64>,
        /// As large as every device allows.
        #[serde(default)]
        max: bool,
        /// raid1: the number of mirrors.
        #[serde(default)]
        raid_devices: Option<u32>,
    },
    /// Exit after leaving every array clean.
    Shutdown,
    /// Hand every array over to the asking daemon (`mdextmon --takeover`):
    /// finish what is under way, answer, then stop acting and exit without
    /// touching the socket file or the arrays. The asker adopts every
    /// array right after the answer.
    Handover,
}

impl Request {
    /// The md device the request names, if it names one.
    pub fn md(&self) -> Option<&str> {
        match self {
            Request::Manage { md, .. }
            | Request::Release { md }
            | Request::Stop { md }
            | Request::Detail { md }
            | Request::Fail { md, .. }
            | Request::Remove { md, .. }
            | Request::Add { md, .. }
            | Request::Replace { md, .. }
            | Request::Grow { md, .. } => Some(md),
            Request::Ping | Request::Status | Request::Shutdown | Request::Handover => None,
        }
    }

    /// The command's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Manage { .. } => "manage",
            Request::Release { .. } => "release",
            Request::Stop { .. } => "stop",
            Request::Status => "status",
            Request::Detail { .. } => "detail",
            Request::Fail { .. } => "fail",
            Request::Remove { .. } => "remove",
            Request::Add { .. } => "add",
            Request::Replace { .. } => "replace",
            Request::Grow { .. } => "grow",
            Request::Shutdown => "shutdown",
            Request::Handover => "handover",
        }
    }
}

/// The daemon's answer: one kind per kind of request, tagged by `reply` on
/// the wire (`{"reply":"pong","version":"0.1.0","pid":42,"arrays":["md127"]}`,
/// `{"reply":"error","kind":"not-managed","message":"..."}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Response {
    /// Done, nothing to report (manage, release, stop, fail, remove, add,
    /// shutdown).
    Done,
    /// Answer to ping.
    Pong(Pong),
    /// Answer to status: every managed array.
    Status {
        /// One per managed array.
        arrays: Vec<ArrayStatus>,
    },
    /// Answer to detail.
    Detail {
        /// The array.
        array: ArrayStatus,
    },
    /// Refused or failed; nothing was changed unless `message` says so.
    Error {
        /// What kind of failure: clients decide on this, never on the text.
        kind: ErrorKind,
        /// One line naming the problem.
        message: String,
    },
}

/// The answer to a ping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// mdextmon's version.
    pub version: String,
    /// Its process ID.
    pub pid: u32,
    /// The md devices it manages.
    pub arrays: Vec<String>,
}

/// Why a request was not done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The daemon does not manage that md device.
    NotManaged,
    /// Declined (for example, not an mdext array); nothing was changed.
    Refused,
    /// In use (an array mounted or held open), or the daemon is out of
    /// connections.
    Busy,
    /// The request line is not a valid request (or came incomplete, too
    /// long or too late).
    Malformed,
    /// The peer is not root.
    NotRoot,
    /// Tried, and failed; the message says how far it got.
    Failed,
}

impl Response {
    /// An error answer.
    pub fn error(kind: ErrorKind, m: impl Into<String>) -> Response {
        Response::Error {
            kind,
            message: m.into(),
        }
    }

    /// The variant's name on the wire (for messages about unexpected
    /// answers).
    pub fn name(&self) -> &'static str {
        match self {
            Response::Done => "done",
            Response::Pong(_) => "pong",
            Response::Status { .. } => "status",
            Response::Detail { .. } => "detail",
            Response::Error { .. } => "error",
        }
    }
}

/// Control socket errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon listens.
    #[error("mdextmon is not running (no socket at {0})")]
    NotRunning(PathBuf),
    /// I/O on the socket.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent something that is not a valid message.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// A peer that is not root.
    #[error("refused: peer uid {0} is not root")]
    NotRoot(u32),
    /// The daemon answered with an error.
    #[error("{message}")]
    Daemon {
        /// What kind.
        kind: ErrorKind,
        /// Its one-line message.
        message: String,
    },
    /// The daemon answered with another kind of reply than the request
    /// calls for.
    #[error("mdextmon answered '{got}' to a {asked} request")]
    Unexpected {
        /// The request.
        asked: &'static str,
        /// The reply's kind.
        got: &'static str,
    },
}

impl ControlError {
    /// The error kind a daemon answers this error with.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ControlError::Malformed(_) => ErrorKind::Malformed,
            ControlError::NotRoot(_) => ErrorKind::NotRoot,
            ControlError::Daemon { kind, .. } => *kind,
            ControlError::NotRunning(_)
            | ControlError::Io { .. }
            | ControlError::Unexpected { .. } => ErrorKind::Failed,
        }
    }

    /// This error as an answer to a client.
    pub fn response(&self) -> Response {
        Response::error(self.kind(), self.to_string())
    }
}

/// Parse one request line. Errors name what is wrong.
pub fn parse_request(line: &str) -> Result<Request, ControlError> {
    if line.len() > MAX_LINE {
        return Err(ControlError::Malformed(format!(
            "line of {} bytes is too long",
            line.len()
        )));
    }
    let req: Request =
        serde_json::from_str(line.trim()).map_err(|e| ControlError::Malformed(e.to_string()))?;
    // md names become sysfs paths (/sys/block/<md>/md): a path or an empty
    // name must not reach them.
    if let Some(md) = req.md() {
        if !crate::sysfs::valid_md_name(md) {
            return Err(ControlError::Malformed(format!(
                "md {md:?} is not an md device name (md127, md_home)"
            )));
        }
    }
    Ok(req)
}

/// Send one request and wait for the answer.
pub fn call(run_dir: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let path = socket_path(run_dir);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning(path));
        }
        Err(e) => return Err(io(e)),
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line =
        serde_json::to_string(req).map_err(|e| ControlError::Malformed(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut r = BufReader::new(s);
    let mut answer = String::new();
    r.read_line(&mut answer).map_err(io)?;
    if answer.is_empty() {
        return Err(ControlError::Malformed(
            "the daemon closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(answer.trim()).map_err(|e| ControlError::Malformed(e.to_string()))
}

/// Send a request; an error answer becomes [`ControlError::Daemon`]
/// carrying its kind.
pub fn request(run_dir: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    match call(run_dir, req, timeout)? {
        Response::Error { kind, message } => Err(ControlError::Daemon { kind, message }),
        r => Ok(r),
    }
}

/// Send a request that answers [`Response::Done`].
pub fn act(run_dir: &Path, req: &Request, timeout: Duration) -> Result<(), ControlError> {
    match request(run_dir, req, timeout)? {
        Response::Done => Ok(()),
        r => Err(ControlError::Unexpected {
            asked: req.name(),
            got: r.name(),
        }),
    }
}

/// Ping: the daemon's version, pid and managed arrays.
pub fn ping(run_dir: &Path, timeout: Duration) -> Result<Pong, ControlError> {
    match request(run_dir, &Request::Ping, timeout)? {
        Response::Pong(p) => Ok(p),
        r => Err(ControlError::Unexpected {
            asked: "ping",
            got: r.name(),
        }),
    }
}

/// Create the listening socket: the run directory (0700) and a socket file
/// (0600). A stale socket file with nobody listening is replaced.
pub fn listen(run_dir: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(run_dir);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(run_dir).map_err(io)?;
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another mdextmon is listening",
            )));
        }
        std::fs::remove_file(&path).map_err(io)?;
    }
    let l = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// The temporary name a taking-over daemon binds its socket at, beside
/// the socket the running daemon still listens on.
pub fn aside_path(run_dir: &Path) -> PathBuf {
    run_dir.join(format!("{SOCKET_NAME}.{}", std::process::id()))
}

/// For a takeover: bind a listening socket (0600) at [`aside_path`], while
/// the running daemon still owns [`socket_path`]. [`install_aside`] then
/// moves it into place.
pub fn listen_aside(run_dir: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let path = aside_path(run_dir);
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(run_dir).map_err(io)?;
    // A leftover of an earlier process with our pid.
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// Move the socket bound by [`listen_aside`] over [`socket_path`] in one
/// `rename(2)`: a client connecting meanwhile reaches the old socket or
/// the new one, never no socket.
pub fn install_aside(run_dir: &Path) -> Result<(), ControlError> {
    let path = socket_path(run_dir);
    std::fs::rename(aside_path(run_dir), &path).map_err(|source| ControlError::Io { path, source })
}

/// Check the peer is root (`SO_PEERCRED`).
pub fn check_peer(s: &UnixStream) -> Result<(), ControlError> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(s, PeerCredentials).map_err(|e| ControlError::Io {
        path: PathBuf::from("peer"),
        source: e.into(),
    })?;
    if cred.uid() != 0 {
        return Err(ControlError::NotRoot(cred.uid()));
    }
    Ok(())
}

/// Most client connections the daemon keeps open at once. A new one beyond
/// this closes the oldest connection still waiting for its request.
pub const MAX_CLIENTS: usize = 256;

/// How long a client has to send its request once connected, and then to
/// read the answer; past it the connection is closed.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(10);

/// How long a [`Server`] out of file descriptors waits before it tries to
/// accept again, when no client closes meanwhile.
pub const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// A client connection of a [`Server`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientId(u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Collecting the request line.
    Reading,
    /// The request was handed out; waiting for [`Server::reply`].
    Answering,
    /// The answer is being written.
    Writing,
}

struct Client {
    id: u64,
    stream: UnixStream,
    buf: Vec<u8>,
    out: Vec<u8>,
    phase: Phase,
    deadline: Instant,
    closed: bool,
}

/// What a non-blocking read of a client's request gave.
enum Read {
    /// Nothing complete yet.
    Pending,
    /// A whole request line (or what came before the end of the stream).
    Line(Vec<u8>),
    /// The peer went away without sending anything, or reading failed.
    Gone,
    /// More than [`MAX_LINE`] bytes without a newline.
    TooLong(usize),
}

impl Client {
    fn read(&mut self) -> Read {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                self.buf.truncate(nl);
                return Read::Line(std::mem::take(&mut self.buf));
            }
            if self.buf.len() > MAX_LINE {
                return Read::TooLong(self.buf.len());
            }
            match (&self.stream).read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Read::Gone,
                Ok(0) => return Read::Line(std::mem::take(&mut self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Read::Pending,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Read::Gone,
            }
        }
    }

    /// Write what is pending; true when all of it is out (or the peer is
    /// gone: nothing more to do either way).
    fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match (&self.stream).write(&self.out) {
                Ok(0) => return true,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        true
    }

    /// Queue an answer and write what the socket takes now.
    fn answer(&mut self, resp: &Response, deadline: Instant) {
        self.out = response_line(resp).into_bytes();
        self.phase = Phase::Writing;
        self.deadline = deadline;
        if self.flush() {
            self.closed = true;
        }
    }

    /// Turn what [`Client::read`] gave into a request, an answer or a close.
    fn take(&mut self, r: Read, deadline: Instant) -> Option<Request> {
        match r {
            Read::Pending => None,
            Read::Gone => {
                self.closed = true;
                None
            }
            Read::TooLong(n) => {
                let e = ControlError::Malformed(format!(
                    "request of more than {n} bytes without a newline is too long (at most {MAX_LINE})"
                ));
                self.answer(&e.response(), deadline);
                None
            }
            Read::Line(bytes) => {
                let parsed = std::str::from_utf8(&bytes)
                    .map_err(|e| ControlError::Malformed(format!("request is not UTF-8: {e}")))
                    .and_then(parse_request);
                match parsed {
                    Ok(req) => {
                        self.phase = Phase::Answering;
                        Some(req)
                    }
                    Err(e) => {
                        self.answer(&e.response(), deadline);
                        None
                    }
                }
            }
        }
    }
}

/// One answer line (a serialisation failure, which the types rule out,
/// still gets a valid line).
fn response_line(resp: &Response) -> String {
    let mut line = serde_json::to_string(resp).unwrap_or_else(|e| {
        format!(r#"{{"reply":"error","kind":"failed","message":"encoding the answer: {e}"}}"#)
    });
    line.push('\n');
    line
}

/// Write one line to a connection about to be dropped, without waiting.
fn parting_word(stream: &UnixStream, resp: &Response) {
    let _ = stream.set_nonblocking(true);
    let _ = (&*stream).write(response_line(resp).as_bytes());
}

/// The daemon's side of the control socket: the listener and every open
/// client connection, all non-blocking and watched by the caller's
/// `poll(2)` ([`Server::poll_fds`], [`Server::timeout`]). Each connection
/// carries one request line, buffered as it comes (at most [`MAX_LINE`]
/// bytes), and one answer. A client that connects and says nothing delays
/// no one: it is closed at its deadline ([`CLIENT_DEADLINE`]), or earlier
/// when [`MAX_CLIENTS`] others are open and a new one arrives.
pub struct Server {
    listener: UnixListener,
    clients: Vec<Client>,
    next: u64,
    max_clients: usize,
    deadline: Duration,
    /// Out of file descriptors with no idle client to close: the listener
    /// is left out of the poll set until a client goes or this time comes
    /// (otherwise its queued connection wakes `poll(2)` at once, again and
    /// again).
    accept_paused: Option<Instant>,
}

impl Server {
    /// Serve on `listener` (made non-blocking).
    pub fn new(listener: UnixListener) -> std::io::Result<Server> {
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            clients: Vec::new(),
            next: 0,
            max_clients: MAX_CLIENTS,
            deadline: CLIENT_DEADLINE,
            accept_paused: None,
        })
    }

    /// Other limits than [`MAX_CLIENTS`] and [`CLIENT_DEADLINE`].
    pub fn with_limits(mut self, max_clients: usize, deadline: Duration) -> Server {
        self.max_clients = max_clients.max(1);
        self.deadline = deadline;
        self
    }

    /// Open client connections.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// What to poll: the listener first, then each client, in the order
    /// [`Server::service`] expects their `revents`.
    pub fn poll_fds(&self) -> Vec<PollFd<'_>> {
        self.watched()
            .into_iter()
            .map(|(_, fd, ev)| PollFd::new(fd, ev))
            .collect()
    }

    /// [`Server::poll_fds`] with a key each that stays with its descriptor
    /// while it lives (0 for the socket, a client's id + 1), for a wait set
    /// that registers them once ([`crate::waitset::WaitSet::server`]).
    pub fn watched(&self) -> Vec<(u64, BorrowedFd<'_>, PollFlags)> {
        let listen = match self.accept_paused {
            Some(_) => PollFlags::empty(),
            None => PollFlags::POLLIN,
        };
        let mut v = vec![(0, self.listener.as_fd(), listen)];
        for c in &self.clients {
            let ev = match c.phase {
                Phase::Reading => PollFlags::POLLIN,
                Phase::Writing => PollFlags::POLLOUT,
                Phase::Answering => PollFlags::empty(),
            };
            v.push((c.id + 1, c.stream.as_fd(), ev));
        }
        v
    }

    /// How long the caller may sleep in `poll(2)` before a client's
    /// deadline passes (`None`: no client is open).
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        // A client waiting for its answer has no deadline: the daemon
        // answers it when the request is done (a stop under way).
        self.clients
            .iter()
            .filter(|c| c.phase != Phase::Answering)
            .map(|c| c.deadline)
            .chain(self.accept_paused)
            .map(|t| t.saturating_duration_since(now))
            .min()
    }

    /// After `poll(2)`: `revents` holds what poll reported for each
    /// descriptor of [`Server::poll_fds`], in order. Reads what arrived,
    /// writes pending answers, accepts new clients (checking each peer is
    /// root), closes clients past their deadline, answers malformed requests
    /// itself, and returns the requests to answer with [`Server::reply`].
    pub fn service(&mut self, revents: &[PollFlags], now: Instant) -> Vec<(ClientId, Request)> {
        let deadline = now + self.deadline;
        let mut requests = Vec::new();
        if self.accept_paused.is_some_and(|t| t <= now) {
            self.accept_paused = None;
        }
        for (c, ev) in self.clients.iter_mut().zip(revents.iter().skip(1)) {
            if ev.is_empty() || c.closed {
                continue;
            }
            match c.phase {
                Phase::Reading => {
                    let r = c.read();
                    if let Some(req) = c.take(r, deadline) {
                        requests.push((ClientId(c.id), req));
                    }
                }
                Phase::Writing => {
                    if c.flush() {
                        c.closed = true;
                    }
                }
                // Hung up before its answer: the answer's write notices.
                Phase::Answering => {}
            }
        }
        if revents.first().is_some_and(|ev| !ev.is_empty()) {
            self.accept(now, &mut requests);
        }
        for c in self.clients.iter_mut().filter(|c| !c.closed) {
            if c.deadline > now {
                continue;
            }
            match c.phase {
                Phase::Reading => {
                    // What arrived since poll returned still counts.
                    let r = c.read();
                    if matches!(r, Read::Pending) {
                        let e = ControlError::Malformed(format!(
                            "no complete request line within {} s",
                            self.deadline.as_secs()
                        ));
                        parting_word(&c.stream, &e.response());
                        c.closed = true;
                    } else if let Some(req) = c.take(r, deadline) {
                        requests.push((ClientId(c.id), req));
                    }
                }
                Phase::Writing => c.closed = true,
                Phase::Answering => {}
            }
        }
        self.retain();
        requests
    }

    /// Drop the closed clients; a descriptor freed lets accepting resume.
    fn retain(&mut self) {
        let before = self.clients.len();
        self.clients.retain(|c| !c.closed);
        if self.clients.len() < before {
            self.accept_paused = None;
        }
    }

    /// Answer a request [`Server::service`] returned.
    pub fn reply(&mut self, id: ClientId, resp: &Response, now: Instant) {
        let deadline = now + self.deadline;
        if let Some(c) = self
            .clients
            .iter_mut()
            .find(|c| c.id == id.0 && c.phase == Phase::Answering)
        {
            c.answer(resp, deadline);
        }
        self.retain();
    }

    /// Before the daemon exits: write out the answers still pending, each
    /// within `limit` (the peer reads them; a peer that does not is given
    /// up on).
    pub fn drain(&mut self, limit: Duration) {
        for c in self
            .clients
            .iter_mut()
            .filter(|c| c.phase == Phase::Writing)
        {
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(limit));
            c.flush();
        }
        self.clients.clear();
    }

    fn accept(&mut self, now: Instant, requests: &mut Vec<(ClientId, Request)>) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The connection was reset before it was accepted.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: the
                    // connection stays queued. Close the oldest idle
                    // client and try again; with none to close, stop
                    // polling the listener until a client goes.
                    if self.make_room(now, requests) {
                        self.retain();
                        continue;
                    }
                    log::warn!(
                        "control socket: accept: {e}; no new connection is taken until one of the {} open ones closes",
                        self.clients.len()
                    );
                    self.accept_paused = Some(now + ACCEPT_RETRY);
                    return;
                }
            };
            if let Err(e) = check_peer(&stream) {
                parting_word(&stream, &e.response());
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.clients.iter().filter(|c| !c.closed).count() >= self.max_clients
                && !self.make_room(now, requests)
            {
                parting_word(
                    &stream,
                    &Response::error(
                        ErrorKind::Busy,
                        format!(
                            "mdextmon is answering {} connections; try again",
                            self.max_clients
                        ),
                    ),
                );
                continue;
            }
            self.clients.push(Client {
                id: self.next,
                stream,
                buf: Vec::new(),
                out: Vec::new(),
                phase: Phase::Reading,
                deadline: now + self.deadline,
                closed: false,
            });
            self.next += 1;
        }
    }

    /// Close the oldest client still waiting for its request (one whose
    /// request has arrived meanwhile is taken instead, and the next oldest
    /// looked at). False if every client is past its request.
    fn make_room(&mut self, now: Instant, requests: &mut Vec<(ClientId, Request)>) -> bool {
        let deadline = now + self.deadline;
        let max = self.max_clients;
        for c in self.clients.iter_mut() {
            if c.closed || c.phase != Phase::Reading {
                continue;
            }
            let r = c.read();
            if matches!(r, Read::Pending) {
                let e = Response::error(
                    ErrorKind::Busy,
                    format!("closed: {max} connections are open and this one sent no request"),
                );
                parting_word(&c.stream, &e);
                c.closed = true;
                return true;
            }
            if let Some(req) = c.take(r, deadline) {
                requests.push((ClientId(c.id), req));
            }
            if c.closed {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Ping,
            Request::Manage {
                md: "md127".into(),
                readonly: false,
            },
            Request::Fail {
                md: "md127".into(),
                device: "/dev/loop1".into(),
            },
            Request::Status,
            Request::Shutdown,
        ] {
            let s = serde_json::to_string(&r).expect("ser");
            assert_eq!(parse_request(&s).expect("parse"), r);
        }
        assert_eq!(
            parse_request(r#"{"cmd":"manage","md":"md1"}"#).expect("parse"),
            Request::Manage {
                md: "md1".into(),
                readonly: false
            }
        );
    }

    #[test]
    fn malformed_requests_name_the_problem() {
        let e = parse_request("{not json").expect_err("bad");
        assert!(e.to_string().starts_with("malformed control message"));
        let e = parse_request(r#"{"cmd":"format-disk"}"#).expect_err("unknown");
        assert!(e.to_string().contains("format-disk"), "{e}");
        let e = parse_request(r#"{"cmd":"manage"}"#).expect_err("missing md");
        assert!(e.to_string().contains("md"), "{e}");
        let long = "x".repeat(MAX_LINE + 1);
        assert!(parse_request(&long)
            .expect_err("long")
            .to_string()
            .contains("too long"));
    }

    /// Defects: an md name went into sysfs paths as given ("/etc",
    /// "../.."), and unknown fields were ignored (a misspelt "readonly"
    /// made the array writable).
    #[test]
    fn md_names_and_unknown_fields_are_refused() {
        for md in [
            "",
            "/etc",
            "../..",
            "md127/../../x",
            "sda",
            "md",
            "md_",
            "md1 ",
        ] {
            for cmd in ["manage", "release", "stop", "detail"] {
                let line = serde_json::json!({"cmd": cmd, "md": md}).to_string();
                let e = parse_request(&line).expect_err(&line);
                assert_eq!(
                    e.to_string(),
                    format!("malformed control message: md {md:?} is not an md device name (md127, md_home)"),
                    "{line}"
                );
            }
            let line =
                serde_json::json!({"cmd": "fail", "md": md, "device": "/dev/sdb"}).to_string();
            assert!(parse_request(&line).is_err(), "{line}");
        }
        for md in ["md0", "md127", "md_home", "md_a-b"] {
            let line = serde_json::json!({"cmd": "stop", "md": md}).to_string();
            assert_eq!(parse_request(&line).expect(&line).md(), Some(md));
        }
        let e = parse_request(r#"{"cmd":"manage","md":"md127","read-only":true}"#)
            .expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `read-only`"), "{e}");
        let e = parse_request(r#"{"cmd":"stop","md":"md127","force":true}"#)
            .expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `force`"), "{e}");
        // serde checks no fields of variants without any (ping, status,
        // shutdown, handover): an extra field there changes nothing.
        assert_eq!(
            parse_request(r#"{"cmd":"ping","verbose":1}"#).expect("ping"),
            Request::Ping
        );
    }

    #[test]
    fn non_root_peer_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        if !nix::unistd::getuid().is_root() {
            // The check under test compares against uid 0; as non-root the
            // client below would be "root" relative to nothing. CI runs as
            // root (the guest tests need it), so this branch is not taken there.
            panic!("this test must run as root");
        }
        let d = tempfile::tempdir().expect("tmp");
        let l = listen(d.path()).expect("listen");
        // Open the directory and socket to everyone, so that only
        // SO_PEERCRED stands between a non-root client and the daemon.
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(
            socket_path(d.path()),
            std::fs::Permissions::from_mode(0o666),
        )
        .expect("chmod");
        let mut c = std::process::Command::new("python3");
        c.arg("-c")
            .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'{\"cmd\":\"ping\"}\\n'); s.recv(100)")
            .arg(socket_path(d.path()));
        // SAFETY: setuid is async-signal-safe and runs in the child only.
        unsafe {
            c.pre_exec(|| {
                nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).map_err(std::io::Error::from)
            });
        }
        let mut child = c.spawn().expect("python3 (installed by scripts/deps)");
        let (s, _) = l.accept().expect("accept");
        let e = check_peer(&s).expect_err("a non-root peer must be refused");
        assert!(matches!(e, ControlError::NotRoot(65534)), "{e}");
        assert!(e.to_string().contains("not root"), "{e}");
        drop(s);
        let _ = child.wait();
    }

    #[test]
    fn call_reports_not_running() {
        let d = tempfile::tempdir().expect("tmp");
        let e = call(d.path(), &Request::Ping, Duration::from_secs(1)).expect_err("none");
        assert!(matches!(e, ControlError::NotRunning(_)), "{e}");
    }

    #[test]
    fn listen_and_call() {
        let d = tempfile::tempdir().expect("tmp");
        let l = listen(d.path()).expect("listen");
        let t = std::thread::spawn(move || {
            for answer in [
                r#"{"reply":"pong","version":"0.1.0","pid":1,"arrays":["md127"]}"#,
                r#"{"reply":"error","kind":"not-managed","message":"md9: not managed by mdextmon"}"#,
            ] {
                let (s, _) = l.accept().expect("accept");
                check_peer(&s).expect("we run as root in tests or the check is skipped");
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut line = String::new();
                r.read_line(&mut line).expect("read");
                parse_request(&line).expect("parse");
                let mut w = s;
                writeln!(w, "{answer}").expect("write");
            }
        });
        let p = ping(d.path(), Duration::from_secs(5)).expect("ping");
        assert_eq!(
            p,
            Pong {
                version: "0.1.0".into(),
                pid: 1,
                arrays: vec!["md127".into()]
            }
        );
        // Clients decide on the kind, not on the text.
        let e = act(
            d.path(),
            &Request::Stop { md: "md9".into() },
            Duration::from_secs(5),
        )
        .expect_err("not managed");
        assert!(
            matches!(
                e,
                ControlError::Daemon {
                    kind: ErrorKind::NotManaged,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "md9: not managed by mdextmon");
        t.join().expect("join");
        // The first listener is gone now, so the stale socket is replaced.
        assert!(listen(d.path()).is_ok());
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            Response::Done,
            Response::Pong(Pong {
                version: "1".into(),
                pid: 2,
                arrays: vec![],
            }),
            Response::Status { arrays: vec![] },
            Response::error(ErrorKind::Busy, "md127: in use"),
        ] {
            let line = response_line(&r);
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            let back: Response = serde_json::from_str(&line).expect("de");
            assert_eq!(back, r);
        }
        assert_eq!(
            response_line(&Response::error(ErrorKind::NotRoot, "x")),
            "{\"reply\":\"error\",\"kind\":\"not-root\",\"message\":\"x\"}\n"
        );
    }

    /// A server on a fresh socket, and a way to connect to it.
    fn server(limit: usize) -> (tempfile::TempDir, Server) {
        let d = tempfile::tempdir().expect("tmp");
        let s = Server::new(listen(d.path()).expect("listen"))
            .expect("server")
            .with_limits(limit, Duration::from_secs(10));
        (d, s)
    }

    fn connect(d: &tempfile::TempDir) -> UnixStream {
        let c = UnixStream::connect(socket_path(d.path())).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c
    }

    /// One poll (what the daemon's loop does) and the requests it gave.
    fn pump(s: &mut Server, now: Instant) -> Vec<(ClientId, Request)> {
        let revents: Vec<PollFlags> = {
            let mut fds = s.poll_fds();
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).expect("poll");
            fds.iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect()
        };
        s.service(&revents, now)
    }

    /// Pump until a request comes (each pump waits for the socket, not for
    /// a time).
    fn next_request(s: &mut Server, now: Instant) -> (ClientId, Request) {
        for _ in 0..50 {
            if let Some(r) = pump(s, now).pop() {
                return r;
            }
        }
        panic!("no request arrived");
    }

    fn answer_of(c: &UnixStream) -> Option<Response> {
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).expect("read");
        (!line.is_empty()).then(|| serde_json::from_str(&line).expect("an answer line"))
    }

    #[test]
    fn server_answers_a_request_behind_idle_clients() {
        let (d, mut s) = server(MAX_CLIENTS);
        let now = Instant::now();
        let idle: Vec<UnixStream> = (0..20).map(|_| connect(&d)).collect();
        let mut c = connect(&d);
        // The request comes in two pieces.
        c.write_all(br#"{"cmd":"#).expect("write");
        pump(&mut s, now);
        c.write_all(b"\"ping\"}\n").expect("write");
        let (id, req) = next_request(&mut s, now);
        assert_eq!(req, Request::Ping);
        assert_eq!(s.clients(), idle.len() + 1);
        s.reply(id, &Response::Done, now);
        assert_eq!(answer_of(&c), Some(Response::Done));
        assert_eq!(s.clients(), idle.len(), "answered connections are closed");
    }

    #[test]
    fn server_answers_malformed_and_long_requests_itself() {
        let (d, mut s) = server(MAX_CLIENTS);
        let now = Instant::now();
        let mut bad = connect(&d);
        bad.write_all(b"{not json\n").expect("write");
        let mut long = connect(&d);
        long.write_all(&vec![b'x'; MAX_LINE + 10]).expect("write");
        for _ in 0..10 {
            assert!(pump(&mut s, now).is_empty(), "nothing reaches the daemon");
        }
        for (c, want) in [(&bad, "malformed control message"), (&long, "too long")] {
            match answer_of(c) {
                Some(Response::Error {
                    kind: ErrorKind::Malformed,
                    message,
                }) => assert!(message.contains(want), "{message}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(s.clients(), 0);
    }

    #[test]
    fn server_closes_clients_at_their_deadline() {
        let (d, mut s) = server(MAX_CLIENTS);
        let now = Instant::now();
        let c = connect(&d);
        pump(&mut s, now);
        assert_eq!(s.clients(), 1);
        assert_eq!(s.timeout(now), Some(Duration::from_secs(10)));
        // Nothing happens: the daemon's poll returns at the deadline.
        let later = now + Duration::from_secs(10);
        assert!(s
            .service(&[PollFlags::empty(), PollFlags::empty()], later)
            .is_empty());
        assert_eq!(s.clients(), 0);
        assert_eq!(s.timeout(later), None, "no client, no timeout");
        match answer_of(&c) {
            Some(Response::Error { kind, message }) => {
                assert_eq!(kind, ErrorKind::Malformed);
                assert!(message.contains("no complete request"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(answer_of(&c), None, "then closed");
    }

    #[test]
    fn server_makes_room_by_closing_the_oldest_idle_client() {
        let (d, mut s) = server(4);
        let now = Instant::now();
        let idle: Vec<UnixStream> = (0..6).map(|_| connect(&d)).collect();
        pump(&mut s, now);
        assert_eq!(s.clients(), 4);
        for c in &idle[..2] {
            assert!(
                matches!(
                    answer_of(c),
                    Some(Response::Error {
                        kind: ErrorKind::Busy,
                        ..
                    })
                ),
                "the oldest are closed"
            );
        }
        // An idle client whose request has arrived meanwhile is answered,
        // not closed.
        let mut late = idle;
        late[2].write_all(b"{\"cmd\":\"status\"}\n").expect("write");
        let mut c = connect(&d);
        c.write_all(b"{\"cmd\":\"ping\"}\n").expect("write");
        let mut got = Vec::new();
        for _ in 0..50 {
            got.extend(pump(&mut s, now));
            if got.len() == 2 {
                break;
            }
        }
        let reqs: Vec<&Request> = got.iter().map(|(_, r)| r).collect();
        assert_eq!(reqs, [&Request::Status, &Request::Ping]);
        for (id, _) in got {
            s.reply(id, &Response::Done, now);
        }
        assert_eq!(answer_of(&late[2]), Some(Response::Done));
        assert_eq!(answer_of(&c), Some(Response::Done));
    }
}
