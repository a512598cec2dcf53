//! Issue 5: degradation, rebuild and the can_clear protocol.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{bail, ensure, Context, Result};
use mdext::sysfs::MdDev;
use std::path::Path;
use std::time::Duration;

pub static FAIL_READD: Scenario = Scenario {
    name: "fail_write_readd_rebuilds_only_dirty_chunks",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: fail_readd,
        ends: Ends::Ok,
    }],
};

pub static FAIL_READD_THREADS: Scenario = Scenario {
    name: "fail_write_readd_with_writer_threads",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: fail_readd_threads,
        ends: Ends::Ok,
    }],
};

pub static DEGRADED_CRASH: Scenario = Scenario {
    name: "crash_while_degraded_then_bitmap_readd",
    disks: &[64, 64],
    phases: &[
        Phase {
            name: "degrade_write_crash",
            run: degraded_crash_phase1,
            ends: Ends::Crash,
        },
        Phase {
            name: "degraded_assembly_readd",
            run: degraded_crash_phase2,
            ends: Ends::Ok,
        },
    ],
};

pub static REPLACED_RETURNS: Scenario = Scenario {
    name: "replaced_member_returns_full_rebuild",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: replaced_returns,
        ends: Ends::Ok,
    }],
};

pub static KILL_BEFORE_TRUE: Scenario = Scenario {
    name: "daemon_killed_between_record_and_can_clear_true",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: kill_before_true,
        ends: Ends::Ok,
    }],
};

const CHUNK_LEN: usize = 64 << 10;
const CHUNK: u64 = CHUNK_LEN as u64;
const CHUNK_SECTORS: u64 = CHUNK / 512;

fn md() -> MdDev {
    sysfs().md("md127")
}

fn can_clear(md: &MdDev) -> Result<Option<bool>> {
    Ok(md.can_clear()?)
}

fn member_states(dev: &Path) -> Result<Vec<String>> {
    let e = examine(dev)?;
    Ok(e["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| m["state"].as_str().unwrap_or("?").to_string())
        .collect())
}

/// The metadata on `dev` records every slot in sync with events_cleared ==
/// events (the condition for can_clear=true).
fn recorded_whole(dev: &Path) -> Result<bool> {
    let e = examine(dev)?;
    let all = member_states(dev)?.iter().all(|s| s == "in-sync");
    Ok(all && e["bitmap"]["events_cleared"] == e["events"])
}

/// Every member records the array whole, and the kernel, allowed to clear
/// bits again, clears them.
fn whole_then_cleared(loops: &[Loop], when: &str) -> Result<()> {
    for l in loops {
        ensure!(
            recorded_whole(&l.path)?,
            "{} not recorded whole {when}",
            l.path.display()
        );
    }
    wait_until("bits cleared once allowed", Duration::from_secs(15), || {
        bits_on(&loops[0].path)
            .ok()
            .filter(|b| b.is_empty())
            .map(|_| ())
    })
}

/// The set bits in the region the array's recorded mode runs from.
fn bits_on(dev: &Path) -> Result<Vec<u64>> {
    if examine(dev)?["bitmap"]["mode"] == "kernel" {
        Ok(set_bits(&read_direct(dev, 8 * 512, 4096)?[256..]))
    } else {
        Ok(set_bits(&read_direct(dev, 16 * 512, 4096)?))
    }
}

fn fail_readd() -> Result<()> {
    fail_readd_by("io_uring")
}

/// The same with the record writers io_uring falls back to.
fn fail_readd_threads() -> Result<()> {
    // The daemon mdextctl starts inherits it.
    std::env::set_var("MDEXT_WRITERS", "threads");
    let r = fail_readd_by("writer threads");
    std::env::remove_var("MDEXT_WRITERS");
    r
}

/// Fail, write, re-add: the rebuild copies the dirty chunks only; the
/// daemon's records went by `writers` (what its log says at start).
fn fail_readd_by(writers: &str) -> Result<()> {
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name re --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("assemble re /dev/loop0 /dev/loop1")?;
    let md = md();
    wait_until(
        "can_clear true on a whole array",
        Duration::from_secs(10),
        || can_clear_is(&md, true).ok()?.then_some(()),
    )?;
    ensure!(
        recorded_whole(&loops[0].path)?,
        "healthy array not recorded whole"
    );
    ensure!(
        fail_and_remove(&md, "/dev/loop1")? == 1,
        "not degraded by one slot"
    );
    ensure!(
        member_states(&loops[0].path)?[1] == "failed",
        "failure not recorded"
    );
    let dirty = [2u64, 7, 8, 100, 900];
    write_chunks(&md, &dirty, 0)?;
    // Several time_base periods: the kernel must not clear the bits.
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        bits_on(&loops[0].path)? == dirty,
        "bits while degraded: {:?}",
        bits_on(&loops[0].path)?
    );
    ensure!(can_clear_is(&md, false)?, "can_clear while degraded");
    // examine-bitmap shows the same chunks.
    let eb: serde_json::Value = serde_json::from_str(&ctl("examine-bitmap --json /dev/loop0")?)?;
    ensure!(eb["dirty"] == 5, "examine-bitmap dirty: {}", eb["dirty"]);
    ensure!(
        eb["dirty_ranges"] == serde_json::json!([[2, 2], [7, 8], [100, 100], [900, 900]]),
        "examine-bitmap ranges: {}",
        eb["dirty_ranges"]
    );
    let grid = ctl("examine-bitmap /dev/loop0")?;
    ensure!(grid.contains("5 dirty") && grid.contains('#'), "{grid}");
    let w0 = written_sectors("loop1")?;
    ctl("add md127 /dev/loop1")?;
    wait_whole(&md)?;
    let written = written_sectors("loop1")? - w0;
    let data = dirty.len() as u64 * CHUNK_SECTORS;
    println!("bitmap rebuild wrote {written} sectors to the returning member ({data} for {} dirty chunks)", dirty.len());
    ensure!(
        written >= data && written < data + 200,
        "rebuild wrote {written} sectors, expected {data} plus metadata"
    );
    whole_then_cleared(&loops, "after the rebuild")?;
    verify_chunks(&md, &dirty, 0)?;
    ensure!(
        check_mismatches(&md)? == 0,
        "mismatch_cnt after the bitmap rebuild"
    );
    let log = std::fs::read_to_string("/run/mdext/mdextmon.log")?;
    ensure!(
        log.contains(&format!("metadata writes: {writers}")),
        "the daemon's log does not say its records go by {writers}:\n{log}"
    );
    ctl("stop md127")?;
    Ok(())
}

