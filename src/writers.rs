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

use crate::device::{Device, DeviceError};
use crate::meta::Superblock;
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
        Pool {
            jobs,
            queue: Arc::new(Mutex::new(rx)),
            started: Mutex::new(0),
        }
    })
}

impl Pool {
    /// Make sure `n` writes can run at once (at most [`MAX_WRITERS`]).
    /// Fails only if no thread runs at all.
    pub fn ensure(&self, n: usize) -> std::io::Result<()> {
        let want = n.clamp(1, MAX_WRITERS);
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        while *started < want {
            let queue = self.queue.clone();
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
                    let r = job.dev.write_superblock(&job.sb);
                    // The caller may have given up (its array is gone).
                    let _ = job.answer.send((job.tag, r));
                });
            match r {
                Ok(_) => *started += 1,
                Err(e) if *started == 0 => return Err(e),
                // Fewer threads: writes queue a little longer.
                Err(_) => break,
            }
        }
        Ok(())
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
