//! Issue 12, item 2: spares. A spare recorded at create is held by md
//! without a slot; when a member fails, mdextmon records the spare in the
//! failed slot (full rebuild), gives it the slot, keeps `can_clear` false
//! until the array is whole, then records it whole and allows clearing.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{ensure, Context, Result};
use mdext::sysfs::MdDev;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub static SPARE_TAKES_FAILED_SLOT: Scenario = Scenario {
    name: "spare_rebuilt_fully_into_a_failed_slot",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: spare_takes_failed_slot,
        ends: Ends::Ok,
    }],
};

fn md() -> MdDev {
    sysfs().md("md127")
}

/// `(uuid, state)` of every member table entry on `dev`.
fn table(dev: &Path) -> Result<Vec<(String, String)>> {
    let e = examine(dev)?;
    Ok(e["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| {
            (
                m["uuid"].as_str().unwrap_or("?").to_string(),
                m["state"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect())
}

fn device_uuid(dev: &Path) -> Result<String> {
    Ok(examine(dev)?["device_uuid"]
        .as_str()
        .context("device_uuid")?
        .to_string())
}

fn slot_of(dev: &Path) -> Result<serde_json::Value> {
    Ok(examine(dev)?["slot"].clone())
}

const DIRTY: [u64; 4] = [2, 7, 100, 500];

fn spare_takes_failed_slot() -> Result<()> {
    needs_external_bitmap("the can_clear protocol around a spare's rebuild")?;
    let loops = loop_devices(4, 64)?;
    let (l0, l1, l2, l3) = (
        &loops[0].path,
        &loops[1].path,
        &loops[2].path,
        &loops[3].path,
    );
    ctl("create --level 1 --raid-devices 2 --spare-devices 1 --name sp --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1 /dev/loop2")?;
    ensure!(
        slot_of(l2)?.is_null() && table(l2)?[2].1 == "spare",
        "create did not record loop2 as a spare: {:?}",
        table(l2)?
    );
    // The daemon, started here to log every action it takes.
    sh("mkdir -p /run/mdext && (setsid mdextmon --log-level debug >/run/mdext/mdextmon.log 2>&1 &)")?;
    wait_until("mdextmon to answer", Duration::from_secs(10), pong)?;
    let out = ctl("assemble sp /dev/loop0 /dev/loop1 /dev/loop2")?;
    ensure!(out.contains("/dev/loop2 added as a spare"), "{out}");
    let md = md();
    ensure!(
        md.read("dev-loop2/slot")? == "none",
        "the spare is not held by md without a slot: slot {}",
        md.read("dev-loop2/slot")?
    );
    wait_until(
        "can_clear true with a spare",
        Duration::from_secs(10),
        || can_clear_is(&md, true).ok()?.then_some(()),
    )?;
    let (u0, u1, u2) = (device_uuid(l0)?, device_uuid(l1)?, device_uuid(l2)?);
    write_chunks(&md, &DIRTY, 3)?;
    let w0 = written_sectors("loop2")?;
    // Slow the rebuild (8 MB/s, about 8 s) so that its course is seen.
    md.write("sync_speed_max", "8000")?;
    // Sample the kernel's view from before the failure to the end.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let md = md.clone();
        std::thread::spawn(move || {
            let mut v: Vec<(u32, String, Option<bool>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let (Ok(d), Ok(a), Ok(c)) =
                    (md.degraded(), md.read("sync_action"), md.can_clear())
                {
                    v.push((d, a, c));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            v
        })
    };
    // The member in slot 1 fails: the daemon activates the spare by itself.
    let t0 = Instant::now();
    ctl("fail md127 /dev/loop1")?;
    println!("fail returned after {:.2} s", t0.elapsed().as_secs_f64());
    if let Err(e) = wait_until("the spare's recovery", Duration::from_secs(30), || {
        (md.read("sync_action").ok()? == "recover").then_some(())
    }) {
        stop.store(true, Ordering::Relaxed);
        let v = sampler.join().unwrap_or_default();
        let mut last = None;
        for x in v {
            if last.as_ref() != Some(&x) {
                println!("sample: {x:?}");
                last = Some(x);
            }
        }
        print!("{}", sh("cat /run/mdext/mdextmon.log").unwrap_or_default());
        return Err(e);
    }
    // Recorded before md rebuilds it: the spare holds slot 1, fully.
    for l in [l0, l2] {
        let e = examine(l)?;
        let m1 = &e["members"][1];
        ensure!(
            m1["uuid"] == u2.as_str()
                && m1["state"] == "rebuilding"
                && m1["rebuild_kind"] == "full",
            "{} during the rebuild: entry 1 is {m1}",
            l.display()
        );
        ensure!(
            e["members"][2]["uuid"] == u1.as_str() && e["members"][2]["state"] == "failed",
            "{}: entry 2 is {}",
            l.display(),
            e["members"][2]
        );
    }
    ensure!(
        can_clear_is(&md, false)?,
        "can_clear during the spare's rebuild"
    );
    wait_until(
        "the spare's rebuild to end",
        Duration::from_secs(300),
        || {
            let whole = md.degraded().ok()? == 0
                && md.read("sync_action").ok()? == "idle"
                && md.read("dev-loop2/slot").ok()? == "1";
            whole.then_some(())
        },
    )?;
    let rebuild_secs = t0.elapsed().as_secs_f64();
    wait_until(
        "can_clear true after the spare's rebuild",
        Duration::from_secs(20),
        || can_clear_is(&md, true).ok()?.then_some(()),
    )?;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    md.write("sync_speed_max", "system")?;
    // md fails the member with can_clear still true (it holds the write
    // until the daemon answers): from the daemon's `false` on, every sample
    // while degraded or rebuilding must read false.
    let reacted = samples
        .iter()
        .position(|(_, _, c)| *c == Some(false))
        .context("can_clear never read false")?;
    let before = samples[..reacted].iter().filter(|(d, _, _)| *d > 0).count();
    println!("{before} sample(s) degraded before the daemon's can_clear=false");
    let samples = samples[reacted..].to_vec();
    let bad: Vec<_> = samples
        .iter()
        .filter(|(d, a, c)| (*d > 0 || a == "recover") && *c != Some(false))
        .collect();
    let degraded_samples = samples.iter().filter(|(d, _, _)| *d > 0).count();
    let recover_samples = samples.iter().filter(|(_, a, _)| a == "recover").count();
    ensure!(
        bad.is_empty(),
        "can_clear not false while degraded or rebuilding: {:?}",
        &bad[..bad.len().min(5)]
    );
    ensure!(recover_samples > 0, "no sample during the rebuild");
    let written = written_sectors("loop2")? - w0;
    let component = examine(l0)?["component_size_sectors"]
        .as_u64()
        .context("component_size_sectors")?;
    println!(
        "spare rebuild: {written} sectors written to the spare (component {component}), {rebuild_secs:.1} s; {} samples, {degraded_samples} degraded and {recover_samples} rebuilding, each with can_clear=false",
        samples.len()
    );
    ensure!(
        written >= component,
        "the spare got {written} sectors, less than a full rebuild ({component})"
    );
    // The new roles, on every member md holds.
    for l in [l0, l2] {
        let e = examine(l)?;
        let t = table(l)?;
        ensure!(
            t == vec![
                (u0.clone(), "in-sync".to_string()),
                (u2.clone(), "in-sync".to_string()),
                (u1.clone(), "failed".to_string()),
            ],
            "{}: table {t:?}",
            l.display()
        );
        ensure!(
            e["bitmap"]["events_cleared"] == e["events"],
            "{}: events_cleared {} events {}",
            l.display(),
            e["bitmap"]["events_cleared"],
            e["events"]
        );
    }
    ensure!(slot_of(l2)? == 1, "loop2's role: {}", slot_of(l2)?);
    ensure!(slot_of(l0)? == 0, "loop0's role: {}", slot_of(l0)?);
    verify_chunks(&md, &DIRTY, 3)?;
    ensure!(
        check_mismatches(&md)? == 0,
        "mismatch_cnt after the spare's rebuild"
    );
    // add --spare of a blank device, then remove it: recorded, then forgotten.
    ctl("add --spare md127 /dev/loop3")?;
    ensure!(
        md.read("dev-loop3/slot")? == "none",
        "added spare given a slot"
    );
    let u3 = device_uuid(l3)?;
    ensure!(
        table(l0)?.iter().any(|e| e.0 == u3 && e.1 == "spare"),
        "add --spare not recorded: {:?}",
        table(l0)?
    );
    ensure!(can_clear_is(&md, true)?, "can_clear after add --spare");
    ctl("remove md127 /dev/loop3")?;
    ensure!(
        !Path::new("/sys/block/md127/md/dev-loop3").exists(),
        "removed spare still in md"
    );
    ensure!(
        !table(l0)?.iter().any(|e| e.0 == u3),
        "removed spare still recorded: {:?}",
        table(l0)?
    );
    ctl("stop md127")?;
    Ok(())
}

const GROUP_DIRTY: [u64; 4] = [2, 7, 100, 400];

pub static SPARE_GROUP: Scenario = Scenario {
    name: "spare_group_moves_a_spare_between_arrays",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: spare_group,
        ends: Ends::Ok,
    }],
};

/// Two raid1 arrays of one spare group under one mdextmon; only `gb` has a
/// spare. A member of `ga` fails: the daemon removes the spare from `gb`
/// (and its record), adds it to `ga` as a new member, rebuilt fully.
fn spare_group() -> Result<()> {
    needs_external_bitmap("the can_clear protocol around a group spare's rebuild")?;
    let loops = loop_devices(5, 32)?;
    std::fs::write(
        "/etc/mdext.conf",
        "ARRAY ga md=md127 spare-group=g\nARRAY gb md=md126 spare-group=g\n",
    )?;
    ctl("create --level 1 --raid-devices 2 --name ga --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("create --level 1 --raid-devices 2 --spare-devices 1 --name gb --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop2 /dev/loop3 /dev/loop4")?;
    ctl("assemble ga /dev/loop0 /dev/loop1")?;
    let out = ctl("assemble gb /dev/loop2 /dev/loop3 /dev/loop4")?;
    ensure!(
        out.contains("/dev/md126") && out.contains("/dev/loop4 added as a spare"),
        "{out}"
    );
    let (ga, gb) = (sysfs().md("md127"), sysfs().md("md126"));
    let (l0, l2, l4) = (&loops[0].path, &loops[2].path, &loops[4].path);
    let u4 = device_uuid(l4)?;
    write_chunks(&ga, &GROUP_DIRTY, 5)?;
    // Slow the rebuild (4 MB/s, about 8 s) so that its course is seen.
    ga.write("sync_speed_max", "4000")?;
    ctl("fail md127 /dev/loop1")?;
    wait_until(
        "the group spare in ga's slot 1",
        Duration::from_secs(60),
        || (ga.read("dev-loop4/slot").ok()? == "1").then_some(()),
    )?;
    ensure!(
        !Path::new("/sys/block/md126/md/dev-loop4").exists(),
        "the spare is still in gb"
    );
    ensure!(
        !table(l2)?.iter().any(|e| e.0 == u4),
        "gb still records the spare it gave: {:?}",
        table(l2)?
    );
    ensure!(
        ga.read("sync_action")? == "recover",
        "ga not rebuilding: {}",
        ga.read("sync_action")?
    );
    let m1 = &examine(l0)?["members"][1];
    ensure!(
        m1["state"] == "rebuilding" && m1["rebuild_kind"] == "full",
        "ga's slot 1 during the rebuild: {m1}"
    );
    ensure!(
        can_clear_is(&ga, false)?,
        "ga's can_clear during the rebuild"
    );
    wait_until("ga whole again", Duration::from_secs(120), || {
        (ga.degraded().ok()? == 0 && ga.read("sync_action").ok()? == "idle").then_some(())
    })?;
    wait_until("ga's can_clear true", Duration::from_secs(20), || {
        can_clear_is(&ga, true).ok()?.then_some(())
    })?;
    // The device has a new identity in ga, and ga records it in slot 1.
    let t = table(l0)?;
    let new = device_uuid(l4)?;
    ensure!(
        new != u4 && t[1] == (new.clone(), "in-sync".to_string()),
        "ga's table {t:?}, loop4 now {new} (was {u4})"
    );
    ensure!(table(l4)? == t, "loop4's own record differs from loop0's");
    ensure!(
        examine(l4)?["array_uuid"] == examine(l0)?["array_uuid"],
        "loop4 not recorded in ga"
    );
    ensure!(
        gb.degraded()? == 0 && can_clear_is(&gb, true)?,
        "gb disturbed"
    );
    ga.write("sync_speed_max", "system")?;
    verify_chunks(&ga, &GROUP_DIRTY, 5)?;
    ensure!(
        check_mismatches(&ga)? == 0,
        "ga's mismatch_cnt after the group spare's rebuild"
    );
    let log = sh("cat /run/mdext/mdextmon.log").unwrap_or_default();
    for l in log.lines().filter(|l| l.contains("spare")) {
        println!("{l}");
    }
    ctl("stop md127")?;
    ctl("stop md126")?;
    Ok(())
}

pub static REPLACE: Scenario = Scenario {
    name: "replace_copies_a_member_never_degraded",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: replace,
        ends: Ends::Ok,
    }],
};

/// `mdextctl replace md127 OLD NEW` on a whole raid1: md copies OLD onto
/// NEW (`want_replacement`), then fails OLD; `degraded` reads 0 in every
/// sample from before the request to the end, and the record names NEW in
/// OLD's slot on every member.
fn replace() -> Result<()> {
    needs_external_bitmap("can_clear through a replacement")?;
    let loops = loop_devices(3, 64)?;
    let (l0, l1, l2) = (&loops[0].path, &loops[1].path, &loops[2].path);
    ctl("create --level 1 --raid-devices 2 --name rp --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    sh("mkdir -p /run/mdext && (setsid mdextmon --log-level debug >/run/mdext/mdextmon.log 2>&1 &)")?;
    wait_until("mdextmon to answer", Duration::from_secs(10), pong)?;
    ctl("assemble rp /dev/loop0 /dev/loop1")?;
    let md = md();
    wait_until("can_clear true", Duration::from_secs(10), || {
        can_clear_is(&md, true).ok()?.then_some(())
    })?;
    let (u0, u1) = (device_uuid(l0)?, device_uuid(l1)?);
    write_chunks(&md, &DIRTY, 11)?;
    // Slow the copy (8 MB/s, about 8 s) so that its course is seen.
    md.write("sync_speed_max", "8000")?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let md = md.clone();
        std::thread::spawn(move || {
            let mut v: Vec<(u32, String, Option<bool>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let d = md.degraded().unwrap_or(99);
                let a = md.read("sync_action").unwrap_or_else(|e| e.to_string());
                let c = md.can_clear().unwrap_or(None);
                v.push((d, a, c));
                std::thread::sleep(Duration::from_millis(10));
            }
            v
        })
    };
    let w0 = written_sectors("loop2")?;
    let t0 = Instant::now();
    let out = ctl("replace md127 /dev/loop1 /dev/loop2")?;
    ensure!(
        out.contains("replacing /dev/loop1 with /dev/loop2"),
        "{out}"
    );
    wait_until("the copy onto loop2", Duration::from_secs(30), || {
        md.read("dev-loop2/state")
            .ok()?
            .contains("replacement")
            .then_some(())
    })?;
    ensure!(
        md.read("dev-loop1/state")?.contains("want_replacement"),
        "loop1: {}",
        md.read("dev-loop1/state")?
    );
    wait_until(
        "loop2 in slot 1 and loop1 gone",
        Duration::from_secs(300),
        || {
            let done = !Path::new("/sys/block/md127/md/dev-loop1").exists()
                && md.read("dev-loop2/slot").ok()? == "1"
                && md.read("dev-loop2/state").ok()?.contains("in_sync")
                && md.read("sync_action").ok()? == "idle";
            done.then_some(())
        },
    )?;
    let secs = t0.elapsed().as_secs_f64();
    wait_until(
        "the record naming loop2 in slot 1",
        Duration::from_secs(10),
        || {
            (examine(l0).ok()?["members"][1]["uuid"] == device_uuid(l2).ok()?.as_str())
                .then_some(())
        },
    )?;
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    md.write("sync_speed_max", "system")?;
    let degraded: Vec<_> = samples.iter().filter(|(d, _, _)| *d != 0).collect();
    let copying = samples.iter().filter(|(_, a, _)| a == "recover").count();
    let cc_false = samples.iter().filter(|(_, _, c)| *c != Some(true)).count();
    let written = written_sectors("loop2")? - w0;
    let component = examine(l0)?["component_size_sectors"]
        .as_u64()
        .context("component_size_sectors")?;
    println!(
        "replace: {secs:.1} s, {written} sectors written to the new member (component {component}); {} samples of degraded, {} while md copied, {} not 0; can_clear not true in {cc_false}",
        samples.len(),
        copying,
        degraded.len()
    );
    ensure!(
        degraded.is_empty(),
        "degraded during the replacement: {:?}",
        &degraded[..degraded.len().min(5)]
    );
    ensure!(copying > 0, "no sample while md copied");
    if cc_false > 0 {
        if let Some(i) = samples.iter().position(|(_, _, c)| *c != Some(true)) {
            println!(
                "around: {:?}",
                &samples[i.saturating_sub(2)..(i + 3).min(samples.len())]
            );
        }
        print!(
            "{}",
            sh("grep -v 'recorded events' /run/mdext/mdextmon.log").unwrap_or_default()
        );
    }
    ensure!(
        cc_false == 0,
        "can_clear not true in {cc_false} samples: the array never lost a slot"
    );
    ensure!(
        written >= component,
        "the new member got {written} sectors, less than {component}"
    );
    let u2 = device_uuid(l2)?;
    for l in [l0, l2] {
        let t = table(l)?;
        ensure!(
            t == vec![
                (u0.clone(), "in-sync".to_string()),
                (u2.clone(), "in-sync".to_string()),
                (u1.clone(), "failed".to_string()),
            ],
            "{}: table {t:?}",
            l.display()
        );
        let e = examine(l)?;
        ensure!(
            e["bitmap"]["events_cleared"] == e["events"],
            "{}: not recorded whole",
            l.display()
        );
    }
    ensure!(slot_of(l2)? == 1, "loop2's role: {}", slot_of(l2)?);
    ensure!(can_clear_is(&md, true)?, "can_clear after the replacement");
    verify_chunks(&md, &DIRTY, 11)?;
    ensure!(
        check_mismatches(&md)? == 0,
        "mismatch_cnt after the replacement"
    );
    ctl("stop md127")?;
    Ok(())
}

pub static GROW: Scenario = Scenario {
    name: "grow_size_and_raid1_mirrors",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: grow,
        ends: Ends::Ok,
    }],
};