const CRASH_DIRTY: [u64; 4] = [2, 50, 51, 150];

fn degraded_crash_phase1() -> Result<()> {
    ctl("create --level 1 --raid-devices 2 --name dc --bitmap-chunk 64K --time-base 1 --assume-clean /dev/vda /dev/vdb")?;
    ctl("assemble dc /dev/vda /dev/vdb")?;
    let md = md();
    ensure!(
        fail_and_remove(&md, "/dev/vdb")? == 1,
        "not degraded by one slot"
    );
    write_chunks(&md, &CRASH_DIRTY, 10)?;
    ensure!(
        bits_on(Path::new("/dev/vda"))? == CRASH_DIRTY,
        "bits before the crash"
    );
    println!("MDEXT-CRASHING");
    sh("echo b > /proc/sysrq-trigger")?;
    std::thread::sleep(Duration::from_secs(30));
    bail!("still alive after sysrq b")
}

fn degraded_crash_phase2() -> Result<()> {
    let (a, b) = (Path::new("/dev/vda"), Path::new("/dev/vdb"));
    ensure!(
        bits_on(a)? == CRASH_DIRTY,
        "bits after the crash: {:?}",
        bits_on(a)?
    );
    let out = ctl("assemble --run dc /dev/vda /dev/vdb")?;
    ensure!(
        out.contains("/dev/vdb not used") && out.contains("4 dirty chunks kept"),
        "{out}"
    );
    let md = md();
    ensure!(
        can_clear_is(&md, false)?,
        "can_clear after a degraded start"
    );
    // The kernel's bitmap daemon would clear loaded bits within ~2 time_base
    // periods if nothing stopped it.
    std::thread::sleep(Duration::from_secs(5));
    ensure!(
        bits_on(a)? == CRASH_DIRTY,
        "bits lost after the degraded restart: {:?}",
        bits_on(a)?
    );
    write_chunks(&md, &[100], 10)?;
    let w0 = written_sectors("vdb")?;
    ctl("add md127 /dev/vdb")?;
    wait_whole(&md)?;
    let written = written_sectors("vdb")? - w0;
    let data = 5 * CHUNK_SECTORS;
    println!("bitmap rebuild after a degraded restart wrote {written} sectors ({data} for 5 dirty chunks)");
    ensure!(
        written >= data && written < data + 200,
        "rebuild wrote {written} sectors, expected {data} plus metadata"
    );
    ensure!(
        recorded_whole(a)? && recorded_whole(b)?,
        "not recorded whole after the rebuild"
    );
    verify_chunks(&md, &CRASH_DIRTY, 10)?;
    verify_chunks(&md, &[100], 10)?;
    ensure!(
        check_mismatches(&md)? == 0,
        "mismatch_cnt after the rebuild"
    );
    ctl("stop md127")?;
    Ok(())
}

