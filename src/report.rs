//! Where mdextmon's events ([`crate::events`]) go: to journald natively,
//! with structured fields, when it listens ([`crate::journal`]); to stderr
//! otherwise (with an sd-daemon priority prefix when stderr is the
//! journal); and to the configured PROGRAM, run once per event as
//! `PROGRAM EVENT MD-DEVICE [MEMBER]` (mdadm's convention) with the same
//! facts in its environment.
//!
//! The program never blocks the daemon: the daemon's loop only queues the
//! event ([`MAX_QUEUED`] at most; past that, events are not handed on, and
//! that is logged). A thread of its own runs the program, one instance at a
//! time in the order of the events, each to its end before the next (as
//! `mdadm --monitor` does): starting a process waits for its exec, which
//! reads the program's file, perhaps from an array this daemon must serve
//! meanwhile, and a program that never ends holds up only the programs of
//! later events.

use crate::events::Event;
use crate::journal::Journal;
use log::warn;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// The journald fields of an event.
pub fn fields(e: &Event) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("MESSAGE", e.message.clone()),
        ("PRIORITY", e.kind.priority().to_string()),
        ("SYSLOG_IDENTIFIER", "mdextmon".to_string()),
        ("MESSAGE_ID", e.kind.message_id().to_string()),
        ("MDEXT_EVENT", e.kind.name().to_string()),
        ("MDEXT_ARRAY_UUID", e.uuid.to_string()),
        ("MDEXT_ARRAY_NAME", e.name.clone()),
        ("MDEXT_MD_DEVICE", format!("/dev/{}", e.md)),
    ];
    if let Some(m) = &e.member {
        f.push(("MDEXT_MEMBER", m.clone()));
    }
    f
}

/// One stderr line for an event: `<2>mdextmon: ...` to the journal, the
/// priority in words elsewhere.
pub fn stderr_line(e: &Event, journal: bool) -> String {
    let p = e.kind.priority();
    let name = e.kind.name();
    if journal {
        return format!("<{p}>mdextmon: {name}: {}", e.message);
    }
    let word = match p {
        0..=2 => "critical: ",
        3 => "error: ",
        4 => "warning: ",
        5 => "notice: ",
        _ => "",
    };
    format!("mdextmon: {word}{name}: {}", e.message)
}

/// Sends events on. Journal and stderr entries go from the caller's
/// thread without blocking; the program is started by [`ProgramRunner`]'s
/// thread.
pub struct Reporter {
    journal_path: PathBuf,
    journal: Option<Journal>,
    stderr_is_journal: bool,
    program: Option<PathBuf>,
    runner: Option<ProgramRunner>,
    spawn: Option<Spawn>,
}

/// How a program instance is started (a test puts its own here).
pub type Spawn = Box<dyn FnMut(&Path, &Event) -> std::io::Result<Child> + Send>;

impl Reporter {
    /// A reporter sending to the journal socket at `journal` (if something
    /// listens there) and running `program`.
    pub fn new(journal: &Path, program: Option<PathBuf>) -> Reporter {
        Reporter::with_spawn(journal, program, Box::new(spawn_program))
    }

    /// Like [`Reporter::new`], starting program instances with `spawn`.
    pub fn with_spawn(journal: &Path, program: Option<PathBuf>, spawn: Spawn) -> Reporter {
        Reporter {
            journal_path: journal.to_path_buf(),
            journal: Journal::connect(journal),
            stderr_is_journal: crate::cli::stderr_is_journal(),
            program,
            runner: None,
            spawn: Some(spawn),
        }
    }

    /// Replace the program (a re-read configuration).
    pub fn set_program(&mut self, program: Option<PathBuf>) {
        self.program = program;
    }

    /// Report each event and hand it to the program. Never waits.
    pub fn report(&mut self, events: &[Event]) {
        for e in events {
            let f = fields(e);
            let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut sent = self.journal.as_ref().is_some_and(|j| j.send(&refs).is_ok());
            if !sent {
                // journald may have restarted (or started): connect again.
                self.journal = Journal::connect(&self.journal_path);
                sent = self.journal.as_ref().is_some_and(|j| j.send(&refs).is_ok());
            }
            // Events reach stderr too when it is not the journal (a
            // terminal, mdextctl's log file): no entry is doubled.
            if !sent || !self.stderr_is_journal {
                crate::logsink::write_line(&stderr_line(e, self.stderr_is_journal));
            }
            self.run_program(e);
        }
    }

    fn run_program(&mut self, e: &Event) {
        let Some(p) = &self.program else {
            return;
        };
        // The thread starts with the first event that has a program.
        if let Some(spawn) = self.spawn.take() {
            match ProgramRunner::start(spawn) {
                Ok(r) => self.runner = Some(r),
                Err(err) => warn!("starting the event program's thread: {err}"),
            }
        }
        let Some(r) = &self.runner else {
            warn!(
                "{}: no event program thread; {} not run for {}",
                e.md,
                p.display(),
                e.kind.name()
            );
            return;
        };
        let why = match r.jobs.try_send((p.clone(), e.clone())) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => format!("{MAX_QUEUED} events already wait for it"),
            Err(TrySendError::Disconnected(_)) => "its thread is gone".to_string(),
        };
        warn!(
            "{}: {} not run for {}: {why}",
            e.md,
            p.display(),
            e.kind.name()
        );
    }

    /// Program instances running (0 or 1).
    pub fn running(&self) -> usize {
        self.runner
            .as_ref()
            .map_or(0, |r| r.running.load(Ordering::Relaxed))
    }
}

