//! Issue 9, items 6 and 7: events and the event PROGRAM, mdext.conf's md
//! device, `mdextctl wait [--clean]` and `mdextctl metrics`.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::time::Duration;

pub static EVENTS_WAIT_METRICS: Scenario = Scenario {
    name: "events_program_wait_and_metrics",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: events_wait_metrics,
        ends: Ends::Ok,
    }],
};

const CHUNK_LEN: usize = 64 << 10;
const EVENTS: &str = "/tmp/events.log";

/// The lines the event program wrote (`EVENT MD-DEVICE [MEMBER]|env`).
fn event_lines() -> Vec<String> {
    std::fs::read_to_string(EVENTS)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn count(lines: &[String], head: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(head)).count()
}

/// Wait until the program has written a line starting with `head`.
fn wait_event(head: &str) -> Result<()> {
    wait_until(
        &format!("event program line '{head}'"),
        Duration::from_secs(30),
        || {
            event_lines()
                .iter()
                .any(|l| l.starts_with(head))
                .then_some(())
        },
    )
    .with_context(|| format!("events so far: {:?}", event_lines()))
}

fn position(lines: &[String], head: &str) -> Option<usize> {
    lines.iter().position(|l| l.starts_with(head))
}

/// `name{labels} value` of a metrics text: the value of the first sample
/// of `name` whose labels contain `label`. Every non-comment line must be
/// a well-formed sample.
fn metric(text: &str, name: &str, label: &str) -> Result<Option<u64>> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, val) = l.rsplit_once(' ').context(format!("sample line: {l}"))?;
        let v: u64 = val.parse().context(format!("value in: {l}"))?;
        let (n, labels) = head.split_once('{').unwrap_or((head, ""));
        if n == name && labels.contains(label) && found.is_none() {
            found = Some(v);
        }
    }
    Ok(found)
}

fn record_state(dev: &Path) -> Result<(String, u64)> {
    let e = examine(dev)?;
    Ok((
        e["state"].as_str().unwrap_or("?").to_string(),
        e["events"].as_u64().context("events")?,
    ))
}

