//! Habits of well-behaved command-line programs, checked on the built
//! binaries: a closed pipe ends them quietly, errors are one line, the
//! programs name themselves.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common {
    pub mod signatures;
}
use common::signatures::image;

const MDEXTCTL: &str = env!("CARGO_BIN_EXE_mdextctl");
const MDEXTMON: &str = env!("CARGO_BIN_EXE_mdextmon");
const SIGPIPE: i32 = 13;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A created two-member array's first image.
fn member(dir: &Path) -> PathBuf {
    let a = image(dir, "a.img", 16 << 20);
    let b = image(dir, "b.img", 16 << 20);
    let o = Command::new(MDEXTCTL)
        .args(["create", "-l", "1", "-n", "2"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("run mdextctl create");
    assert!(o.status.success(), "create: {}", text(&o.stderr));
    a
}

/// `mdextctl examine A A A ... | head -1`: the reader takes one line and
/// closes the pipe while mdextctl still has megabytes to write (more than
/// any pipe buffer holds, so the write that fails is certain to come).
#[test]
fn examine_into_a_pipe_closed_after_one_line_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = member(dir.path());
    let mut c = Command::new(MDEXTCTL);
    c.arg("examine");
    for _ in 0..3000 {
        c.arg(&a);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mdextctl examine");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read one line");
    // The reader is dropped here: the pipe's read end is closed.
    assert_eq!(first, format!("{}:\n", a.display()));
    let o = child.wait_with_output().expect("wait");
    let err = text(&o.stderr);
    assert!(!err.contains("panicked"), "mdextctl panicked:\n{err}");
    assert_ne!(o.status.code(), Some(101), "exit status 101 (a panic)");
    assert!(
        err.is_empty(),
        "a closed pipe is not worth a message: {err}"
    );
    // As `cat big | head -1` ends cat: by SIGPIPE (status 141 in a shell).
    assert_eq!(o.status.signal(), Some(SIGPIPE), "{:?}", o.status);
}

/// The daemon keeps SIGPIPE ignored (a client that hangs up must not kill
/// it); its only stdout output, clap's help, must still not panic.
#[test]
fn mdextmon_help_into_a_closed_pipe_does_not_panic() {
    let mut child = Command::new(MDEXTMON)
        .arg("--help")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mdextmon --help");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("wait");
    assert!(!text(&o.stderr).contains("panicked"), "{}", text(&o.stderr));
    assert_ne!(o.status.code(), Some(101));
}

#[test]
fn examine_bitmap_error_is_said_once_on_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blank = image(dir.path(), "blank.img", 16 << 20);
    let o = Command::new(MDEXTCTL)
        .arg("examine-bitmap")
        .arg(&blank)
        .output()
        .expect("run mdextctl examine-bitmap");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        format!(
            "mdextctl: {}: no mdext metadata (no magic in either copy)\n",
            blank.display()
        )
    );
}

#[test]
fn both_programs_name_themselves_in_version_and_usage() {
    let v = env!("CARGO_PKG_VERSION");
    for (bin, name) in [(MDEXTCTL, "mdextctl"), (MDEXTMON, "mdextmon")] {
        let o = Command::new(bin).arg("--version").output().expect("run");
        assert!(o.status.success());
        assert_eq!(text(&o.stdout), format!("{name} {v}\n"));
        let o = Command::new(bin)
            .arg("--no-such-flag")
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(2), "{name}: invalid command line");
        let err = text(&o.stderr);
        assert!(
            err.starts_with("error: unexpected argument '--no-such-flag'"),
            "{name}: {err}"
        );
        assert!(err.contains(&format!("Usage: {name} ")), "{name}: {err}");
    }
}

/// mdextmon that cannot create its control socket (the run directory is
/// under a regular file). `journal`: stderr is a file whose device and inode
/// JOURNAL_STREAM names, as systemd does for a journal stream.
fn mdextmon_startup_error(journal: bool) -> (Output, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = image(dir.path(), "file", 0);
    let sysfs = dir.path().join("sys");
    std::fs::create_dir_all(sysfs.join("block")).expect("mkdir");
    let log = dir.path().join("stderr");
    let err = std::fs::File::create(&log).expect("create stderr file");
    let mut c = Command::new(MDEXTMON);
    c.arg("--run-dir")
        .arg(file.join("run"))
        .arg("--sysfs")
        .arg(&sysfs)
        .env_remove("JOURNAL_STREAM")
        // A backtrace would be more lines still.
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    if journal {
        let m = err.metadata().expect("stat");
        c.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    }
    let o = c.stderr(err).output().expect("run mdextmon");
    let text = std::fs::read_to_string(&log).expect("read stderr");
    (o, text)
}

#[test]
fn mdextmon_startup_error_is_one_line_for_a_terminal() {
    let (o, err) = mdextmon_startup_error(false);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| !l.contains("warning")).collect();
    assert_eq!(errors.len(), 1, "one line expected:\n{err}");
    assert!(
        errors[0].starts_with("mdextmon: error: control socket ")
            && errors[0].ends_with("Not a directory (os error 20)")
            && errors[0].matches("Not a directory").count() == 1,
        "{err}"
    );
}

#[test]
fn mdextmon_startup_error_has_a_priority_prefix_for_the_journal() {
    let (o, err) = mdextmon_startup_error(true);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for l in err.lines() {
        assert!(
            l.starts_with("<3>mdextmon: ") || l.starts_with("<4>mdextmon: "),
            "every journal line carries a priority: {l:?} in\n{err}"
        );
    }
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("<3>")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{err}");
    assert!(
        errors[0].starts_with("<3>mdextmon: control socket ")
            && errors[0].matches("Not a directory").count() == 1,
        "{err}"
    );
}

fn assemble_in(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(MDEXTCTL)
        .arg("assemble")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run mdextctl assemble");
    (o.status.code(), text(&o.stderr))
}

/// `assemble d0.img d1.img` in the images' directory: both are devices
/// (they exist), none is the array's name. On the host the first one is
/// then refused for not being a block device, which shows which argument
/// was taken as the first device; nothing is started.
#[test]
fn assemble_takes_existing_files_as_devices_not_as_the_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    member(dir.path());
    let not_block = "not a block device (md members must be block devices; \
                     use a loop device for an image)";
    let (code, err) = assemble_in(dir.path(), &["a.img", "b.img"]);
    assert_eq!(code, Some(1));
    assert_eq!(err, format!("mdextctl: a.img: {not_block}\n"));
    let (code, err) = assemble_in(dir.path(), &["a.img"]);
    assert_eq!(code, Some(1));
    assert_eq!(err, format!("mdextctl: a.img: {not_block}\n"));
    // A name (nothing by that name exists here) and devices, in any order.
    let (code, err) = assemble_in(dir.path(), &["b.img", "web", "a.img"]);
    assert_eq!(code, Some(1));
    assert_eq!(err, format!("mdextctl: b.img: {not_block}\n"));
}

#[test]
fn assemble_names_a_missing_device_and_refuses_two_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    member(dir.path());
    let (code, err) = assemble_in(dir.path(), &["./d9.img", "a.img"]);
    assert_eq!(code, Some(1));
    assert_eq!(err, "mdextctl: ./d9.img: no such device or file\n");
    let (code, err) = assemble_in(dir.path(), &["d9.img", "web", "a.img"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "mdextctl: d9.img, web: no such device or file, and only one array name or UUID \
         may be given\n"
    );
}