/// Most events waiting for the program's thread.
pub const MAX_QUEUED: usize = 64;

/// Stack of the program's thread (it builds a command line and spawns).
const RUNNER_STACK: usize = 256 << 10;

/// The thread that runs the program. Starting a process waits until it
/// has executed the program, and executing it reads the program's file:
/// if that file lives on an array this daemon manages and the array holds
/// a write for the daemon (a journal commit the atime update waits on),
/// the daemon's own loop would wait on itself. So the loop only queues;
/// this thread starts each instance and waits for it to end.
struct ProgramRunner {
    jobs: SyncSender<(PathBuf, Event)>,
    running: Arc<AtomicUsize>,
}

impl ProgramRunner {
    fn start(mut spawn: Spawn) -> std::io::Result<ProgramRunner> {
        let (jobs, rx) = sync_channel::<(PathBuf, Event)>(MAX_QUEUED);
        let running = Arc::new(AtomicUsize::new(0));
        let count = running.clone();
        std::thread::Builder::new()
            .name("event-program".into())
            .stack_size(RUNNER_STACK)
            .spawn(move || {
                // Ends when the reporter is gone (the daemon ends).
                while let Ok((p, e)) = rx.recv() {
                    count.store(1, Ordering::Relaxed);
                    match spawn(&p, &e).and_then(|mut c| c.wait()) {
                        Ok(st) if !st.success() => warn!(
                            "{}: event program {} for {} ended with {st}",
                            e.md,
                            p.display(),
                            e.kind.name()
                        ),
                        Ok(_) => {}
                        Err(err) => warn!(
                            "{}: running {} for {}: {err}",
                            e.md,
                            p.display(),
                            e.kind.name()
                        ),
                    }
                    count.store(0, Ordering::Relaxed);
                }
            })?;
        Ok(ProgramRunner { jobs, running })
    }
}

