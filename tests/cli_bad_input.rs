//! Issue 11, item 5: every mdextctl subcommand that needs no md driver,
//! given wrong devices, missing devices, devices of another array, a shrunk
//! member and nonsense sizes, on image files. Each must exit non-zero with
//! one line naming the problem (clap's usage errors: the first line names
//! it, then clap's usage hint; exit status 2), and leave every image byte
//! for byte as it was. What needs md (assemble, fail, remove, add, stop,
//! detail on running arrays) is the guest scenario
//! `bad_input_on_running_arrays_changes_nothing`.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mdextctl");
const MIB: u64 = 1 << 20;

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .expect("create")
        .set_len(size)
        .expect("set_len");
    p
}

fn ctl(args: &[String]) -> (Option<i32>, String, String) {
    let o = Command::new(BIN).args(args).output().expect("run mdextctl");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(line: &str) {
    let args: Vec<String> = line.split_whitespace().map(String::from).collect();
    let (code, _, err) = ctl(&args);
    assert_eq!(code, Some(0), "`mdextctl {line}`: {err}");
}

/// Every file in `dir` and its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| {
            let p = e.expect("entry").path();
            let bytes = std::fs::read(&p).unwrap_or_default();
            (p, bytes)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Lines clap adds after the line naming the problem.
fn clap_hint(l: &str) -> bool {
    l.is_empty()
        || l.starts_with("Usage: ")
        || l.starts_with("For more information")
        || l.starts_with("  tip: ")
        || l.starts_with("  [possible values: ")
        || l.starts_with("  <")
}

#[test]
fn bad_input_is_refused_in_one_line_and_changes_nothing() {
    let d = tempfile::tempdir().expect("tmp");
    let dir = d.path();
    // Array "one" (raid1: a, b), array "two" (raid5: c, d, e), blank f, g,
    // h, a 1 MiB image, and s: a copy of b cut to 4 MiB (a member that
    // shrank below its recorded data area).
    for n in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        image(dir, &format!("{n}.img"), 8 * MIB);
    }
    image(dir, "tiny.img", MIB);
    let p = |n: &str| dir.join(format!("{n}.img")).display().to_string();
    ok(&format!(
        "create -l 1 -n 2 --name one --assume-clean {} {}",
        p("a"),
        p("b")
    ));
    ok(&format!(
        "create -l 5 -n 3 --name two --chunk 64K {} {} {}",
        p("c"),
        p("d"),
        p("e")
    ));
    std::fs::copy(p("b"), p("s")).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(p("s"))
        .expect("open")
        .set_len(4 * MIB)
        .expect("truncate");
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let before = snapshot(dir);

    // (command line, what its first error line must say). {x} is image
    // x.img; {nx} does not exist; {dir} is a directory.
    let cases: &[(&str, &str)] = &[
        // Nonsense sizes and counts.
        (
            "create -l 1 -n 2 --bitmap-chunk 0 {f} {g}",
            "--bitmap-chunk 0: must be a power of two",
        ),
        (
            "create -l 1 -n 2 --bitmap-chunk 3K {f} {g}",
            "--bitmap-chunk 3072: must be a power of two",
        ),
        (
            "create -l 1 -n 2 --bitmap-chunk 256 {f} {g}",
            "--bitmap-chunk 256: must be a power of two",
        ),
        (
            "create -l 1 -n 2 --bitmap-chunk 8G {f} {g}",
            "--bitmap-chunk 8589934592: must be",
        ),
        ("create -l 1 -n 2 --bitmap-chunk 1P {f} {g}", "'1P'"),
        ("create -l 1 -n 2 --bitmap-chunk -1 {f} {g}", "'-1'"),
        (
            "create -l 1 -n 2 --bitmap-chunk 99999999999999999999 {f} {g}",
            "out of range",
        ),
        ("create -l 1 -n 2 --bitmap-chunk 1.5M {f} {g}", "'1.5M'"),
        ("create -l 5 -n 3 --chunk garbage {f} {g} {h}", "'garbage'"),
        (
            "create -l 5 -n 3 --chunk 0 {f} {g} {h}",
            "--chunk 0: must be a power of two",
        ),
        (
            "create -l 5 -n 3 --chunk 3K {f} {g} {h}",
            "--chunk 3072: must be a power of two",
        ),
        ("create -l 5 -n 3 --chunk 1P {f} {g} {h}", "'1P'"),
        // Defect: the need was given as 5 MiB, less than the device.
        (
            "create -l 5 -n 3 --chunk 64M {f} {g} {h}",
            "too small: 8388608 bytes, need at least 68157440",
        ),
        (
            "create -l 1 -n 2 --chunk 64K {f} {g}",
            "--chunk 65536: raid1 has no chunk",
        ),
        (
            "create -l 1 -n 2 --time-base 0 {f} {g}",
            "--time-base 0: must be 1..=3600",
        ),
        (
            "create -l 1 -n 2 --time-base 99999 {f} {g}",
            "--time-base 99999: must be 1..=3600",
        ),
        ("create -l 1 -n 2 --time-base -5 {f} {g}", "'-5'"),
        ("create -l 1 -n 2 --time-base soon {f} {g}", "'soon'"),
        (
            "create -l 1 -n 0 {f} {g}",
            "--raid-devices is 0 but 2 devices were given",
        ),
        (
            "create -l 1 -n 1000 {f} {g}",
            "--raid-devices is 1000 but 2 devices were given",
        ),
        ("create -l 1 -n -1 {f} {g}", "'-1'"),
        ("create -l 1 -n 99999999999 {f} {g}", "'99999999999'"),
        (
            "create -l 1 -n 1 {f}",
            "--raid-devices 1: raid1 needs 2..=64 devices",
        ),
        (
            "create -l 5 -n 2 {f} {g}",
            "--raid-devices 2: raid5 needs 3..=64 devices",
        ),
        (
            "create -l 6 -n 3 {f} {g} {h}",
            "--raid-devices 3: raid6 needs 4..=64 devices",
        ),
        (
            "create -l 10 -n 1 {f}",
            "--raid-devices 1: raid10 needs 2..=64 devices",
        ),
        ("create -l 7 -n 2 {f} {g}", "'7'"),
        (
            "create -l 1 -n 2 --name bad/name {f} {g}",
            "--name \"bad/name\"",
        ),
        ("create -l 1 -n 2 {f} {tiny}", "tiny.img: too small"),
        // Missing, wrong and doubled devices.
        (
            "create -l 1 -n 2 {f} {nx}",
            "none.img: no such device or file",
        ),
        (
            "create -l 1 -n 2 {f} /dev/null",
            "/dev/null: not a block device or regular file",
        ),
        (
            "create -l 1 -n 2 {f} {dir}",
            "sub: not a block device or regular file (directory)",
        ),
        ("create -l 1 -n 2 {f} {f}", "same device as"),
        ("create -l 1 -n 2", "required arguments were not provided"),
        // Devices of another array, a shrunk member.
        (
            "create -l 1 -n 2 {f} {a}",
            "a.img: carries a signature: mdext array (name one",
        ),
        (
            "create -l 1 -n 2 {c} {f}",
            "c.img: carries a signature: mdext array (name two",
        ),
        (
            "create -l 1 -n 2 {s} {f}",
            "s.img: carries a signature: mdext array (name one",
        ),
        // examine, examine-bitmap, convert.
        ("examine {nx}", "none.img: no such device or file"),
        ("examine {f}", "f.img: no mdext metadata"),
        ("examine /dev/null", "not a block device or regular file"),
        ("examine {dir}", "(directory)"),
        (
            "examine {s}",
            "s.img: the device is 8192 sectors (4.0 MiB), smaller than the data area",
        ),
        ("examine", "required arguments were not provided"),
        ("examine-bitmap {nx}", "none.img: no such device or file"),
        ("examine-bitmap {f}", "f.img: no mdext metadata"),
        ("examine-bitmap {dir}", "(directory)"),
        // Defect: exited 0 with no word of the shrunk device.
        (
            "examine-bitmap {s}",
            "s.img: the device is 8192 sectors (4.0 MiB), smaller than the data area",
        ),
        ("examine-bitmap {a} {b}", "unexpected argument"),
        ("convert {nx}", "none.img"),
        ("convert {a} {b}", "a.img: not a block device"),
        ("convert {f}", "f.img: not a block device"),
        // assemble, incremental: members must be block devices.
        ("assemble {a} {b}", "a.img: not a block device"),
        ("assemble {a} {c}", "a.img: not a block device"),
        ("assemble one {a} {s}", "a.img: not a block device"),
        ("assemble one {nx}", "none.img"),
        ("assemble --bogus {a}", "'--bogus'"),
        ("incremental {nx}", "none.img"),
        ("incremental {a}", "a.img: not a block device"),
        ("incremental {f}", "f.img: not a block device"),
        // No such running array (no md here).
        ("stop nosuch", "no running mdext array 'nosuch'"),
        ("stop {a}", "no running mdext array"),
        ("detail md99", "no running mdext array 'md99'"),
        ("detail {a}", "no running mdext array"),
        ("fail md127 {a}", "no running mdext array 'md127'"),
        ("remove md127 {a}", "no running mdext array 'md127'"),
        ("add md127 {nx}", "no running mdext array 'md127'"),
        ("add md127", "required arguments were not provided"),
        ("wait md99", "no running mdext array 'md99'"),
    ];
    let mut failures = Vec::new();
    for (line, want) in cases {
        let args: Vec<String> = line
            .split_whitespace()
            .map(|w| match w {
                "{nx}" => dir.join("none.img").display().to_string(),
                "{dir}" => sub.display().to_string(),
                w if w.starts_with('{') && w.ends_with('}') => p(&w[1..w.len() - 1]),
                w => w.to_string(),
            })
            .collect();
        let (code, _, err) = ctl(&args);
        let first = err.lines().next().unwrap_or_default();
        let rest_is_hint = err.lines().skip(1).all(clap_hint);
        let why = if code == Some(0) || code.is_none() {
            Some(format!("exit {code:?}"))
        } else if code == Some(101) {
            Some("panicked".to_string())
        } else if !first.contains(want) {
            Some(format!("first line does not say '{want}'"))
        } else if first.starts_with("mdextctl: ") && err.lines().count() != 1 {
            Some("more than one line".to_string())
        } else if first.starts_with("error: ") && (code != Some(2) || !rest_is_hint) {
            Some(format!("usage error with exit {code:?} or stray lines"))
        } else if !first.starts_with("mdextctl: ") && !first.starts_with("error: ") {
            Some("not an mdextctl error line".to_string())
        } else if snapshot(dir) != before {
            Some("changed a file".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            failures.push(format!("`mdextctl {line}`: {why}:\n{err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
