//! Where mdextmon's events ([`crate::events`]) go: to journald natively,
//! with structured fields, when it listens ([`crate::journal`]); to stderr
//! otherwise (with an sd-daemon priority prefix when stderr is the
//! journal); and to the configured PROGRAM, run once per event as
//! `PROGRAM EVENT MD-DEVICE [MEMBER]` (mdadm's convention) with the same
//! facts in its environment.
//!
//! The program never blocks the daemon: it is spawned and not waited for;
//! finished children are reaped on SIGCHLD ([`Reporter::reap`]). A program
//! that hangs keeps its slot; past [`MAX_CHILDREN`] running at once,
//! further events are not handed to it (and that is logged).

use crate::events::Event;
use crate::journal::Journal;
use log::warn;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Most PROGRAM instances running at once.
pub const MAX_CHILDREN: usize = 16;

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

/// Sends events on.
pub struct Reporter {
    journal_path: PathBuf,
    journal: Option<Journal>,
    stderr_is_journal: bool,
    program: Option<PathBuf>,
    children: Vec<Child>,
}

impl Reporter {
    /// A reporter sending to the journal socket at `journal` (if something
    /// listens there) and running `program`.
    pub fn new(journal: &Path, program: Option<PathBuf>) -> Reporter {
        Reporter {
            journal_path: journal.to_path_buf(),
            journal: Journal::connect(journal),
            stderr_is_journal: crate::cli::stderr_is_journal(),
            program,
            children: Vec::new(),
        }
    }

    /// Replace the program (a re-read configuration).
    pub fn set_program(&mut self, program: Option<PathBuf>) {
        self.program = program;
    }

    /// Report each event and run the program for it.
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
        let Some(p) = self.program.clone() else {
            return;
        };
        self.reap();
        if self.children.len() >= MAX_CHILDREN {
            warn!(
                "{}: {} instances of {} still running; not run for {}",
                e.md,
                self.children.len(),
                p.display(),
                e.kind.name()
            );
            return;
        }
        let mut cmd = Command::new(&p);
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
        // Its own process group: a signal to the daemon's group (a
        // terminal's ^C) does not reach it, nor the other way round.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        match cmd.spawn() {
            Ok(c) => self.children.push(c),
            Err(err) => warn!(
                "{}: running {} for {}: {err}",
                e.md,
                p.display(),
                e.kind.name()
            ),
        }
    }

    /// Reap finished program instances (never waits). A non-zero exit is
    /// logged.
    pub fn reap(&mut self) {
        self.children.retain_mut(|c| match c.try_wait() {
            Ok(None) => true,
            Ok(Some(st)) => {
                if !st.success() {
                    warn!("event program (pid {}) ended with {st}", c.id());
                }
                false
            }
            Err(_) => false,
        });
    }

    /// Program instances still running.
    pub fn running(&self) -> usize {
        self.children.len()
    }
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

    #[test]
    fn the_program_runs_with_arguments_and_environment() {
        let d = tempfile::tempdir().expect("tmp");
        let out = d.path().join("out");
        let prog = d.path().join("prog");
        std::fs::write(
            &prog,
            format!(
                "#!/bin/sh\necho \"$1 $2 $3|$MDEXT_EVENT $MDEXT_MD_DEVICE $MDEXT_MEMBER $MDEXT_ARRAY_NAME\" >> {}\n",
                out.display()
            ),
        )
        .expect("write");
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let mut r = Reporter::new(&d.path().join("no-journal"), Some(prog));
        r.report(&[ev(Kind::Fail, Some("/dev/loop1"))]);
        wait_for("program output", || {
            std::fs::read_to_string(&out).is_ok_and(|s| s.ends_with('\n'))
        });
        assert_eq!(
            std::fs::read_to_string(&out).expect("out"),
            "Fail /dev/md127 /dev/loop1|Fail /dev/md127 /dev/loop1 re\n"
        );
        wait_for("reaped", || {
            r.reap();
            r.running() == 0
        });
    }

    #[test]
    fn a_hanging_program_never_blocks_and_is_bounded() {
        let d = tempfile::tempdir().expect("tmp");
        let prog = d.path().join("hang");
        std::fs::write(&prog, "#!/bin/sh\nexec sleep 600\n").expect("write");
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let mut r = Reporter::new(&d.path().join("no-journal"), Some(prog));
        let many: Vec<Event> = (0..MAX_CHILDREN + 3)
            .map(|_| ev(Kind::RebuildStarted, None))
            .collect();
        let t0 = Instant::now();
        r.report(&many);
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert_eq!(r.running(), MAX_CHILDREN);
        for c in &mut r.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