/// Start `PROGRAM EVENT MD-DEVICE [MEMBER]` with the event's facts in its
/// environment, in its own process group (a signal to the daemon's group,
/// a terminal's ^C, does not reach it, nor the other way round).
pub fn spawn_program(p: &Path, e: &Event) -> std::io::Result<Child> {
    let mut cmd = Command::new(p);
    cmd.arg(e.kind.name()).arg(format!("/dev/{}", e.md));
    if let Some(m) = &e.member {
        cmd.arg(m);
    }
    for (k, v) in fields(e) {
        if k.starts_with("MDEXT_") {
            cmd.env(k, v);
        }
    }
    cmd.env("MDEXT_MESSAGE", &e.message)
        .env("MDEXT_PRIORITY", e.kind.priority().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Kind;
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};

    fn ev(kind: Kind, member: Option<&str>) -> Event {
        Event {
            kind,
            md: "md127".into(),
            uuid: uuid::Uuid::from_u128(5),
            name: "re".into(),
            member: member.map(str::to_string),
            message: "md127 (re): something".into(),
        }
    }

    #[test]
    fn journal_fields_of_an_event() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("journal");
        let server = UnixDatagram::bind(&p).expect("bind");
        let mut r = Reporter::new(&p, None);
        r.report(&[ev(Kind::Fail, Some("/dev/loop1"))]);
        let mut buf = vec![0u8; 4096];
        let n = server.recv(&mut buf).expect("recv");
        let f = crate::journal::decode(&buf[..n]).expect("decode");
        let get = |k: &str| f.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MESSAGE_ID"), Some(Kind::Fail.message_id()));
        assert_eq!(get("PRIORITY"), Some("2"));
        assert_eq!(get("MDEXT_EVENT"), Some("Fail"));
        assert_eq!(get("MDEXT_MD_DEVICE"), Some("/dev/md127"));
        assert_eq!(get("MDEXT_MEMBER"), Some("/dev/loop1"));
        assert_eq!(
            get("MDEXT_ARRAY_UUID"),
            Some("00000000-0000-0000-0000-000000000005")
        );
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("mdextmon"));
    }

    #[test]
    fn stderr_lines() {
        let e = ev(Kind::DegradedArray, None);
        assert_eq!(
            stderr_line(&e, true),
            "<2>mdextmon: DegradedArray: md127 (re): something"
        );
        assert_eq!(
            stderr_line(&e, false),
            "mdextmon: critical: DegradedArray: md127 (re): something"
        );
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(20), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn script(d: &Path, name: &str, body: &str) -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        p
    }

    #[test]
    fn the_program_runs_with_arguments_and_environment() {
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("out");
        let prog = script(
            d.path(),
            "prog",
            &format!(
                "echo \"$1 $2 $3|$MDEXT_EVENT $MDEXT_MD_DEVICE $MDEXT_MEMBER $MDEXT_ARRAY_NAME\" >> {}",
                out.display()
            ),
        );
        let mut r = Reporter::new(&d.path().join("no-journal"), Some(prog));
        r.report(&[ev(Kind::Fail, Some("/dev/loop1"))]);
        wait_for("program output", || {
            std::fs::read_to_string(&out).is_ok_and(|s| s.ends_with('\n'))
        });
        assert_eq!(
            std::fs::read_to_string(&out).expect("out"),
            "Fail /dev/md127 /dev/loop1|Fail /dev/md127 /dev/loop1 re\n"
        );
        wait_for("reaped", || r.running() == 0);
    }

    #[test]
    fn programs_run_one_at_a_time_in_the_order_of_the_events() {
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("out");
        // Each instance takes a while, and would be overtaken by the next
        // if they overlapped.
        let prog = script(
            d.path(),
            "prog",
            &format!(
                "[ \"$1\" = Fail ] && sleep 0.3\necho \"$1\" >> {}",
                out.display()
            ),
        );
        let mut r = Reporter::new(&d.path().join("no-journal"), Some(prog));
        r.report(&[
            ev(Kind::Fail, Some("/dev/loop1")),
            ev(Kind::DegradedArray, None),
            ev(Kind::RebuildStarted, Some("/dev/loop1")),
            ev(Kind::RebuildFinished, Some("/dev/loop1")),
        ]);
        wait_for("four lines", || {
            std::fs::read_to_string(&out).is_ok_and(|s| s.lines().count() == 4)
        });
        assert_eq!(
            std::fs::read_to_string(&out).expect("out"),
            "Fail\nDegradedArray\nRebuildStarted\nRebuildFinished\n"
        );
        wait_for("ended", || r.running() == 0);
    }

    #[test]
    fn a_hanging_program_never_blocks_and_the_queue_is_bounded() {
        let d = tempfile::tempdir().expect("tmp");
        let stop = d.path().join("stop");
        let started = d.path().join("started");
        let prog = script(
            d.path(),
            "hang",
            &format!(
                "echo >> {}\nwhile [ ! -e {} ]; do sleep 0.05; done",
                started.display(),
                stop.display()
            ),
        );
        let mut r = Reporter::new(&d.path().join("no-journal"), Some(prog));
        let many: Vec<Event> = (0..MAX_QUEUED + 10)
            .map(|_| ev(Kind::RebuildStarted, None))
            .collect();
        let t0 = Instant::now();
        r.report(&many);
        assert!(t0.elapsed() < Duration::from_secs(10));
        wait_for("the first instance started", || {
            std::fs::read_to_string(&started).is_ok_and(|s| s.len() == 1)
        });
        assert_eq!(r.running(), 1);
        std::fs::write(&stop, "").expect("stop");
        // The queue held MAX_QUEUED, and one more if the thread had taken
        // the first out before the queue filled; the rest were dropped.
        wait_for("every queued instance run", || {
            r.running() == 0
                && std::fs::read_to_string(&started)
                    .is_ok_and(|s| (MAX_QUEUED..=MAX_QUEUED + 1).contains(&s.len()))
        });
        std::thread::sleep(Duration::from_millis(200));
        let n = std::fs::read_to_string(&started).expect("started").len();
        assert!(
            (MAX_QUEUED..=MAX_QUEUED + 1).contains(&n),
            "{n} instances ran of {} events",
            MAX_QUEUED + 10
        );
    }

    /// Starting a program can wait on the very array the daemon serves
    /// (the exec reads the program's file): the daemon's call returns
    /// while a start is stuck, and later events queue behind it.
    #[test]
    fn a_stuck_program_start_never_blocks_the_caller() {
        let d = tempfile::tempdir().expect("tmp");
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let spawn: Spawn = Box::new(move |_p, _e| {
            let _ = entered_tx.send(());
            let _ = release_rx.lock().map(|r| r.recv());
            Command::new("true").spawn()
        });
        let mut r = Reporter::with_spawn(
            &d.path().join("no-journal"),
            Some(PathBuf::from("/prog")),
            spawn,
        );
        r.report(&[ev(Kind::Fail, Some("/dev/loop1"))]);
        entered
            .recv_timeout(Duration::from_secs(20))
            .expect("the program's start began");
        // The first start is stuck now; the caller goes on.
        let t0 = Instant::now();
        r.report(&[ev(Kind::DegradedArray, None), ev(Kind::Fail, None)]);
        assert!(t0.elapsed() < Duration::from_secs(10));
        for _ in 0..3 {
            release.send(()).expect("release");
        }
        for _ in 0..2 {
            entered
                .recv_timeout(Duration::from_secs(20))
                .expect("the queued events' starts");
        }
        wait_for("reaped", || r.running() == 0);
    }
}
