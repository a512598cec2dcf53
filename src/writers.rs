//! The metadata writers: how one record reaches every member of an array
//! durably, in parallel, without holding the daemon's loop. Shared by every
//! array of the process ([`pool`]).
//!
//! A record goes to every member at once (the write-pending answer waits
//! for the slowest member, not for the sum). Two ways, chosen once per
//! process:
//!
//! - **The ring** (io_uring), for records that need no flush before them
//!   (the one that marks a clean array dirty, and the one that marks a
//!   whole mirror clean again: [`crate::meta::ArrayMeta::needs_flush_before`]):
//!   the caller's thread
//!   submits each member's copy as one write with `RWF_DSYNC` (on a block
//!   device opened with O_DIRECT: a FUA write, durable when it completes;
//!   where the device has no FUA the block layer follows it with a flush,
//!   as `fdatasync` would), all of a record's copies in one call. No thread
//!   is involved: the kernel completes the writes. On a one-CPU guest every
//!   hand-off between threads showed in the first write after clean (a
//!   writer woken, a writer spinning for the queue, the answer sent back).
//! - **Threads**, for records that need the member's earlier writes durable
//!   first, and for every record where io_uring is refused
//!   (`kernel.io_uring_disabled`, a seccomp filter) or `MDEXT_WRITERS=threads`
//!   asks for them: at most [`MAX_WRITERS`] threads, started on demand, each
//!   calling `fdatasync` (for the flush first), then writing a copy with
//!   `RWF_DSYNC`. Not the ring: io_uring runs an `fsync` on a kernel
//!   worker thread of the process, and the last such worker never exits: it
//!   wakes every five seconds for good (measured: two or three context
//!   switches in ten idle seconds), and the daemon is to sleep while nothing
//!   happens. A thread waiting for a job does not wake.
//!
//! Nothing on the write path creates a channel: each caller brings its own
//! bounded answer channel ([`Answers`]), made once per array.
//!
//! A caller may wait for its answers ([`Pool::wait`]) or go on with other
//! work: every answer also counts up one eventfd of the process
//! ([`Pool::notifier`]; the kernel counts it up for the ring), which the
//! daemon polls beside the arrays' notifications; it then calls
//! [`Pool::take_done`] and collects with [`Answers::try_next`]. A write
//! that hangs (a member that takes seconds per write) then holds only its
//! own array: the ring holds any number of writes, and the threads start
//! one more whenever none is idle.

use crate::device::{AlignedBuf, Device, DeviceError};
use crate::meta::Superblock;
use io_uring::{opcode, types, IoUring};
use log::{info, warn};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// The most writer threads a process runs (threads only).
pub const MAX_WRITERS: usize = 8;

/// Stack of a writer thread: it only encodes 4 KiB and calls pwrite.
const WRITER_STACK: usize = 256 << 10;

/// Jobs waiting for a thread (more wait in `send`).
const QUEUE: usize = 64;

/// Submission entries of the ring (more writes than this at once are
/// submitted in several calls; completions are never dropped).
const RING_ENTRIES: u32 = 64;

/// `RWF_DSYNC`: the write is durable when it completes.
const RWF_DSYNC: i32 = nix::libc::RWF_DSYNC;

/// The result of one member's write, with the caller's tag.
pub type Answer = (usize, Result<usize, DeviceError>);

struct Job {
    dev: Arc<Device>,
    sb: Superblock,
    preflush: bool,
    tag: usize,
    answer: SyncSender<Answer>,
}

/// A write submitted to the ring: what it needs until it completes.
struct RingJob {
    /// Holds the descriptor open.
    dev: Arc<Device>,
    /// The copy being written (the kernel reads it until completion).
    buf: AlignedBuf,
    offset: u64,
    index: usize,
    tag: usize,
    answer: SyncSender<Answer>,
}

struct Ring {
    uring: IoUring,
    next: u64,
    jobs: HashMap<u64, RingJob>,
}

struct Threads {
    jobs: SyncSender<Job>,
    queue: Arc<Mutex<Receiver<Job>>>,
    started: Mutex<usize>,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
}

/// The writers (one per process, [`pool`]).
pub struct Pool {
    ring: Option<Mutex<Ring>>,
    threads: Threads,
    /// Counted up after every answer (`None` if the process has no
    /// eventfd left: callers then wait for their answers).
    done: Option<Arc<EventFd>>,
}

/// A caller's answer channel: bounded, made once (per array).
pub struct Answers {
    tx: SyncSender<Answer>,
    rx: Receiver<Answer>,
}

