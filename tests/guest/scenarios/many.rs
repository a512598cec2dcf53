//! Issue 12, item 4: one mdextmon serves 64 arrays. Writers run on every
//! array; each write after the array went clean is a write-pending round
//! trip through the daemon. Meanwhile one array's member is failed,
//! removed and re-added (rebuilt from the bitmap), and another array is
//! asked to stop while its writer holds it open (refused at once, and
//! nothing of the stop stays behind). Printed: the worst
//! first-write-after-clean time per array, the daemon's threads, RSS and
//! locked memory. Asserted: states and counts only (never a time): the
//! daemon's threads do not grow with the arrays.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{ensure, Context, Result};
use mdext::device::{Access, Device};
use mdext::sysfs::MdDev;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub static SIXTY_FOUR: Scenario = Scenario {
    name: "sixty_four_arrays_one_daemon_stop_and_readd_delay_no_one",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: sixty_four,
        ends: Ends::Ok,
    }],
};

const ARRAYS: usize = 64;
const MEMBER_MIB: u64 = 16;
/// The array whose member is failed and re-added.
const READD: usize = 0;
/// The array stopped while its writer runs.
const STOPPED: usize = ARRAYS - 1;

/// What one array's writer saw.
#[derive(Default)]
struct Seen {
    /// Writes issued while the array read `clean` (each a write-pending
    /// round trip through the daemon): their times, and when each ended.
    first_writes: Vec<(Duration, Instant)>,
    writes: u64,
}

fn writer(md: &MdDev, seed: u64, stop: &AtomicBool, seen: &Mutex<Seen>) -> Result<()> {
    let dev = Device::open(&md.dev_path(), Access::SharedWrite)?;
    let blocks = (MEMBER_MIB - 4) * 256;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let block = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n.wrapping_mul(7919)) % blocks;
        let data = pattern(seed ^ n, 4096);
        let clean = md.read("array_state").is_ok_and(|s| s == "clean");
        let t = Instant::now();
        dev.write_at(block * 4096, &data)?;
        let took = t.elapsed();
        let mut s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        s.writes += 1;
        if clean {
            s.first_writes.push((took, Instant::now()));
        }
        drop(s);
        // Long enough for md's safe mode (200 ms) to let the array go
        // idle and the daemon to record it clean: the next write is a
        // first write again. Pacing only; nothing is judged by it.
        std::thread::sleep(Duration::from_millis(350));
    }
    Ok(())
}

/// Create and assemble raid1 `name` on `a` and `b` (64 KiB bitmap
/// chunks, time base 1 s); its md device.
fn raid1(name: &str, a: &std::path::Path, b: &std::path::Path) -> Result<MdDev> {
    ctl(&format!(
        "create --level 1 --raid-devices 2 --name {name} --bitmap-chunk 64K --time-base 1 --assume-clean {} {}",
        a.display(),
        b.display()
    ))?;
    let out = ctl(&format!("assemble {name} {} {}", a.display(), b.display()))?;
    let md = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("/dev/"))
        .context("assemble names the md device")?;
    Ok(sysfs().md(md))
}

fn daemon_figures() -> Result<(u64, u64, u64)> {
    let pid = std::fs::read_to_string("/run/mdext/mdextmon.pid")?;
    let st = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
    let field = |k: &str| -> u64 {
        st.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("Threads:"), field("VmRSS:"), field("VmLck:")))
}