const GROW_DIRTY: [u64; 4] = [2, 7, 100, 400];

fn record_component(dev: &Path) -> Result<u64> {
    examine(dev)?["component_size_sectors"]
        .as_u64()
        .context("component_size_sectors")
}

/// `grow --size` down and back up to max (md resyncs what the array
/// gains, the record follows), `grow --raid-devices 3` taking the spare as
/// a third mirror (full rebuild), then back to 2 after failing it; a raid5
/// is refused with one line.
fn grow() -> Result<()> {
    needs_external_bitmap("can_clear through grow")?;
    let loops = loop_devices(6, 64)?;
    let (l0, l2) = (&loops[0].path, &loops[2].path);
    ctl("create --level 1 --raid-devices 2 --spare-devices 1 --name gr --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1 /dev/loop2")?;
    ctl("assemble gr /dev/loop0 /dev/loop1 /dev/loop2")?;
    let md = md();
    let full = record_component(l0)?;
    ctl("grow md127 --size 32M")?;
    ensure!(
        md.component_size()?.0 == 32768,
        "md component {}",
        md.component_size()?.0
    );
    ensure!(
        record_component(l0)? == 65536,
        "recorded {}",
        record_component(l0)?
    );
    write_chunks(&md, &GROW_DIRTY, 21)?;
    ctl("grow md127 --size max")?;
    ensure!(
        md.component_size()?.0 * 2 == full,
        "md component {} after max",
        md.component_size()?.0
    );
    let e = examine(l0)?;
    ensure!(
        e["component_size_sectors"] == full,
        "recorded {} after max",
        e["component_size_sectors"]
    );
    println!(
        "grow --size max: the record's resync sector right after: {}",
        e["resync_sector"]
    );
    wait_sync_idle(&md, Duration::from_secs(120))?;
    wait_until(
        "the record's resync to end",
        Duration::from_secs(20),
        || examine(l0).ok()?["resync_sector"].is_null().then_some(()),
    )?;
    let (ok, _, err) = ctl_status("grow md127 --size 200M")?;
    ensure!(
        !ok && err.lines().count() == 1 && err.contains("holds only"),
        "{err}"
    );
    // A third mirror from the spare.
    ctl("grow md127 --raid-devices 3")?;
    wait_until("three mirrors, whole", Duration::from_secs(180), || {
        let whole = md.read("raid_disks").ok()? == "3"
            && md.degraded().ok()? == 0
            && md.read("sync_action").ok()? == "idle"
            && md.read("dev-loop2/slot").ok()? == "2";
        whole.then_some(())
    })?;
    wait_until(
        "can_clear true with three mirrors",
        Duration::from_secs(20),
        || can_clear_is(&md, true).ok()?.then_some(()),
    )?;
    let t = table(l0)?;
    ensure!(
        t.len() >= 3
            && t[..3].iter().all(|e| e.1 == "in-sync")
            && t[3..].iter().all(|e| e.1 == "empty")
            && t[2].0 == device_uuid(l2)?,
        "table after --raid-devices 3: {t:?}"
    );
    ensure!(examine(l2)?["raid_disks"] == 3, "loop2's record");
    // Back to two: fail the third leg, then drop its slot.
    fail_and_remove(&md, "/dev/loop2")?;
    ctl("grow md127 --raid-devices 2")?;
    wait_until("two mirrors, whole", Duration::from_secs(30), || {
        (md.read("raid_disks").ok()? == "2" && md.degraded().ok()? == 0).then_some(())
    })?;
    wait_until(
        "can_clear true with two mirrors",
        Duration::from_secs(20),
        || can_clear_is(&md, true).ok()?.then_some(()),
    )?;
    let t = table(l0)?;
    ensure!(
        t.len() >= 2
            && t[..2].iter().all(|e| e.1 == "in-sync")
            && t[2..].iter().all(|e| e.1 != "in-sync" && e.1 != "spare"),
        "table after --raid-devices 2: {t:?}"
    );
    verify_chunks(&md, &GROW_DIRTY, 21)?;
    ensure!(check_mismatches(&md)? == 0, "mismatch_cnt after grow");
    ctl("stop md127")?;
    // Parity levels: refused, one line, nothing changed.
    ctl("create --level 5 --raid-devices 3 --name g5 --bitmap-chunk 64K --assume-clean /dev/loop3 /dev/loop4 /dev/loop5")?;
    ctl("assemble g5 /dev/loop3 /dev/loop4 /dev/loop5")?;
    let (ok, _, err) = ctl_status("grow md127 --raid-devices 4")?;
    ensure!(
        !ok && err.lines().count() == 1 && err.contains("reshaping raid5 is not supported"),
        "{err}"
    );
    let (ok, _, err) = ctl_status("grow md127 --size 16M")?;
    ensure!(
        !ok && err.lines().count() == 1 && err.contains("raid1 only"),
        "{err}"
    );
    println!("refused: {}", err.trim());
    ensure!(md.read("raid_disks")? == "3", "raid5 changed");
    ctl("stop md127")?;
    Ok(())
}
