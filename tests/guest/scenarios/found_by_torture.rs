//! Regression tests for defects the torture campaign found (issue 11), one
//! each, at the moment the campaign hit them.

use crate::harness::{Phase, Scenario};
use crate::util::*;
use anyhow::{ensure, Result};
use std::time::Duration;

/// Campaign seed 0x82b26bc472ff0705 (and eight more): a member swapped for
/// an older copy of itself assembled as in sync and served its old blocks.
pub static STALE_COPY: Scenario = Scenario {
    name: "stale_copy_of_a_member_is_left_out_and_rebuilt_fully",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: stale_copy,
        ends: crate::harness::Ends::Ok,
    }],
};

fn stale_copy() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name st --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("assemble st /dev/loop0 /dev/loop1")?;
    let md = sysfs().md("md127");
    write_chunks(&md, &[3, 40], 1)?;
    ctl("stop md127")?;
    // The copy, taken while the array is stopped and clean.
    sh("cp /tmp/disk1.img /tmp/stale.img")?;
    ctl("assemble st /dev/loop0 /dev/loop1")?;
    // New data the copy never saw: in chunks the copy holds old data for,
    // and in one it holds nothing for.
    write_chunks(&md, &[3, 40, 77], 2)?;
    ctl("stop md127")?;
    sh("losetup -d /dev/loop1 && losetup /dev/loop1 /tmp/stale.img")?;
    let before = md5(&loops[1].path)?;
    // Refused whole: the copy missed the records since.
    let (ok, _, err) = ctl_status("assemble st /dev/loop0 /dev/loop1")?;
    ensure!(!ok, "a stale copy assembled as in sync");
    ensure!(
        err.contains("/dev/loop1") && err.contains("stale") && err.contains("--run"),
        "refusal does not name the stale copy: {err}"
    );
    ensure!(
        md5(&loops[1].path)? == before,
        "the refusal wrote to the copy"
    );
    ctl("assemble --run st /dev/loop0 /dev/loop1")?;
    ensure!(md.degraded()? == 1, "started with the stale copy");
    // Added back, it is rebuilt whole: the bits of the writes it missed
    // were cleared while the array ran whole.
    let w0 = written_sectors("loop1")?;
    ctl("add md127 /dev/loop1")?;
    wait_until("the rebuild to end", Duration::from_secs(300), || {
        (md.degraded().ok()? == 0 && md.read("sync_action").ok()? == "idle").then_some(())
    })?;
    let written = written_sectors("loop1")? - w0;
    let comp = examine(&loops[0].path)?["component_size_sectors"]
        .as_u64()
        .unwrap_or(u64::MAX);
    println!("the stale copy's rebuild wrote {written} sectors (component {comp})");
    ensure!(
        written >= comp,
        "not a full rebuild: {written} of {comp} sectors"
    );
    // Read through the rebuilt member alone.
    ctl("fail md127 /dev/loop0")?;
    wait_until("loop0 detached", Duration::from_secs(30), || {
        (!std::path::Path::new("/sys/block/md127/md/dev-loop0").exists()).then_some(())
    })?;
    verify_chunks(&md, &[3, 40, 77], 2)?;
    ctl("remove md127 /dev/loop0")?;
    ctl("add md127 /dev/loop0")?;
    wait_until("the array whole", Duration::from_secs(300), || {
        (md.degraded().ok()? == 0 && md.read("sync_action").ok()? == "idle").then_some(())
    })?;
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt");
    ctl("stop md127")?;
    Ok(())
}