fn replaced_returns() -> Result<()> {
    let loops = loop_devices(3, 64)?;
    ctl("create --level 1 --raid-devices 2 --name rp --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    let comp = examine(&loops[0].path)?["component_size_sectors"]
        .as_u64()
        .context("size")?;
    ctl("assemble rp /dev/loop0 /dev/loop1")?;
    let md = md();
    ensure!(
        fail_and_remove(&md, "/dev/loop1")? == 1,
        "not degraded by one slot"
    );
    write_chunks(&md, &[1, 2, 3], 20)?;
    // A blank replacement: a full rebuild, slowed so its state can be seen.
    md.write("sync_speed_max", "8000")?;
    let w0 = written_sectors("loop2")?;
    ctl("add md127 /dev/loop2")?;
    wait_until("recovery running", Duration::from_secs(10), || {
        (md.read("sync_action").ok()? == "recover").then_some(())
    })?;
    ensure!(can_clear_is(&md, false)?, "can_clear during a rebuild");
    ensure!(
        member_states(&loops[0].path)?[1] == "rebuilding",
        "rebuild not recorded"
    );
    // Progress is recorded as the rebuild checkpoint, never ahead of md.
    let cp = wait_until(
        "a rebuild checkpoint recorded",
        Duration::from_secs(60),
        || {
            let e = examine(&loops[0].path).ok()?;
            e["members"][1]["rebuild_checkpoint_sectors"]
                .as_u64()
                .filter(|c| *c > 0)
        },
    )?;
    let done = match md.sync_completed()? {
        mdext::md::SyncCompleted::Progress { done, .. } => done.0,
        _ => comp,
    };
    println!("rebuild checkpoint recorded at {cp} sectors, md reports {done} done");
    ensure!(cp <= done, "checkpoint {cp} ahead of md's progress {done}");
    md.write("sync_speed_max", "system")?;
    wait_whole(&md)?;
    let full = written_sectors("loop2")? - w0;
    println!("blank replacement: full rebuild wrote {full} sectors (component {comp})");
    ensure!(
        full >= comp,
        "the replacement was not fully rebuilt: {full} < {comp}"
    );
    // The replacement leaves; the old member returns. Bits were cleared
    // since it left (can_clear went true): only a full rebuild is safe.
    ensure!(
        fail_and_remove(&md, "/dev/loop2")? == 1,
        "not degraded by one slot"
    );
    write_chunks(&md, &[4], 20)?;
    let w1 = written_sectors("loop1")?;
    ctl("add md127 /dev/loop1")?;
    wait_whole(&md)?;
    let again = written_sectors("loop1")? - w1;
    println!("old member after a replacement: rebuild wrote {again} sectors (component {comp})");
    ensure!(
        again >= comp,
        "the old member got a partial rebuild: {again} < {comp}"
    );
    verify_chunks(&md, &[1, 2, 3, 4], 20)?;
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt");
    ctl("stop md127")?;
    Ok(())
}

fn daemon_alive() -> bool {
    mdext::control::call(
        Path::new("/run/mdext"),
        &mdext::control::Request::Ping,
        Duration::from_secs(1),
    )
    .is_ok()
}

fn kill_before_true() -> Result<()> {
    needs_external_bitmap("the can_clear protocol")?;
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name kb --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    start_daemon(Some("before-can-clear-true"))?;
    ctl("assemble kb /dev/loop0 /dev/loop1")?;
    let md = md();
    ensure!(
        fail_and_remove(&md, "/dev/loop1")? == 1,
        "not degraded by one slot"
    );
    let dirty = [5u64, 6, 300];
    write_chunks(&md, &dirty, 30)?;
    // The rebuild of 3 chunks can end while the daemon still handles the
    // request; then it dies at the failpoint before it answers.
    let (ok, _, err) = ctl_status("add md127 /dev/loop1")?;
    ensure!(
        ok || err.contains("closed the connection"),
        "add failed: {err}"
    );
    // The rebuild ends; the daemon records the array whole, then dies where
    // it would write can_clear=true.
    wait_until(
        "the daemon to die at the failpoint",
        Duration::from_secs(60),
        || (!daemon_alive()).then_some(()),
    )?;
    ensure!(md.degraded()? == 0, "rebuild did not finish");
    ensure!(
        can_clear(&md)? == Some(false),
        "can_clear true without the daemon writing it"
    );
    for l in &loops {
        ensure!(
            recorded_whole(&l.path)?,
            "{} not recorded whole before the true",
            l.path.display()
        );
    }
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        bits_on(&loops[0].path)? == dirty,
        "bits not kept while can_clear is false: {:?}",
        bits_on(&loops[0].path)?
    );
    // A restarted daemon (no arguments: takes over every mdext array)
    // finishes the protocol.
    start_daemon(None)?;
    wait_until(
        "can_clear true after the restart",
        Duration::from_secs(20),
        || (md.can_clear().ok()? == Some(true)).then_some(()),
    )?;
    whole_then_cleared(&loops, "after the restart")?;
    verify_chunks(&md, &dirty, 30)?;
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt");
    ctl("stop md127")?;
    Ok(())
}