impl Default for Answers {
    fn default() -> Answers {
        // As many answers as one record can have targets.
        let (tx, rx) = sync_channel(crate::meta::MAX_MEMBERS);
        Answers { tx, rx }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process's writers.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("MDEXT_WRITERS").is_ok_and(|v| v == "threads");
        let p = Pool::new(!threads);
        match (&p.ring, threads) {
            (Some(_), _) => info!("metadata writes: io_uring"),
            (None, true) => info!("metadata writes: writer threads (MDEXT_WRITERS=threads)"),
            (None, false) => info!("metadata writes: writer threads (io_uring refused)"),
        }
        p
    })
}

impl Ring {
    fn new(done: &EventFd) -> std::io::Result<Ring> {
        let uring = IoUring::new(RING_ENTRIES)?;
        // The one operation used (kernels before 5.6 lack it).
        let mut probe = io_uring::Probe::new();
        uring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Write::CODE) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "no IORING_OP_WRITE",
            ));
        }
        // A write the kernel cannot start at once (a device without
        // non-blocking submission) runs on a kernel worker of the process;
        // as many as the threads would be, at most (kernels since 5.15).
        let mut max = [u32::try_from(MAX_WRITERS).unwrap_or(u32::MAX); 2];
        let _ = uring.submitter().register_iowq_max_workers(&mut max);
        // The kernel counts the eventfd up for every completion posted.
        uring
            .submitter()
            .register_eventfd(done.as_fd().as_raw_fd())?;
        Ok(Ring {
            uring,
            next: 0,
            jobs: HashMap::new(),
        })
    }

    fn submit(
        &mut self,
        dev: Arc<Device>,
        sb: &Superblock,
        tag: usize,
        answer: SyncSender<Answer>,
    ) -> Result<(), DeviceError> {
        let copy = dev.prepare_superblock(sb)?;
        let buf = AlignedBuf::from_slice(&copy.bytes)?;
        let len =
            u32::try_from(copy.bytes.len()).map_err(|_| DeviceError::Alloc(copy.bytes.len()))?;
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        let fd = types::Fd(dev.as_raw_fd());
        let write = opcode::Write::new(fd, buf.as_ptr(), len)
            .offset(copy.offset)
            .rw_flags(RWF_DSYNC)
            .build()
            .user_data(id);
        if self.uring.submission().is_full() {
            // The entries in the queue go to the kernel, which frees them.
            self.uring
                .submit()
                .map_err(|err| dev.io_err("io_uring_enter", copy.offset, err))?;
        }
        {
            let mut sq = self.uring.submission();
            // SAFETY: the entry names `fd` and `buf`, which the job kept in
            // `self.jobs` until the write's completion is reaped (`reap`)
            // holds: the `Arc<Device>` keeps the descriptor open and the
            // heap block of `buf` does not move when the job is moved into
            // the map.
            unsafe { sq.push(&write) }.map_err(|_| {
                dev.io_err(
                    "io_uring submission",
                    copy.offset,
                    std::io::Error::from_raw_os_error(nix::libc::EBUSY),
                )
            })?;
        }
        self.jobs.insert(
            id,
            RingJob {
                dev,
                buf,
                offset: copy.offset,
                index: copy.index,
                tag,
                answer,
            },
        );
        Ok(())
    }

    /// Hand the queued entries to the kernel (one call for a whole
    /// record: the members' writes run at once).
    fn send(&mut self) {
        if self.uring.submission().is_empty() {
            return;
        }
        if let Err(err) = self.uring.submit() {
            // The entries stay queued; the next send or wait sends them.
            warn!("io_uring_enter: {err} (retried with the next call)");
        }
    }

    /// Hand every completed write's answer to its caller.
    fn reap(&mut self) {
        let Ring { uring, jobs, .. } = self;
        for c in uring.completion() {
            let (id, res) = (c.user_data(), c.result());
            let Some(j) = jobs.remove(&id) else { continue };
            let r = match res {
                r if r < 0 => {
                    Err(j
                        .dev
                        .io_err("write", j.offset, std::io::Error::from_raw_os_error(-r)))
                }
                r if usize::try_from(r).ok() != Some(j.buf.len()) => Err(j.dev.io_err(
                    "write",
                    j.offset,
                    std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short write ({r} bytes)"),
                    ),
                )),
                _ => {
                    crate::failpoint::point("sb-write-after");
                    Ok(j.index)
                }
            };
            match j.answer.try_send((j.tag, r)) {
                // Disconnected: the caller gave up (its array is gone).
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => warn!("a record write's answer had no room"),
            }
        }
    }
}

