//! The metadata writers: one small pool of threads, shared by every array
//! of the process, that write members' superblocks in parallel.
//!
//! A record goes to every member of an array at once (the write-pending
//! answer waits for the slowest member, not for the sum). Threads per
//! member would grow with the number of arrays (two per raid1, 64 arrays:
//! 128 threads, each stack locked under `mlockall`); the pool has at most
//! [`MAX_WRITERS`] threads, started on first use up to the widest array
//! seen, and never more. An array wider than the pool still gets all its
//! writes: they queue and run as threads free up.
//!
//! Nothing on the write path creates a thread or a channel: the job queue
//! is bounded, and each caller brings its own bounded answer channel
//! ([`Answers`]), made once per array.
//!
//! A caller may wait for its answers ([`Answers::next`]) or go on with
//! other work: every answer also counts up one eventfd of the process
//! ([`Pool::notifier`]), which the daemon polls beside the arrays'
//! notifications, and then collects with [`Answers::try_next`]. A write
//! that hangs (a member that takes seconds per write) then holds only its
//! own array: a thread is started for a new job whenever none is idle, up
//! to [`MAX_WRITERS`].

use crate::device::{Device, DeviceError};
use crate::meta::Superblock;
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};

/// The most writer threads a process runs.
pub const MAX_WRITERS: usize = 8;

/// Stack of a writer thread: it only encodes 4 KiB and calls pwrite.
const WRITER_STACK: usize = 256 << 10;

/// Jobs waiting for a thread (more wait in `send`).
const QUEUE: usize = 64;

/// The result of one member's write, with the caller's tag.
pub type Answer = (usize, Result<usize, DeviceError>);

struct Job {
    dev: Arc<Device>,
    sb: Superblock,
    tag: usize,
    answer: SyncSender<Answer>,
}

/// The pool (one per process, [`pool`]).
pub struct Pool {
    jobs: SyncSender<Job>,
    queue: Arc<Mutex<Receiver<Job>>>,
    started: Mutex<usize>,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
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

/// The process's pool.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, rx) = sync_channel(QUEUE);
        let done = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .ok()
            .map(Arc::new);
        Pool {
            jobs,
            queue: Arc::new(Mutex::new(rx)),
            started: Mutex::new(0),
            idle: Arc::new(AtomicUsize::new(0)),
            done,
        }
    })
}

impl Pool {
    /// Make sure `n` more writes can start at once: threads are started
    /// while fewer than `n` are idle, up to [`MAX_WRITERS`] in all. Fails
    /// only if no thread runs at all.
    pub fn ensure(&self, n: usize) -> std::io::Result<()> {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        while *started < MAX_WRITERS && self.idle.load(Ordering::Acquire) < n.max(1) {
            let queue = self.queue.clone();
            let idle = self.idle.clone();
            let done = self.done.clone();
            idle.fetch_add(1, Ordering::AcqRel);
            let r = std::thread::Builder::new()
                .name(format!("writer-{}", *started))
                .stack_size(WRITER_STACK)
                .spawn(move || loop {
                    // One thread at a time waits on the queue; the job
                    // runs after the lock is dropped.
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(p) => p.into_inner().recv(),
                    };
                    let Ok(job) = job else { break };
                    idle.fetch_sub(1, Ordering::AcqRel);
                    let r = job.dev.write_superblock(&job.sb);
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

    /// The descriptor that becomes readable when an answer was sent
    /// (read it with [`Pool::take_done`] before collecting answers).
    pub fn notifier(&self) -> Option<BorrowedFd<'_>> {
        self.done.as_deref().map(AsFd::as_fd)
    }

    /// Reset the notifier (before collecting answers: an answer sent after
    /// this counts it up again).
    pub fn take_done(&self) {
        if let Some(d) = &self.done {
            let _ = d.read();
        }
    }

    /// How many writer threads run.
    pub fn threads(&self) -> usize {
        *self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write `sb` to `dev` on a pool thread; the result comes back on
    /// `answers` tagged `tag`. False if the pool is gone (never, in a
    /// running process).
    pub fn submit(&self, dev: Arc<Device>, sb: Superblock, tag: usize, answers: &Answers) -> bool {
        self.jobs
            .send(Job {
                dev,
                sb,
                tag,
                answer: answers.tx.clone(),
            })
            .is_ok()
    }
}

impl Answers {
    /// The next answer (blocks until one comes).
    pub fn next(&self) -> Option<Answer> {
        self.rx.recv().ok()
    }

    /// An answer that has come, if any (never blocks).
    pub fn try_next(&self) -> Option<Answer> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Access;

    #[test]
    fn writes_run_on_a_bounded_pool_and_come_back_tagged() {
        let dir = std::env::temp_dir().join(format!("mdext-writers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let n = 12;
        let mut devs = Vec::new();
        for i in 0..n {
            let p = dir.join(format!("m{i}"));
            std::fs::write(&p, vec![0u8; 1 << 20]).expect("image");
            devs.push(Arc::new(
                Device::open(&p, Access::SharedWrite).expect("open"),
            ));
        }
        pool().ensure(n).expect("threads");
        assert_eq!(pool().threads(), MAX_WRITERS);
        let answers = Answers::default();
        let sb = crate::format::tests::sample_v2();
        for (i, d) in devs.iter().enumerate() {
            assert!(pool().submit(d.clone(), sb.clone(), i, &answers));
        }
        let mut tags: Vec<usize> = (0..n)
            .map(|_| {
                let (t, r) = answers.next().expect("answer");
                r.expect("written");
                t
            })
            .collect();
        tags.sort();
        assert_eq!(tags, (0..n).collect::<Vec<_>>());
        for d in &devs {
            assert!(d.read_superblock().is_ok(), "{}", d.path().display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