fn sixty_four() -> Result<()> {
    let t0 = Instant::now();
    let loops = loop_devices(2 * ARRAYS, MEMBER_MIB)?;
    let mut mds = Vec::new();
    let mut members = Vec::new();
    for i in 0..ARRAYS {
        let (a, b) = (loops[2 * i].path.clone(), loops[2 * i + 1].path.clone());
        mds.push(raid1(&format!("m{i}"), &a, &b)?);
        members.push((a, b));
    }
    println!(
        "MANY: {ARRAYS} arrays created and assembled in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let answer = pong().context("mdextmon answers")?;
    ensure!(
        answer.arrays.len() == ARRAYS,
        "one daemon manages {} arrays, not {ARRAYS}",
        answer.arrays.len()
    );
    let (threads0, _, _) = daemon_figures()?;

    let stop_all = Arc::new(AtomicBool::new(false));
    let stop_one = Arc::new(AtomicBool::new(false));
    let mut seen = Vec::new();
    let mut handles = Vec::new();
    for (i, md) in mds.iter().enumerate() {
        let s = Arc::new(Mutex::new(Seen::default()));
        seen.push(s.clone());
        let stop = if i == STOPPED {
            stop_one.clone()
        } else {
            stop_all.clone()
        };
        let md = md.clone();
        handles.push(std::thread::spawn(move || {
            writer(&md, i as u64 + 1, &stop, &s)
        }));
    }
    let firsts = |i: usize| seen[i].lock().map(|s| s.first_writes.len()).unwrap_or(0);
    // Every array has answered a first write.
    wait_until(
        "a first write after clean on every array",
        Duration::from_secs(300),
        || (0..ARRAYS).all(|i| firsts(i) > 0).then_some(()),
    )?;

    // Fail, remove and re-add a member of one array under the writers.
    let md0 = &mds[READD];
    let (_, b0) = &members[READD];
    let name0 = md0.name().to_string();
    // The first array assembled is md127 (fail_and_remove's array).
    ensure!(name0 == "md127", "the first array is {name0}, not md127");
    fail_and_remove(md0, &b0.display().to_string())?;
    let k = b0
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let before = written_sectors(&k)?;
    ctl(&format!("add {name0} {}", b0.display()))?;
    wait_whole(md0)?;
    let rebuilt = written_sectors(&k)? - before;
    println!("MANY: {name0}: re-added under 64 writers, {rebuilt} sectors written to the returning member");
    ensure!(
        rebuilt < (MEMBER_MIB << 11) / 2,
        "{name0}: the re-add rewrote {rebuilt} sectors (a full rebuild, not the bitmap's)"
    );

    // Stop an array its writer holds open: md refuses to stop it, and the
    // daemon says so at once. Before, the refused stop stayed behind in
    // the daemon, which stopped the array later, once its writer had
    // closed it, after answering that it had failed.
    let mdx = mds[STOPPED].name().to_string();
    let asked = Instant::now();
    let (ok, _, err) = ctl_status(&format!("stop {mdx}"))?;
    let answered = asked.elapsed();
    println!(
        "MANY: stop {mdx} under its writer: answered after {:.2} s: {}",
        answered.as_secs_f64(),
        err.trim()
    );
    ensure!(
        !ok && (err.contains("in use") || err.contains("writes still in flight")),
        "stop {mdx} while open: {err}"
    );
    // Still served: a first write after clean completes after the refusal.
    let before = firsts(STOPPED);
    wait_until(
        "a first write after clean on the array whose stop was refused",
        Duration::from_secs(120),
        || (firsts(STOPPED) > before).then_some(()),
    )?;
    stop_one.store(true, Ordering::SeqCst);
    // Once the writer is gone and the array is recorded clean, it runs on
    // (the daemon answers a ping only after the batch that recorded it).
    let (xa, xb) = &members[STOPPED];
    wait_until(
        "the refused array recorded clean",
        Duration::from_secs(120),
        || recorded_clean(&mds[STOPPED], xa, xb),
    )?;
    pong().context("mdextmon answers")?;
    let st = mds[STOPPED].read("array_state").unwrap_or_default();
    ensure!(
        st == "clean",
        "{mdx}: array_state {st:?} after a refused stop (stopped by itself later?)"
    );
    ctl(&format!("stop {mdx}"))?;
    ensure!(
        mds[STOPPED]
            .read("array_state")
            .map_or(true, |s| s == "clear" || s == "inactive"),
        "{mdx} still runs after stop"
    );

    stop_all.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    let (threads, rss, lck) = daemon_figures()?;
    // Per array: the worst first write after clean.
    let mut worst: Vec<(Duration, usize)> = (0..ARRAYS)
        .map(|i| {
            let s = seen[i].lock().map(|s| {
                s.first_writes
                    .iter()
                    .map(|(d, _)| *d)
                    .max()
                    .unwrap_or_default()
            });
            (s.unwrap_or_default(), i)
        })
        .collect();
    worst.sort();
    let total: usize = (0..ARRAYS).map(firsts).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "MANY: {total} first writes after clean; worst per array: min {:.1} ms, median {:.1} ms, max {:.1} ms (array m{})",
        ms(worst[0].0),
        ms(worst[ARRAYS / 2].0),
        ms(worst[ARRAYS - 1].0),
        worst[ARRAYS - 1].1
    );
    println!(
        "MANY: mdextmon threads {threads} (at start {threads0}), VmRSS {rss} KiB, VmLck {lck} KiB"
    );
    ensure!(
        threads <= 2 + mdext::writers::MAX_WRITERS as u64,
        "mdextmon runs {threads} threads for {ARRAYS} arrays"
    );
    // The re-added array holds the same data on both legs.
    ensure!(
        check_mismatches(md0)? == 0,
        "{name0}: mismatch_cnt after the re-add"
    );
    Ok(())
}

pub static SLOW_MEMBER: Scenario = Scenario {
    name: "slow_member_holds_only_its_own_array",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: slow_member,
        ends: Ends::Ok,
    }],
};

fn dmsetup(args: &str) -> Result<String> {
    sh(&format!("DM_DISABLE_UDEV=1 dmsetup --noudevsync {args}"))
}

/// Both members' records and md say `clean`.
fn recorded_clean(md: &MdDev, a: &std::path::Path, b: &std::path::Path) -> Option<()> {
    let clean = |p: &std::path::Path| examine(p).is_ok_and(|e| e["state"] == "clean");
    (clean(a) && clean(b) && md.read("array_state").ok()? == "clean").then_some(())
}

/// Wait until each array (and both its members' records) reads clean.
fn wait_all_clean(arrays: &[(&MdDev, &PathBuf, &PathBuf)], when: &str) -> Result<()> {
    for (md, a, b) in arrays {
        wait_until(
            &format!("{} recorded clean{when}", md.name()),
            Duration::from_secs(120),
            || recorded_clean(md, a, b),
        )?;
    }
    Ok(())
}