impl Threads {
    /// Make sure `n` more writes can start at once: threads are started
    /// while fewer than `n` are idle, up to [`MAX_WRITERS`] in all. Fails
    /// only if no thread runs at all.
    fn ensure(&self, n: usize, done: &Option<Arc<EventFd>>) -> std::io::Result<()> {
        let mut started = lock(&self.started);
        while *started < MAX_WRITERS && self.idle.load(Ordering::Acquire) < n.max(1) {
            let queue = self.queue.clone();
            let idle = self.idle.clone();
            let done = done.clone();
            idle.fetch_add(1, Ordering::AcqRel);
            let r = std::thread::Builder::new()
                .name(format!("writer-{}", *started))
                .stack_size(WRITER_STACK)
                .spawn(move || loop {
                    // One thread at a time waits on the queue; the job
                    // runs after the lock is dropped.
                    let job = lock(&queue).recv();
                    let Ok(job) = job else { break };
                    idle.fetch_sub(1, Ordering::AcqRel);
                    let r = if job.preflush { job.dev.sync() } else { Ok(()) }
                        .and_then(|()| job.dev.write_superblock(&job.sb));
                    idle.fetch_add(1, Ordering::AcqRel);
                    // The caller may have given up (its array is gone).
                    let _ = job.answer.send((job.tag, r));
                    if let Some(d) = &done {
                        // Counts up to 2^64-2 before EAGAIN; the daemon
                        // reads it to zero on every wake.
                        let _ = d.write(1);
                    }
                });
            match r {
                Ok(_) => *started += 1,
                Err(e) => {
                    self.idle.fetch_sub(1, Ordering::AcqRel);
                    if *started == 0 {
                        return Err(e);
                    }
                    // Fewer threads: writes queue a little longer.
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Pool {
    /// Writers with the ring if `ring` and the kernel allows it, with
    /// threads otherwise.
    fn new(ring: bool) -> Pool {
        let (jobs, rx) = sync_channel(QUEUE);
        let done = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .ok()
            .map(Arc::new);
        let ring = match &done {
            Some(d) if ring => match Ring::new(d) {
                Ok(r) => Some(Mutex::new(r)),
                Err(e) => {
                    warn!("io_uring: {e}");
                    None
                }
            },
            _ => None,
        };
        Pool {
            ring,
            threads: Threads {
                jobs,
                queue: Arc::new(Mutex::new(rx)),
                started: Mutex::new(0),
                idle: Arc::new(AtomicUsize::new(0)),
            },
            done,
        }
    }

    /// Make sure `n` more writes of a record (with a flush first if
    /// `preflush`) can start at once: for the threads, start some if fewer
    /// are idle. Fails only if no write can run at all.
    pub fn ensure(&self, n: usize, preflush: bool) -> std::io::Result<()> {
        if self.ring.is_some() && !preflush {
            return Ok(());
        }
        self.threads.ensure(n, &self.done)
    }

    /// The descriptor that becomes readable when an answer was sent
    /// (call [`Pool::take_done`] before collecting answers).
    pub fn notifier(&self) -> Option<BorrowedFd<'_>> {
        self.done.as_deref().map(AsFd::as_fd)
    }

    /// Reset the notifier and hand the completed writes' answers to their
    /// callers (an answer that comes after this counts it up again).
    pub fn take_done(&self) {
        if let Some(d) = &self.done {
            let _ = d.read();
        }
        self.reap();
    }

    /// Move the ring's completions to their callers' answer channels,
    /// leaving the notifier as it is (it still wakes whoever polls it for
    /// answers that came meanwhile).
    pub fn reap(&self) {
        if let Some(ring) = &self.ring {
            let mut r = lock(ring);
            r.send();
            r.reap();
        }
    }

    /// How many writer threads run (none with the ring).
    pub fn threads(&self) -> usize {
        *lock(&self.threads.started)
    }

    /// Write `sb` durably to `dev` (after making `dev`'s earlier writes
    /// durable, with `preflush`); the result comes back on `answers`
    /// tagged `tag`. The write starts at the latest with [`Pool::send`]
    /// (call it once all of a record's writes are submitted). False if
    /// the pool is gone (never, in a running process).
    pub fn submit(
        &self,
        dev: Arc<Device>,
        sb: Superblock,
        preflush: bool,
        tag: usize,
        answers: &Answers,
    ) -> bool {
        let ring = match &self.ring {
            Some(r) if !preflush => r,
            _ => {
                return self
                    .threads
                    .jobs
                    .send(Job {
                        dev,
                        sb,
                        preflush,
                        tag,
                        answer: answers.tx.clone(),
                    })
                    .is_ok()
            }
        };
        let r = lock(ring).submit(dev, &sb, tag, answers.tx.clone());
        if let Err(e) = r {
            // Refused before it reached the kernel: answered now.
            if answers.tx.try_send((tag, Err(e))).is_err() {
                return false;
            }
            if let Some(d) = &self.done {
                let _ = d.write(1);
            }
        }
        true
    }

    /// Start the writes submitted so far.
    pub fn send(&self) {
        if let Some(ring) = &self.ring {
            lock(ring).send();
        }
    }

    /// The next answer on `answers`, waiting for it (a caller waits only
    /// for writes it submitted: each is answered).
    pub fn wait(&self, answers: &Answers) -> Option<Answer> {
        let (Some(ring), Some(done)) = (&self.ring, &self.done) else {
            return answers.rx.recv().ok();
        };
        let mut took = false;
        let a = loop {
            if let Ok(a) = answers.rx.try_recv() {
                break Some(a);
            }
            {
                let mut r = lock(ring);
                r.send();
                r.reap();
            }
            if let Ok(a) = answers.rx.try_recv() {
                break Some(a);
            }
            // The kernel (for the ring) and the threads both count the
            // eventfd up: wait for either.
            let mut fds = [PollFd::new(done.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    warn!("waiting for a record write: poll: {e}");
                    break None;
                }
            }
            let _ = done.read();
            took = true;
        };
        if took {
            // What was counted for other callers' answers (now in their
            // channels) must still wake the daemon's loop.
            let _ = done.write(1);
        }
        a
    }
}

impl Answers {
    /// An answer that has come, if any (never blocks).
    pub fn try_next(&self) -> Option<Answer> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Access;

    fn images(tag: &str, n: usize) -> (std::path::PathBuf, Vec<Arc<Device>>) {
        let dir = std::env::temp_dir().join(format!("mdext-writers-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut devs = Vec::new();
        for i in 0..n {
            let p = dir.join(format!("m{i}"));
            std::fs::write(&p, vec![0u8; 1 << 20]).expect("image");
            devs.push(Arc::new(
                Device::open(&p, Access::SharedWrite).expect("open"),
            ));
        }
        (dir, devs)
    }

    /// Write one record to `n` devices through `p` (those `flush` picks
    /// with a flush first), collect the answers, read the copies back.
    fn round_trip(p: &Pool, tag: &str, n: usize, flush: impl Fn(usize) -> bool) {
        let (dir, devs) = images(tag, n);
        p.ensure(n, (0..n).any(&flush)).expect("writers");
        let answers = Answers::default();
        let sb = crate::format::tests::sample_v2();
        for (i, d) in devs.iter().enumerate() {
            assert!(p.submit(d.clone(), sb.clone(), flush(i), i, &answers));
        }
        p.send();
        let mut tags: Vec<usize> = (0..n)
            .map(|_| {
                let (t, r) = p.wait(&answers).expect("answer");
                r.expect("written");
                t
            })
            .collect();
        tags.sort();
        assert_eq!(tags, (0..n).collect::<Vec<_>>());
        for d in &devs {
            let got = d.read_superblock().expect("read back");
            assert_eq!(got.superblock.array.events, sb.array.events);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_ring_writes_every_member_and_answers_tagged() {
        let p = Pool::new(true);
        if p.ring.is_none() {
            eprintln!("io_uring refused here: the ring is not tested");
            return;
        }
        round_trip(&p, "ring", 12, |_| false);
        assert_eq!(p.threads(), 0, "no thread with the ring");
        // Records with a flush first go to threads; one wait serves both.
        round_trip(&p, "mixed", 12, |i| i % 2 == 0);
        assert!(p.threads() > 0);
    }

    #[test]
    fn threads_write_every_member_on_a_bounded_pool() {
        let p = Pool::new(false);
        round_trip(&p, "threads", 12, |i| i % 3 == 0);
        assert_eq!(p.threads(), MAX_WRITERS);
    }

    #[test]
    fn a_write_the_device_cannot_hold_is_answered_with_its_error() {
        for ring in [true, false] {
            let p = Pool::new(ring);
            let dir = std::env::temp_dir()
                .join(format!("mdext-writers-small-{ring}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            let img = dir.join("tiny");
            std::fs::write(&img, vec![0u8; 4096]).expect("image");
            let d = Arc::new(Device::open(&img, Access::SharedWrite).expect("open"));
            p.ensure(1, false).expect("writers");
            let answers = Answers::default();
            let mut sb = crate::format::tests::sample_v2();
            // The odd copy lies past the first 4 KiB.
            sb.array.events |= 1;
            assert!(p.submit(d, sb, false, 7, &answers));
            p.send();
            let (t, r) = p.wait(&answers).expect("answer");
            assert_eq!(t, 7);
            let e = r.expect_err("past the end");
            assert!(e.to_string().contains("tiny"), "names the device: {e}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
