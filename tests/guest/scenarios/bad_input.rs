//! Issue 11, item 5: mdextctl given wrong devices, missing devices, devices
//! of another (running) array, a shrunk member and nonsense, where md is
//! needed (assemble, fail, remove, add, stop, detail, wait, create and
//! convert on block devices). Each command must exit non-zero with one
//! line naming the problem, and change nothing: every member's backing
//! file is byte-compared before and after, the running array keeps both
//! members in sync, and no md device appears. What needs no md is
//! tests/cli_bad_input.rs.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{ensure, Result};
use std::path::Path;
use std::time::Duration;

pub static RUNNING_ARRAYS: Scenario = Scenario {
    name: "bad_input_on_running_arrays_changes_nothing",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: bad_input_on_running_arrays,
        ends: Ends::Ok,
    }],
};

/// md5 of every loop device's backing file (coherent with what md and
/// mdextmon write through the loop devices).
fn sums(n: usize) -> Result<Vec<String>> {
    (0..n)
        .map(|i| md5(Path::new(&format!("/tmp/disk{i}.img"))))
        .collect()
}

fn bad_input_on_running_arrays() -> Result<()> {
    // one: loop0+1, stopped. two: loop2+3, running. loop4: blank.
    // three: loop5+6, stopped, loop6 then shrunk below its data area.
    let loops = loop_devices(7, 24)?;
    for (name, a, b) in [("one", 0, 1), ("two", 2, 3), ("three", 5, 6)] {
        ctl(&format!(
            "create --level 1 --raid-devices 2 --name {name} --bitmap-chunk 64K --assume-clean /dev/loop{a} /dev/loop{b}"
        ))?;
    }
    sh("truncate -s 12M /tmp/disk6.img && losetup -c /dev/loop6")?;
    ctl("assemble two /dev/loop2 /dev/loop3")?;
    let md = sysfs().md("md127");
    // Settled: in sync, clean, the kernel allowed to clear bits.
    wait_until("md127 settled", Duration::from_secs(60), || {
        let settled = md.degraded().ok()? == 0
            && md.read("sync_action").ok()? == "idle"
            && can_clear_is(&md, true).ok()?
            && examine(Path::new("/dev/loop2")).ok()?["state"] == "clean";
        settled.then_some(())
    })?;
    let before = sums(loops.len())?;
    // (arguments, what the one error line must say)
    let cases: &[(&str, &str)] = &[
        // assemble: a member of the running array, a missing device, a
        // blank one, the running array again, a shrunk member.
        (
            "assemble one /dev/loop0 /dev/loop2",
            "/dev/loop2: already in use by md127",
        ),
        (
            "assemble /dev/loop2 /dev/loop3",
            "/dev/loop2: already in use by md127",
        ),
        (
            "assemble two /dev/loop2 /dev/loop3",
            "/dev/loop2: already in use by md127",
        ),
        (
            "assemble one /dev/loop0 /dev/nonexistent",
            "/dev/nonexistent",
        ),
        (
            "assemble one /dev/loop0 /dev/loop4",
            // Defect: "/dev/loop4: /dev/loop4: no mdext metadata".
            "mdextctl: /dev/loop4: no mdext metadata",
        ),
        // Defect: loop5 (of array three) was dropped without a word.
        (
            "assemble one /dev/loop0 /dev/loop5",
            "/dev/loop5: belongs to array three",
        ),
        (
            "assemble three /dev/loop5 /dev/loop6",
            "/dev/loop6: the device is 24576 sectors",
        ),
        ("assemble nosuch /dev/loop0 /dev/loop1", "nosuch"),
        // fail, remove, add: devices that are not members, missing,
        // not block devices, of another array, shrunk; a member in sync.
        ("fail md127 /dev/loop0", "/dev/loop0"),
        ("fail md127 /dev/nonexistent", "/dev/nonexistent"),
        ("fail md127 /dev/null", "/dev/null"),
        ("fail md126 /dev/loop2", "md126"),
        ("fail one /dev/loop0", "'one'"),
        // Defect: said "member 0 is active", not which device.
        ("remove md127 /dev/loop2", "/dev/loop2: member 0 is active"),
        ("remove md127 /dev/loop0", "/dev/loop0"),
        ("remove md127 /dev/nonexistent", "/dev/nonexistent"),
        ("add md127 /dev/loop2", "/dev/loop2"),
        (
            "add md127 /dev/loop0",
            "/dev/loop0: belongs to another mdext array (one",
        ),
        (
            "add md127 /dev/loop6",
            "/dev/loop6: belongs to another mdext array (three",
        ),
        ("add md127 /dev/nonexistent", "/dev/nonexistent"),
        ("add md127 /dev/null", "/dev/null"),
        // stop, detail, wait: a member, a stopped array, no such md.
        ("stop /dev/loop2", "/dev/loop2"),
        ("stop one", "'one'"),
        ("stop md126", "md126"),
        ("detail /dev/loop2", "/dev/loop2"),
        ("detail one", "'one'"),
        ("wait md126", "md126"),
        // create and convert on members of the running array (in use,
        // even with --force), examine-bitmap on the shrunk member.
        (
            "create -l 1 -n 2 --force /dev/loop4 /dev/loop2",
            "/dev/loop2",
        ),
        (
            "create -l 1 -n 2 --bitmap-chunk 0 /dev/loop4 /dev/loop2",
            "--bitmap-chunk 0",
        ),
        (
            "convert /dev/loop2 /dev/loop3",
            "/dev/loop2: already in use by md127",
        ),
        ("examine-bitmap /dev/loop6", "smaller than the data area"),
        ("examine /dev/loop6", "smaller than the data area"),
    ];
    let mut failures = Vec::new();
    for (args, want) in cases {
        let (code, _, err) = ctl_exit(args)?;
        let err = err.trim();
        let why = if code == Some(0) || code.is_none() {
            format!("exit {code:?}")
        } else if code == Some(101) {
            "panicked".into()
        } else if err.lines().count() != 1 || !err.starts_with("mdextctl: ") {
            "not one mdextctl line".into()
        } else if !err.contains(want) {
            format!("does not say '{want}'")
        } else if sums(loops.len())? != before {
            "changed a member".into()
        } else if sysfs().list_md() != ["md127"] {
            format!("md devices now {:?}", sysfs().list_md())
        } else if md.degraded()? != 0 || md.members().len() != 2 {
            format!("md127 now has {:?}", md.members())
        } else {
            continue;
        };
        failures.push(format!("`mdextctl {args}`: {why}: {err}"));
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    ctl("stop two")?;
    Ok(())
}