pub static TAKEOVER_FAILED: Scenario = Scenario {
    name: "takeover_of_array_with_unrecorded_failure",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: takeover_failed,
        ends: Ends::Ok,
    }],
};

fn takeover_failed() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    ctl("create --level 1 --raid-devices 2 --name to --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("assemble to /dev/loop0 /dev/loop1")?;
    let md = md();
    sh("kill -KILL $(cat /run/mdext/mdextmon.pid)")?;
    wait_until("mdextmon gone", Duration::from_secs(10), || {
        (!daemon_alive()).then_some(())
    })?;
    // A member fails while nobody manages the array: md holds writes and
    // leaves can_clear true (it never changes it by itself).
    md.member("loop1")
        .command(mdext::md::MemberCommand::Faulty)?;
    ensure!(
        md.member("loop1").flags()?.blocked,
        "failed member not blocked"
    );
    ensure!(can_clear_is(&md, true)?, "can_clear changed by itself");
    let dirty = [9u64, 10];
    let writer = {
        let md = md.clone();
        std::thread::spawn(move || write_chunks(&md, &dirty, 40))
    };
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        !writer.is_finished(),
        "a write passed a blocked member with no daemon"
    );
    // A new daemon takes the array over: can_clear=false, the failure
    // recorded, the member unblocked and removed, the write released.
    start_daemon(None)?;
    wait_until(
        "the held write to complete",
        Duration::from_secs(20),
        || writer.is_finished().then_some(()),
    )?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    ensure!(
        can_clear_is(&md, false)?,
        "can_clear after takeover of a degraded array"
    );
    ensure!(
        member_states(&loops[0].path)?[1] == "failed",
        "failure not recorded at takeover"
    );
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        bits_on(&loops[0].path)? == dirty,
        "bits not kept: {:?}",
        bits_on(&loops[0].path)?
    );
    wait_until(
        "the failed member detached",
        Duration::from_secs(10),
        || (!Path::new("/sys/block/md127/md/dev-loop1").exists()).then_some(()),
    )?;
    let w0 = written_sectors("loop1")?;
    ctl("add md127 /dev/loop1")?;
    wait_whole(&md)?;
    let written = written_sectors("loop1")? - w0;
    let data = dirty.len() as u64 * CHUNK_SECTORS;
    println!("re-add after a takeover wrote {written} sectors ({data} for 2 dirty chunks)");
    ensure!(
        written >= data && written < data + 200,
        "rebuild wrote {written} sectors"
    );
    whole_then_cleared(&loops, "after the rebuild")?;
    verify_chunks(&md, &dirty, 40)?;
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt");
    ctl("stop md127")?;
    Ok(())
}

pub static CRASH_MID_REBUILD: Scenario = Scenario {
    name: "crash_mid_rebuild_then_assemble_resumes",
    disks: &[64, 64, 64],
    phases: &[
        Phase {
            name: "rebuild_then_crash",
            run: mid_rebuild_phase1,
            ends: Ends::Crash,
        },
        Phase {
            name: "assemble_resumes",
            run: mid_rebuild_phase2,
            ends: Ends::Ok,
        },
    ],
};

const MID_DIRTY: [u64; 3] = [1, 2, 3];

