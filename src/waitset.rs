//! The one set of descriptors mdextmon sleeps on: every array's notifying
//! sysfs attributes, the signal fd, the writer pool's eventfd while
//! something waits for its answers, and the control socket with its
//! clients, all registered in one epoll set, so that a wake is one
//! `epoll_wait(2)` that names what is ready.
//!
//! Registrations follow what the loop wants each turn ([`WaitSet::arrays`],
//! [`WaitSet::answers`], [`WaitSet::server`]) and change only when that
//! changes: nothing is registered again on every wait, as `poll(2)` would,
//! and no epoll set is nested in another (an earlier loop polled one set of
//! sets: under QEMU TCG the polling and the nested scans were about a
//! third of the daemon's CPU for a burst of writes).
//!
//! A descriptor that is closed leaves the set by itself (none is
//! duplicated): an array's attributes when it is released or its members
//! change, a client when the server drops it.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

/// Token of the signal fd.
const SIGNAL: u64 = u64::MAX;
/// Token of the writer pool's eventfd.
const ANSWERS: u64 = u64::MAX - 1;
/// Tokens of the control socket (key 0) and its clients (key id + 1).
const SERVER: u64 = 1 << 62;

/// What one wait found ready.
#[derive(Debug, Default)]
pub struct Ready {
    /// Arrays with a notification (one name per ready attribute).
    pub arrays: Vec<String>,
    /// The signal fd is readable.
    pub signal: bool,
    /// The writer pool has answers.
    pub answers: bool,
    /// What each descriptor given to [`WaitSet::server`] showed, in the
    /// order given (empty flags for the ones not ready).
    pub server: Vec<PollFlags>,
}

/// The daemon's epoll set and what each registration stands for.
pub struct WaitSet {
    ep: Epoll,
    /// The array each array token stands for.
    tokens: HashMap<u64, String>,
    next_token: u64,
    /// The control socket's registrations: key -> (descriptor, interest).
    server: HashMap<u64, (RawFd, EpollFlags)>,
    /// The keys given to the last [`WaitSet::server`], in order.
    order: Vec<u64>,
    /// Whether the writer pool's eventfd is registered.
    answers: bool,
}

impl WaitSet {
    /// A set holding the signal fd.
    pub fn new(signals: BorrowedFd<'_>) -> Result<WaitSet, Errno> {
        let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        ep.add(signals, EpollEvent::new(EpollFlags::EPOLLIN, SIGNAL))?;
        Ok(WaitSet {
            ep,
            tokens: HashMap::new(),
            next_token: 0,
            server: HashMap::new(),
            order: Vec::new(),
            answers: false,
        })
    }