fn events_wait_metrics() -> Result<()> {
    let loops = loop_devices(2, 64)?;
    std::fs::write(
        "/tmp/ev.sh",
        format!(
            "#!/bin/sh\necho \"$1 $2 $3|$MDEXT_EVENT $MDEXT_MD_DEVICE $MDEXT_MEMBER $MDEXT_ARRAY_NAME\" >> {EVENTS}\n"
        ),
    )?;
    sh("chmod 755 /tmp/ev.sh")?;
    std::fs::write(
        "/etc/mdext.conf",
        "# events test\nARRAY ev md=md125\nPROGRAM /tmp/ev.sh\n",
    )?;
    ctl("create --level 1 --raid-devices 2 --name ev --bitmap-chunk 64K --time-base 1 --assume-clean /dev/loop0 /dev/loop1")?;
    // The configuration names the md device.
    let out = ctl("assemble ev /dev/loop0 /dev/loop1")?;
    ensure!(out.contains("/dev/md125"), "not assembled as md125: {out}");
    let md = sysfs().md("md125");
    wait_until("can_clear true", Duration::from_secs(10), || {
        can_clear_is(&md, true).ok()?.then_some(())
    })?;
    // The can_clear events belong to the external bitmap mode (in the
    // kernel-managed mode md clears bits itself; mdext never holds them).
    let external = !kernel_mode(&md);

    // Nothing running: plain wait exits 1 (mdadm --wait), --clean 0.
    let (code, _, _) = ctl_exit("wait md125")?;
    ensure!(code == Some(1), "wait with nothing running exited {code:?}");
    let (code, _, _) = ctl_exit("wait --clean ev")?;
    ensure!(
        code == Some(0),
        "wait --clean on a clean array exited {code:?}"
    );

    // A write (md active for 3 s after it; a whole mirror's record stays
    // clean, md's own bitmap mode marks it dirty), then clean: wait --clean
    // returns once md is clean and every record says so, with the record
    // examine sees.
    md.write("safe_mode_delay", "3")?;
    write_direct(&md.dev_path(), 0, &pattern(1, CHUNK_LEN))?;
    let (code, out, _) = ctl_exit("wait --clean md125")?;
    ensure!(code == Some(0), "wait --clean exited {code:?}");
    for l in &loops {
        let (st, ev) = record_state(&l.path)?;
        ensure!(
            st == "clean",
            "{} not clean after wait --clean",
            l.path.display()
        );
        ensure!(
            out.contains(&format!("{} (events {ev})", l.path.display())),
            "wait --clean reported another record than examine's (events {ev}): {out}"
        );
    }
    md.write("safe_mode_delay", "0.2")?;

    // A member fails: Fail and DegradedArray, for this array and member.
    ctl("fail md125 /dev/loop1")?;
    wait_event("Fail /dev/md125 /dev/loop1|Fail /dev/md125 /dev/loop1 ev")?;
    wait_event("DegradedArray /dev/md125 |DegradedArray /dev/md125  ev")?;
    if external {
        wait_event("CanClearHeld /dev/md125")?;
    }
    wait_until(
        "the failed member detached",
        Duration::from_secs(10),
        || (!Path::new("/sys/block/md125/md/dev-loop1").exists()).then_some(()),
    )?;

    // Degraded writes: metrics show the dirty chunks kept.
    let dirty: Vec<u64> = (0..100u64).map(|i| i * 2 + 3).collect();
    for &c in &dirty {
        write_direct(&md.dev_path(), c * CHUNK_LEN as u64, &pattern(c, CHUNK_LEN))?;
    }
    // The record only moves forward: the metrics, read after examine, show
    // at least its event count.
    let before = examine(&loops[0].path)?["events"].as_u64();
    let text = ctl("metrics")?;
    let m = |n: &str, l: &str| metric(&text, n, l);
    ensure!(
        m("mdext_array_bitmap_dirty_chunks", "md=\"md125\"")? == Some(100),
        "dirty chunks in metrics:\n{text}"
    );
    ensure!(
        m("mdext_array_degraded", "md=\"md125\"")? == Some(1),
        "{text}"
    );
    if external {
        ensure!(
            m("mdext_array_can_clear", "md=\"md125\"")? == Some(0),
            "{text}"
        );
        ensure!(
            m("mdext_array_protocol_state", "state=\"held\"")? == Some(1),
            "{text}"
        );
    }
    ensure!(
        m("mdext_array_members", "state=\"failed\"")? == Some(1),
        "{text}"
    );
    ensure!(
        m("mdext_array_managed", "md=\"md125\"")? == Some(1),
        "{text}"
    );
    ensure!(
        m("mdext_array_events", "md=\"md125\"")? >= before,
        "events {before:?} in examine, later metrics:\n{text}"
    );
    std::fs::create_dir_all("/tmp/prom")?;
    ctl("metrics --output /tmp/prom/mdext.prom")?;
    let file = std::fs::read_to_string("/tmp/prom/mdext.prom")?;
    ensure!(
        metric(&file, "mdext_array_bitmap_dirty_chunks", "md=\"md125\"")? == Some(100),
        "{file}"
    );
    ensure!(
        std::fs::read_dir("/tmp/prom")?.count() == 1,
        "temporary file left behind"
    );

    // The bound of wait --clean: with md active and no mdextmon, the
    // array cannot become clean, and wait says so at once.
    md.write("safe_mode_delay", "600")?;
    write_direct(&md.dev_path(), 3 * CHUNK_LEN as u64, &pattern(3, CHUNK_LEN))?;
    ensure!(
        md.read("array_state")? == "active",
        "md not active after a write with safe_mode_delay 600"
    );
    sh("kill -KILL $(cat /run/mdext/mdextmon.pid)")?;
    wait_until("mdextmon gone", Duration::from_secs(10), || {
        sh("kill -0 $(cat /run/mdext/mdextmon.pid) 2>/dev/null")
            .is_err()
            .then_some(())
    })?;
    let (code, _, err) = ctl_exit("wait --clean --scan")?;
    ensure!(
        code == Some(2) && err.contains("mdextmon does not answer"),
        "wait --clean without a daemon: {code:?} {err}"
    );
    // A new daemon takes the array over (and reports the state it finds).
    sh("/bin/mdextmon </dev/null >/dev/null 2>>/run/mdext/mdextmon.log &")?;
    wait_until("the new mdextmon", Duration::from_secs(20), || {
        ctl_status("status")
            .ok()?
            .1
            .contains("by mdextmon (pid")
            .then_some(())
    })?;
    md.write("safe_mode_delay", "0.2")?;
    let (code, _, _) = ctl_exit("wait --clean --scan")?;
    ensure!(code == Some(0), "wait --clean after the takeover: {code:?}");
    ensure!(record_state(&loops[0].path)?.0 == "clean", "not clean");

    // Re-add with the rebuild held at its first sector (md's sync_max,
    // which md resets to "max" when the rebuild completes), so that wait
    // meets it running whatever the host's speed; released once wait has
    // printed its first line.
    md.write("sync_max", "0")?;
    ctl("add md125 /dev/loop1")?;
    // The subshell's own output goes away too: sh() reads its pipes to
    // their end.
    sh("(/bin/mdextctl wait md125 >/tmp/wait.out 2>&1; echo $? >/tmp/wait.rc) </dev/null >/dev/null 2>&1 &")?;
    wait_until(
        "wait's first progress line",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string("/tmp/wait.out")
                .ok()
                .filter(|o| o.contains("md125: recover"))
        },
    )?;
    md.write("sync_max", "max")?;
    let code = wait_until("wait to exit", Duration::from_secs(300), || {
        std::fs::read_to_string("/tmp/wait.rc")
            .ok()
            .and_then(|c| c.trim().parse::<i32>().ok())
    })?;
    let out = std::fs::read_to_string("/tmp/wait.out")?;
    ensure!(code == 0, "wait during a rebuild exited {code}: {out}");
    ensure!(out.contains("md125: recover"), "no progress lines: {out}");
    ensure!(out.contains("finished after"), "{out}");
    // Independent witnesses: md says in sync.
    let mdstat = sh("cat /proc/mdstat")?;
    ensure!(
        mdstat.contains("[UU]") && !mdstat.contains("recovery"),
        "mdstat after wait: {mdstat}"
    );
    ensure!(md.degraded()? == 0, "degraded after wait");
    let detail = sh("mdadm --detail /dev/md125")?;
    ensure!(
        detail.contains("Active Devices : 2") && !detail.contains("Rebuild Status"),
        "mdadm --detail after wait: {detail}"
    );
    wait_event("RebuildStarted /dev/md125 /dev/loop1|")?;
    wait_event("RebuildFinished /dev/md125 /dev/loop1|")?;
    if external {
        wait_event("CanClearReleased /dev/md125")?;
    }
    for &c in &dirty {
        let got = read_direct(&md.dev_path(), c * CHUNK_LEN as u64, CHUNK_LEN)?;
        ensure!(got == pattern(c, CHUNK_LEN), "chunk {c} reads back wrong");
    }

    // Each transition once: the daemon wakes many times in between.
    let lines = event_lines();
    println!("events:\n{}", lines.join("\n"));
    ensure!(
        count(&lines, "Fail ") == 1,
        "Fail reported {} times",
        count(&lines, "Fail ")
    );
    // Once at the failure, once by the new daemon's first look.
    ensure!(
        count(&lines, "DegradedArray ") == 2,
        "DegradedArray reported {} times",
        count(&lines, "DegradedArray ")
    );
    ensure!(
        count(&lines, "RebuildStarted ") == 1,
        "RebuildStarted count"
    );
    ensure!(
        count(&lines, "RebuildFinished ") == 1,
        "RebuildFinished count"
    );
    ensure!(
        count(&lines, "CanClearReleased ") == usize::from(external),
        "CanClearReleased count"
    );
    ensure!(
        position(&lines, "Fail ") < position(&lines, "DegradedArray ")
            && position(&lines, "Fail ") < position(&lines, "RebuildStarted ")
            && position(&lines, "RebuildStarted ") < position(&lines, "RebuildFinished "),
        "events out of order"
    );
    // Without journald, events go to the daemon's stderr with their level.
    let log = std::fs::read_to_string("/run/mdext/mdextmon.log")?;
    ensure!(
        log.contains("mdextmon: critical: Fail: md125 (ev): /dev/loop1"),
        "daemon log: {log}"
    );

    ctl("stop md125")?;
    let (code, out, _) = ctl_exit("wait --clean --scan")?;
    ensure!(code == Some(0) && out.contains("no mdext arrays"), "{out}");
    Ok(())
}