fn mid_rebuild_phase1() -> Result<()> {
    ctl("create --level 1 --raid-devices 2 --name mr --bitmap-chunk 64K --time-base 1 --assume-clean /dev/vda /dev/vdb")?;
    ctl("assemble mr /dev/vda /dev/vdb")?;
    let md = md();
    ensure!(
        fail_and_remove(&md, "/dev/vdb")? == 1,
        "not degraded by one slot"
    );
    write_chunks(&md, &MID_DIRTY, 50)?;
    // A blank replacement: a full rebuild, slowed so that the crash lands
    // in it. The crash comes as soon as `add` returns, before any progress
    // checkpoint could be recorded: the new member's own record must
    // already be durable (it once was written only at the first
    // checkpoint, and a crash before it left the device blank).
    md.write("sync_speed_max", "1000")?;
    ctl("add md127 /dev/vdc")?;
    for d in ["/dev/vda", "/dev/vdc"] {
        ensure!(
            member_states(Path::new(d))?[1] == "rebuilding",
            "{d} does not record slot 1 rebuilding right after add"
        );
    }
    ensure!(can_clear_is(&md, false)?, "can_clear during the rebuild");
    ensure!(
        md.read("sync_action")?.trim() != "idle",
        "the rebuild is not under way"
    );
    println!("MDEXT-CRASHING");
    sh("echo b > /proc/sysrq-trigger")?;
    std::thread::sleep(Duration::from_secs(30));
    bail!("still alive after sysrq b")
}

fn mid_rebuild_phase2() -> Result<()> {
    let comp = examine(Path::new("/dev/vda"))?["component_size_sectors"]
        .as_u64()
        .context("size")?;
    let w0 = written_sectors("vdc")?;
    // No --run: the interrupted rebuild is resumed, not a missing member.
    let out = ctl("assemble mr /dev/vda /dev/vdb /dev/vdc")?;
    ensure!(out.contains("/dev/vdc was being rebuilt"), "{out}");
    ensure!(out.contains("/dev/vdb not used"), "{out}");
    let md = md();
    wait_whole(&md)?;
    let written = written_sectors("vdc")? - w0;
    println!("resumed rebuild wrote {written} sectors to the replacement (component {comp})");
    ensure!(
        written >= comp,
        "the replacement was not fully rebuilt: {written} < {comp}"
    );
    for d in ["/dev/vda", "/dev/vdc"] {
        ensure!(recorded_whole(Path::new(d))?, "{d} not recorded whole");
    }
    verify_chunks(&md, &MID_DIRTY, 50)?;
    ensure!(
        check_mismatches(&md)? == 0,
        "mismatch_cnt after the resumed rebuild"
    );
    ctl("stop md127")?;
    Ok(())
}

pub static OTHER_LEVELS: Scenario = Scenario {
    name: "raid5_and_raid10_bitmap_readd",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: other_levels,
        ends: Ends::Ok,
    }],
};

/// raid5 (3 members) and raid10 (4, near-2): fail a member, write 4 MiB
/// while degraded, re-add: the rebuild covers the dirty bitmap chunks only,
/// the data reads back and md's scrub finds nothing.
fn other_levels() -> Result<()> {
    let loops = loop_devices(4, 64)?;
    // (level, members, sectors the returning member must receive for 4 MiB
    // of array data: raid5 counts bitmap chunks per member (2 MiB each);
    // on raid10 near-2 half of the array's chunks have a copy on it.)
    for (level, n, data) in [(5u32, 3usize, 4096u64), (10, 4, 4096)] {
        let devs: Vec<String> = loops[..n]
            .iter()
            .map(|l| l.path.display().to_string())
            .collect();
        let devs = devs.join(" ");
        ctl(&format!(
            "create --level {level} --raid-devices {n} --name l{level} --bitmap-chunk 64K --time-base 1 --assume-clean --force {devs}"
        ))?;
        ctl(&format!("assemble l{level} {devs}"))?;
        let md = md();
        ensure!(
            fail_and_remove(&md, "/dev/loop1")? == 1,
            "not degraded by one slot"
        );
        let blob = pattern(u64::from(level), 4 << 20);
        write_direct(&md.dev_path(), 8 << 20, &blob)?;
        let w0 = written_sectors("loop1")?;
        ctl("add md127 /dev/loop1")?;
        wait_whole(&md)?;
        let written = written_sectors("loop1")? - w0;
        println!("raid{level}: bitmap re-add wrote {written} sectors ({data} expected as data)");
        ensure!(
            written >= data && written < data + 256,
            "raid{level}: re-add wrote {written} sectors, expected {data} plus metadata"
        );
        ensure!(
            read_direct(&md.dev_path(), 8 << 20, 4 << 20)? == blob,
            "raid{level}: data"
        );
        ensure!(check_mismatches(&md)? == 0, "raid{level}: mismatch_cnt");
        ctl("stop md127")?;
    }
    Ok(())
}