    /// Register the notifying attributes of array `name` (POLLPRI: sysfs
    /// attributes always read as readable), new since the last call: the
    /// array came, or its attributes were opened again. A descriptor still
    /// registered from before takes the new token.
    pub fn arrays<'a>(&mut self, fresh: impl IntoIterator<Item = (&'a str, Vec<BorrowedFd<'a>>)>) {
        for (name, fds) in fresh {
            let t = self.next_token;
            self.next_token += 1;
            for fd in fds {
                let ev = EpollEvent::new(EpollFlags::EPOLLPRI, t);
                let r = match self.ep.add(fd, ev) {
                    Err(Errno::EEXIST) => self
                        .ep
                        .modify(fd, &mut EpollEvent::new(EpollFlags::EPOLLPRI, t)),
                    r => r,
                };
                if let Err(e) = r {
                    log::error!("{name}: epoll_ctl: {e}; a notification of it is not watched");
                }
            }
            self.tokens.insert(t, name.to_string());
        }
    }

    /// Forget the tokens of arrays no longer managed (`live` says which
    /// are, `count` how many) once they pile up: an array's token stays
    /// while its attributes may still be registered under it.
    pub fn forget(&mut self, live: impl Fn(&str) -> bool, count: usize) {
        if self.tokens.len() > 2 * count + 16 {
            self.tokens.retain(|_, n| live(n));
        }
    }

    /// Watch the writer pool's eventfd `fd` while `want`: its answers wake
    /// the loop only while something waits for them.
    pub fn answers(&mut self, fd: Option<BorrowedFd<'_>>, want: bool) {
        let Some(fd) = fd else { return };
        match (want, self.answers) {
            (true, false) => {
                match self
                    .ep
                    .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, ANSWERS))
                {
                    Ok(()) | Err(Errno::EEXIST) => self.answers = true,
                    Err(e) => log::error!("epoll_ctl (record answers): {e}"),
                }
            }
            (false, true) => {
                let _ = self.ep.delete(fd);
                self.answers = false;
            }
            _ => {}
        }
    }

    /// The control socket's descriptors for the next wait, as
    /// `(key, descriptor, interest)` ([`crate::control::Server::watched`]);
    /// [`Ready::server`] answers in this order.
    pub fn server(&mut self, fds: &[(u64, BorrowedFd<'_>, PollFlags)]) {
        self.order.clear();
        for (key, fd, interest) in fds {
            let ev = EpollFlags::from_bits_truncate(i32::from(interest.bits()));
            let raw = fd.as_raw_fd();
            let token = SERVER + key;
            let r = match self.server.get(key) {
                Some(&(r, e)) if r == raw && e == ev => Ok(()),
                Some(&(r, _)) if r == raw => self.ep.modify(fd, &mut EpollEvent::new(ev, token)),
                _ => match self.ep.add(fd, EpollEvent::new(ev, token)) {
                    Err(Errno::EEXIST) => self.ep.modify(fd, &mut EpollEvent::new(ev, token)),
                    r => r,
                },
            };
            match r {
                Ok(()) => {
                    self.server.insert(*key, (raw, ev));
                }
                Err(e) => log::error!("epoll_ctl (control socket): {e}"),
            }
            self.order.push(*key);
        }
        // The clients dropped since: their descriptors are closed, which
        // took them out of the set.
        let order = &self.order;
        self.server.retain(|k, _| order.contains(k));
    }

    /// Sleep until something registered is ready or `within` passes
    /// (`None`: until something is ready).
    /// At most [`BATCH`] registrations are reported: the rest stay ready
    /// (level-triggered) and come first in the next wait. (Asking again at
    /// once until fewer come would never end while more than that many
    /// stay ready until handled.)
    pub fn wait(&self, within: Option<Duration>) -> Ready {
        let mut events = [EpollEvent::empty(); BATCH];
        let mut ready = Ready {
            server: vec![PollFlags::empty(); self.order.len()],
            ..Ready::default()
        };
        // An interrupted wait resumes with what is left of `within`, as
        // poll(2)'s restart does.
        let end = within.map(|d| Instant::now() + d);
        let mut timeout = whole_ms(within);
        let n = loop {
            match self.ep.wait(&mut events, timeout) {
                Ok(n) => break n,
                // Interrupted: by the ring's completion work (which has
                // signalled the pool's eventfd by now) or by a signal
                // (the signal fd is readable now): ask again.
                Err(Errno::EINTR) => {
                    timeout = whole_ms(end.map(|t| t.saturating_duration_since(Instant::now())));
                }
                Err(e) => {
                    log::error!("epoll_wait: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    break 0;
                }
            }
        };
        for e in &events[..n] {
            match e.data() {
                SIGNAL => ready.signal = true,
                ANSWERS => ready.answers = true,
                t if t >= SERVER => {
                    let flags = PollFlags::from_bits_truncate(
                        i16::try_from(e.events().bits() & 0x7fff).unwrap_or(0),
                    );
                    if let Some(i) = self.order.iter().position(|&k| SERVER + k == t) {
                        ready.server[i] |= flags;
                    }
                }
                t => {
                    if let Some(name) = self.tokens.get(&t) {
                        ready.arrays.push(name.clone());
                    }
                }
            }
        }
        ready
    }
}

/// `d` in whole milliseconds, rounded up (a deadline less than 1 ms away
/// must not spin); `None` is no timeout.
fn whole_ms(d: Option<Duration>) -> PollTimeout {
    match d {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
            PollTimeout::try_from(Duration::from_millis(ms)).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// The most registrations one wait reports.
pub const BATCH: usize = 256;

impl AsFd for WaitSet {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ep.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use nix::sys::signal::SigSet;
    use nix::sys::signalfd::{SfdFlags, SignalFd};

    /// More registrations ready than one wait reports: every one of them
    /// comes within two waits, none is lost and the wait never spins on
    /// the same ones.
    #[test]
    fn more_ready_than_one_wait_reports_all_come_in_turn() {
        let sig = SignalFd::with_flags(&SigSet::empty(), SfdFlags::SFD_CLOEXEC).expect("signalfd");
        let mut w = WaitSet::new(sig.as_fd()).expect("epoll");
        let n = BATCH + 44;
        let fds: Vec<EventFd> = (0..n)
            .map(|_| EventFd::from_value_and_flags(1, EfdFlags::EFD_CLOEXEC).expect("eventfd"))
            .collect();
        let list: Vec<(u64, BorrowedFd<'_>, PollFlags)> = fds
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u64, e.as_fd(), PollFlags::POLLIN))
            .collect();
        w.server(&list);
        let first = w.wait(Some(Duration::ZERO));
        let seen1: Vec<usize> = (0..n).filter(|&i| !first.server[i].is_empty()).collect();
        assert_eq!(seen1.len(), BATCH, "one wait reports at most BATCH");
        let second = w.wait(Some(Duration::ZERO));
        let missing: Vec<usize> = (0..n)
            .filter(|&i| first.server[i].is_empty() && second.server[i].is_empty())
            .collect();
        assert!(missing.is_empty(), "never reported: {missing:?}");
        assert!(!first.signal && !first.answers && first.arrays.is_empty());
    }
}