/// Issue 12, item 4: a member that does not answer (a dying disk; here a
/// dm device suspended under it) holds its own array's write, and no
/// other array's. Array S (raid5: its record marks it dirty before md's
/// first write goes on; a whole mirror's writes cost no record) has its
/// member `sb` suspended; a write to S makes the daemon record S dirty,
/// and the record write to `sb` hangs. A first
/// write after clean on array F must then complete while `sb` is still
/// suspended (before, the daemon's loop waited for S's record in the
/// writer's answer, and F's write-pending was answered only after `sb`
/// came back). Asserted: ordering and states only.
fn slow_member() -> Result<()> {
    ensure!(
        std::path::Path::new("/bin/dmsetup").exists(),
        "dmsetup is not in the guest"
    );
    let loops = loop_devices(5, MEMBER_MIB)?;
    let sectors = MEMBER_MIB << 11;
    for (name, l) in [("sa", &loops[0]), ("sb", &loops[1])] {
        dmsetup(&format!(
            "create {name} --table '0 {sectors} linear {} 0'",
            l.path.display()
        ))?;
    }
    let (sa, sb) = (
        PathBuf::from("/dev/mapper/sa"),
        PathBuf::from("/dev/mapper/sb"),
    );
    let (sc, fa, fb) = (
        loops[2].path.clone(),
        loops[3].path.clone(),
        loops[4].path.clone(),
    );
    let devs = format!("{} {} {}", sa.display(), sb.display(), sc.display());
    ctl(&format!(
        "create --level 5 --raid-devices 3 --name s --bitmap-chunk 64K --time-base 1 --assume-clean {devs}"
    ))?;
    let out = ctl(&format!("assemble s {devs}"))?;
    let s = sysfs().md(out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("/dev/"))
        .context("assemble names the md device")?);
    let f = raid1("f", &fa, &fb)?;
    let arrays = [(&s, &sa, &sb), (&f, &fa, &fb)];
    wait_all_clean(&arrays, "")?;

    // S's second member stops answering.
    dmsetup("suspend sb")?;
    let s_data = pattern(0x51, 4096);
    let s_done = Arc::new(AtomicBool::new(false));
    let s_writer = {
        let (s, data, done) = (s.clone(), s_data.clone(), s_done.clone());
        std::thread::spawn(move || -> Result<()> {
            let dev = Device::open(&s.dev_path(), Access::SharedWrite)?;
            dev.write_at(1 << 20, &data)?;
            dev.sync()?;
            done.store(true, Ordering::SeqCst);
            Ok(())
        })
    };
    // The daemon has taken S's write: its dirty record reached `sa`
    // (the copy for `sb` hangs in the writer pool).
    wait_until(
        "S's dirty record on its answering member",
        Duration::from_secs(120),
        || {
            examine(&sa)
                .is_ok_and(|e| e["state"] == "dirty")
                .then_some(())
        },
    )?;

    // A first write after clean on F.
    let f_data = pattern(0xf1, 4096);
    let f_done = Arc::new(AtomicBool::new(false));
    let f_writer = {
        let (f, data, done) = (f.clone(), f_data.clone(), f_done.clone());
        std::thread::spawn(move || -> Result<Duration> {
            let dev = Device::open(&f.dev_path(), Access::SharedWrite)?;
            let t = Instant::now();
            dev.write_at(1 << 20, &data)?;
            dev.sync()?;
            let took = t.elapsed();
            done.store(true, Ordering::SeqCst);
            Ok(took)
        })
    };
    let outcome = wait_until(
        "F's first write while S's member hangs",
        Duration::from_secs(120),
        || f_done.load(Ordering::SeqCst).then_some(()),
    );
    // Whatever happened, S's member comes back (a failed run must not
    // leave the guest hung).
    let s_held = !s_done.load(Ordering::SeqCst);
    let pinged = pong().is_some();
    dmsetup("resume sb")?;
    outcome?;
    let took = f_writer
        .join()
        .map_err(|_| anyhow::anyhow!("F's writer panicked"))??;
    println!(
        "SLOW: F's first write after clean took {:.1} ms while S's member was suspended",
        took.as_secs_f64() * 1000.0
    );
    ensure!(
        s_held,
        "S's write ended before its member came back: the test did not hold it"
    );
    ensure!(
        pinged,
        "mdextmon did not answer a ping while S's member hung"
    );
    s_writer
        .join()
        .map_err(|_| anyhow::anyhow!("S's writer panicked"))??;
    // Both recorded clean again once idle; the data is there on both legs.
    wait_all_clean(&arrays, " after the writes")?;
    for (md, data) in [(&s, &s_data), (&f, &f_data)] {
        let got = read_direct(&md.dev_path(), 1 << 20, 4096)?;
        ensure!(&got == data, "{}: the write did not read back", md.name());
        ensure!(
            check_mismatches(md)? == 0,
            "{}: mismatch_cnt after the writes",
            md.name()
        );
    }
    for md in [&s, &f] {
        ctl(&format!("stop {}", md.name()))?;
    }
    let _ = dmsetup("remove_all");
    Ok(())
}
