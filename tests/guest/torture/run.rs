//! In the guest: one torture run, boot by boot.

use super::plan::{block_of, describe_block, stamp, Corruption, Fault, Run, DISK_MIB};
use super::{Progress, LOG_DISK};
use crate::util::{
    can_clear_is, ctl, ctl_status, devnum, examine, kernel_mode, mode_bits, sh, sysfs, wait_until,
    written_sectors,
};
use anyhow::{bail, ensure, Context, Result};
use mdext::device::{Access, Device};
use mdext::sysfs::MdDev;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const NAME: &str = "tort";
const MD: &str = "md127";
const SPARE: &str = "/dev/vde";
/// Waits are for states; this only bounds a wait that can never end, well
/// inside the host's per-boot guard.
const LONG: Duration = Duration::from_secs(300);

/// What a run that passed measured.
pub struct Outcome {
    /// Blocks read back and compared (whole array once, then the written
    /// blocks through each member).
    pub blocks: u64,
    /// Acknowledged writes.
    pub acked: u64,
    /// The rebuild the fault led to: none, bitmap or full.
    pub rebuild: &'static str,
    /// Written to the rebuilt member / dirty chunks' share (bitmap rebuilds).
    pub ratio: Option<f64>,
}

fn backing(i: usize) -> String {
    format!("/dev/vd{}", (b'a' + i as u8) as char)
}

fn member(i: usize) -> PathBuf {
    PathBuf::from(format!("/dev/mapper/t{i}"))
}

fn members(r: &Run) -> Vec<PathBuf> {
    (0..r.members).map(member).collect()
}

fn md() -> MdDev {
    sysfs().md(MD)
}

fn sectors() -> u64 {
    DISK_MIB << 11
}

pub fn setup_tools() -> Result<()> {
    ensure!(
        Path::new("/bin/dmsetup").exists(),
        "dmsetup is not in the guest"
    );
    std::fs::create_dir_all("/run/mdext")?;
    Ok(())
}

fn dmsetup(args: &str) -> Result<String> {
    sh(&format!("DM_DISABLE_UDEV=1 dmsetup --noudevsync {args}"))
}

fn linear(dev: &str) -> String {
    format!("0 {} linear {dev} 0", sectors())
}

/// Point dm device `t{i}` at a new table (suspend, load, resume).
fn swap(i: usize, table: &str) -> Result<()> {
    dmsetup(&format!("suspend t{i}"))?;
    dmsetup(&format!("load t{i} --table '{table}'"))?;
    dmsetup(&format!("resume t{i}"))?;
    Ok(())
}

/// Everything a run may have left: arrays, daemon, dm devices.
pub fn cleanup() {
    let _ = ctl_status(&format!("stop {MD}"));
    if Path::new("/sys/block/md127").exists() {
        let _ = md().write("array_state", "clear");
    }
    kill_daemon();
    let _ = dmsetup("remove_all");
}

fn daemon_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "mdextmon" && crate::util::alive(pid)).then_some(pid)
    })
}

fn kill_daemon() {
    while let Some(pid) = daemon_pid() {
        let _ = sh(&format!("kill -9 {pid}"));
        let _ = wait_until("mdextmon to die", Duration::from_secs(10), || {
            (!crate::util::alive(pid)).then_some(())
        });
    }
    let _ = std::fs::remove_file("/run/mdext/mdextmon.sock");
    let _ = std::fs::remove_file("/run/mdext/mdextmon.pid");
}

/// Start mdextmon as an admin would after it died: no arguments, it takes
/// over every mdext array.
fn restart_daemon() -> Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/run/mdext/mdextmon.log")?;
    Command::new("/bin/mdextmon")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?;
    wait_until("mdextmon to answer", Duration::from_secs(30), || {
        crate::util::pong().map(|_| ())
    })
}

/// `mdextctl ARGS` with `MDEXT_FAILPOINT` set.
fn ctl_failpoint(args: &str, fp: &str) -> Result<(bool, String)> {
    let o = Command::new("/bin/mdextctl")
        .args(args.split_whitespace())
        .env(mdext::failpoint::ENV, fp)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    print!("$ {}={fp} mdextctl {args}\n{text}", mdext::failpoint::ENV);
    Ok((o.status.success(), text))
}

/// Power cut: record that the run goes on at boot `seg`, then sysrq `b`.
fn crash(p: &mut Progress, seg: u64) -> Result<Outcome> {
    p.seg = seg;
    p.running = false;
    p.save()?;
    planned_cut();
}

fn planned_cut() -> ! {
    println!("TORTURE-CRASHING");
    let _ = std::fs::write("/proc/sysrq-trigger", "b");
    std::thread::sleep(Duration::from_secs(60));
    println!("TORTURE-ERROR still alive after sysrq b");
    std::process::exit(1)
}

/// The power may be cut by a failpoint from now on: the next boot goes on
/// at `seg`.
fn arm(p: &mut Progress, seg: u64) -> Result<()> {
    p.seg = seg;
    p.running = false;
    p.save()
}

// ---- the acknowledgement log ----

const ACK_BASE: u64 = 1 << 20;
const ACK_SLOTS: u64 = 64;

fn ack_record(seed: u64, seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[0..8].copy_from_slice(b"MDXACK01");
    b[8..16].copy_from_slice(&seed.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The last acknowledged write of run `seed` (0: none).
fn acked(seed: u64) -> Result<u64> {
    let d = Device::open(Path::new(LOG_DISK), Access::Read)?;
    let all = d.read_at(ACK_BASE, (ACK_SLOTS * 4096) as usize)?;
    let mut best = 0;
    for s in all.chunks(4096) {
        if &s[0..8] == b"MDXACK01"
            && s[8..16] == seed.to_le_bytes()
            && crc32c::crc32c(&s[..24]).to_le_bytes() == s[24..28]
        {
            best = best.max(u64::from_le_bytes(s[16..24].try_into().unwrap_or([0; 8])));
        }
    }
    Ok(best)
}

// ---- the writer ----

struct Writer {
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
}

fn nblocks() -> Result<u64> {
    let s: u64 = std::fs::read_to_string(format!("/sys/block/{MD}/size"))?
        .trim()
        .parse()?;
    Ok(s / 8)
}

impl Writer {
    /// Write `from..=to` of run `seed`, each acknowledged on the log disk.
    fn start(seed: u64, from: u64, to: u64) -> Result<Writer> {
        let n = nblocks()?;
        let acked = Arc::new(AtomicU64::new(from.saturating_sub(1)));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let dev = Device::open(&md().dev_path(), Access::SharedWrite)?;
        let log = Device::open(Path::new(LOG_DISK), Access::SharedWrite)?;
        let handle = std::thread::spawn(move || -> Result<()> {
            for i in from..=to {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let b = block_of(seed, i, n);
                dev.write_at(b * 4096, &stamp(seed, b, i))?;
                dev.sync()?;
                log.write_at(ACK_BASE + (i % ACK_SLOTS) * 4096, &ack_record(seed, i))?;
                log.sync()?;
                a.store(i, Ordering::SeqCst);
            }
            Ok(())
        });
        Ok(Writer {
            acked,
            stop,
            handle: Some(handle),
        })
    }

    fn wait_acked(&self, n: u64) -> Result<()> {
        wait_until(&format!("{n} acknowledged writes"), LONG, || {
            (self.acked.load(Ordering::SeqCst) >= n || self.finished()).then_some(())
        })?;
        ensure!(
            self.acked.load(Ordering::SeqCst) >= n,
            "the writer ended at write {} (wanted {n})",
            self.acked.load(Ordering::SeqCst)
        );
        Ok(())
    }

    fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn join(mut self) -> Result<u64> {
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => bail!("writer panicked"),
            None => {}
        }
        Ok(self.acked.load(Ordering::SeqCst))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Write `from..=to` and wait for the last acknowledgement.
fn write_all(seed: u64, from: u64, to: u64) -> Result<()> {
    Writer::start(seed, from, to)?.join().map(|_| ())
}

// ---- set-up ----

fn zero_disk(p: &str) -> Result<()> {
    let d = Device::open(Path::new(p), Access::ExclusiveWrite)?;
    d.zero(0, DISK_MIB << 20)?;
    d.sync()?;
    Ok(())
}

fn create(r: &Run, failpoint: Option<String>) -> Result<()> {
    for i in 0..=r.members.max(4) {
        zero_disk(&backing(i))?;
    }
    let log = Device::open(Path::new(LOG_DISK), Access::SharedWrite)?;
    log.zero(ACK_BASE, ACK_SLOTS * 4096)?;
    log.sync()?;
    for i in 0..r.members {
        dmsetup(&format!("create t{i} --table '{}'", linear(&backing(i))))?;
    }
    let devs = dev_list(r);
    let mut chunk = if r.level == 1 {
        String::new()
    } else {
        format!(" --chunk {}K", r.chunk_kib)
    };
    if let Some(l) = r.layout {
        chunk += &format!(" --layout {l}");
    }
    if let Some(i) = r.write_mostly {
        chunk += &format!(" --write-mostly {}", member(i).display());
    }
    ctl(&format!(
        "create --level {} --raid-devices {} --name {NAME} --bitmap-chunk {}K{chunk} --time-base 1 --assume-clean {devs}",
        r.level, r.members, r.bitmap_kib
    ))?;
    match failpoint {
        Some(fp) => {
            // The failpoint may fire inside the assembly already.
            let (ok, _) = ctl_failpoint(&format!("assemble {NAME} {devs}"), &fp)?;
            if !ok {
                // The daemon died inside the assembly (an abort failpoint):
                // mdextctl rolled the start back. An admin starts the daemon
                // and assembles again.
                println!("TORTURE-FAULT assembly ended early (failpoint)");
                revive_if_dead();
                if !Path::new(&format!("/sys/block/{MD}/md/array_state")).exists() {
                    ctl(&format!("assemble {NAME} {devs}"))?;
                }
            }
            Ok(())
        }
        None => {
            ctl(&format!("assemble {NAME} {devs}"))?;
            wait_whole(r)
        }
    }
}

fn dev_list(r: &Run) -> String {
    members(r)
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// After a boot: the dm devices over the same backing disks (the victim's
/// over the spare where the run swapped it).
fn recreate_dm(r: &Run, victim_on_spare: bool) -> Result<()> {
    for i in 0..r.members {
        let dev = if victim_on_spare && i == r.victim {
            SPARE.to_string()
        } else {
            backing(i)
        };
        dmsetup(&format!("create t{i} --table '{}'", linear(&dev)))?;
    }
    Ok(())
}

fn victim_on_spare(r: &Run) -> bool {
    matches!(r.fault, Fault::Blank { .. } | Fault::Stale)
}

// ---- waits ----

/// The run kills the daemon at a failpoint, which may fire in any later
/// step: waits restart it where they find it gone (in any other run a dead
/// daemon is a failure).
static REVIVE: AtomicBool = AtomicBool::new(false);

fn revive_if_dead() {
    if REVIVE.load(Ordering::SeqCst) && daemon_pid().is_none() {
        println!("TORTURE-FAULT mdextmon died at its failpoint; restarting it");
        let _ = restart_daemon();
    }
}

/// Whole, rebuilt, and (external bitmap) allowed to clear again.
fn wait_whole(r: &Run) -> Result<()> {
    let md = md();
    wait_until("the array whole and idle", LONG, || {
        revive_if_dead();
        let idle = md.read("sync_action").ok()? == "idle";
        let synced = md.read("resync_start").ok()? == "none";
        (md.degraded().ok()? == 0 && idle && synced).then_some(())
    })?;
    if !kernel_mode(&md) {
        wait_until("can_clear true", LONG, || {
            revive_if_dead();
            can_clear_is(&md, true).ok()?.then_some(())
        })?;
    }
    let _ = r;
    Ok(())
}

fn wait_clean() -> Result<()> {
    let md = md();
    wait_until("the array clean", LONG, || {
        (md.read("array_state").ok()? == "clean").then_some(())
    })
}

fn kname(p: &Path) -> Result<String> {
    Ok(sysfs().block_name(devnum(p)?)?)
}

/// Whether md holds `p` as a member.
fn held(p: &Path) -> Result<bool> {
    let k = kname(p)?;
    Ok(Path::new(&format!("/sys/block/{MD}/md/dev-{k}")).exists())
}

fn fail_member(p: &Path) -> Result<()> {
    ctl(&format!("fail {MD} {}", p.display()))?;
    wait_until("the failed member detached", LONG, || {
        (!held(p).ok()?).then_some(())
    })?;
    ctl(&format!("remove {MD} {}", p.display()))?;
    Ok(())
}

/// The dirty chunks an in-sync member's bitmap holds.
fn dirty_bits(r: &Run) -> Result<u64> {
    let mut best = 0;
    for p in members(r) {
        if held(&p).unwrap_or(false) {
            best = best.max(mode_bits(&p).map(|b| b.len() as u64).unwrap_or(0));
        }
    }
    Ok(best)
}

/// A rebuild measured: sectors written to the member against the dirty
/// chunks' share.
struct Measure {
    kname: String,
    w0: u64,
    bits: u64,
    chunk_sectors: u64,
}

impl Measure {
    fn start(r: &Run, p: &Path) -> Result<Measure> {
        let kname = kname(p)?;
        if let Ok(own) = examine(p) {
            println!(
                "TORTURE-RETURNING {} own events {} state {}",
                p.display(),
                own["events"],
                own["state"]
            );
        }
        Ok(Measure {
            w0: written_sectors(&kname)?,
            kname,
            bits: dirty_bits(r)?,
            chunk_sectors: r.bitmap_kib * 2,
        })
    }

    /// (kind, ratio) once the rebuild ended.
    fn end(&self) -> Result<(&'static str, Option<f64>)> {
        let written = written_sectors(&self.kname)? - self.w0;
        let share = self.bits * self.chunk_sectors;
        println!(
            "TORTURE-REBUILD wrote {written} sectors; {} dirty chunks of {} sectors",
            self.bits, self.chunk_sectors
        );
        if written <= share + self.chunk_sectors + 512 {
            Ok(("bitmap", (share > 0).then(|| written as f64 / share as f64)))
        } else {
            Ok(("full", None))
        }
    }
}

// ---- recovery and verification ----

/// Bring the array back with the documented commands: `assemble NAME
/// DEV...`; if that refuses, `assemble --run` with the devices that carry
/// this array's metadata; then `add` whatever md does not hold. Returns
/// the measured rebuild of the last device added.
fn recover(r: &Run) -> Result<(&'static str, Option<f64>)> {
    let devs = dev_list(r);
    let running = Path::new(&format!("/sys/block/{MD}/md/array_state")).exists()
        && md()
            .read("array_state")
            .is_ok_and(|s| s != "inactive" && s != "clear");
    if !running {
        let (ok, _, _) = ctl_status(&format!("assemble {NAME} {devs}"))?;
        if !ok {
            let ours: Vec<String> = members(r)
                .iter()
                .filter(|p| examine(p).is_ok_and(|e| e["name"] == NAME))
                .map(|p| p.display().to_string())
                .collect();
            let run = format!("assemble --run {NAME} {}", ours.join(" "));
            let (ok, _, err) = ctl_status(&run)?;
            if !ok {
                // The one refusal that names its way out: a parity array
                // recorded dirty and degraded (the write hole). Followed
                // only where the record is dirty because it is the failure
                // record itself (md reads write-pending after a failure
                // whether or not a write is held, so the record goes dirty
                // before `active`; a power cut before the next, clean record
                // leaves that). Any other dirty degraded parity record means
                // a write was in flight while degraded, which the workload
                // never does: a failure of the run.
                if !(err.contains("write hole") && failure_record_is_newest(&ours)?) {
                    bail!("the array did not assemble with the documented commands: mdextctl {run} failed: {err}");
                }
                println!("TORTURE-FORCED dirty failure record: {}", err.trim());
                ctl(&format!("assemble --run --force {NAME} {}", ours.join(" ")))?;
            }
        }
    }
    let mut out = ("none", None);
    for p in members(r) {
        if !held(&p)? {
            let m = Measure::start(r, &p)?;
            ctl(&format!("add {MD} {}", p.display()))?;
            wait_whole(r)?;
            out = m.end()?;
        }
    }
    wait_whole(r)?;
    Ok(out)
}

/// Whether the newest record on `devs` is dirty only as the record of a
/// member's failure: some member entry failed at the newest event.
fn failure_record_is_newest(devs: &[String]) -> Result<bool> {
    let mut newest: Option<(u64, serde_json::Value)> = None;
    for d in devs {
        let e = examine(Path::new(d))?;
        let ev = e["events"].as_u64().context("examine: events")?;
        if newest.as_ref().is_none_or(|(n, _)| ev > *n) {
            newest = Some((ev, e));
        }
    }
    let Some((ev, e)) = newest else {
        return Ok(false);
    };
    Ok(e["state"] == "dirty"
        && e["members"].as_array().is_some_and(|m| {
            m.iter()
                .any(|x| x["state"] == "failed" && x["events"].as_u64() == Some(ev))
        }))
}

/// The generation each written block must hold after `acked` acknowledged
/// writes.
fn expected(seed: u64, acked: u64, n: u64) -> std::collections::HashMap<u64, u64> {
    let mut m = std::collections::HashMap::new();
    for i in 1..=acked {
        m.insert(block_of(seed, i, n), i);
    }
    m
}

/// Compare the array with what was acknowledged; `all`: every block (the
/// unwritten read as zeros), else only the written ones. `inflight`: the
/// write after the last acknowledged one may have landed (a power cut).
fn verify(seed: u64, acked: u64, inflight: bool, all: bool) -> Result<u64> {
    let n = nblocks()?;
    let exp = expected(seed, acked, n);
    let alt = inflight.then(|| (block_of(seed, acked + 1, n), acked + 1));
    let dev = Device::open(&md().dev_path(), Access::Read)?;
    let check = |b: u64, got: &[u8]| -> Result<()> {
        let g = exp.get(&b).copied().unwrap_or(0);
        let want = if g == 0 {
            vec![0u8; 4096]
        } else {
            stamp(seed, b, g)
        };
        if got == want.as_slice() {
            return Ok(());
        }
        if let Some((ab, ag)) = alt {
            if ab == b && got == stamp(seed, b, ag).as_slice() {
                return Ok(());
            }
        }
        bail!(
            "block {b}: expected {}, read {}",
            if g == 0 {
                "zeros".to_string()
            } else {
                format!("generation {g}")
            },
            describe_block(got)
        )
    };
    let mut count = 0;
    if all {
        const STEP: u64 = 256;
        let mut b = 0;
        while b < n {
            let k = STEP.min(n - b);
            let buf = dev.read_at(b * 4096, (k * 4096) as usize)?;
            for j in 0..k {
                check(b + j, &buf[(j * 4096) as usize..((j + 1) * 4096) as usize])?;
            }
            count += k;
            b += k;
        }
    } else {
        let mut blocks: Vec<u64> = exp.keys().copied().collect();
        blocks.sort_unstable();
        for b in blocks {
            check(b, &dev.read_at(b * 4096, 4096)?[..4096])?;
            count += 1;
        }
    }
    Ok(count)
}

/// Read the written blocks through every member in turn: raid1 with the
/// other legs failed, the other levels with that member failed (its data
/// then comes from the rest); each time the members come back.
fn through_each_member(r: &Run, acked: u64, inflight: bool) -> Result<u64> {
    let mut count = 0;
    let all = members(r);
    for j in 0..r.members {
        let out: Vec<&PathBuf> = if r.level == 1 {
            all.iter()
                .enumerate()
                .filter(|(i, _)| *i != j)
                .map(|(_, p)| p)
                .collect()
        } else {
            vec![&all[j]]
        };
        for p in &out {
            fail_member(p)?;
        }
        count += verify(r.seed, acked, inflight, false)
            .with_context(|| format!("read with slot(s) other than {j} failed"))?;
        for p in &out {
            ctl(&format!("add {MD} {}", p.display()))?;
        }
        wait_whole(r)?;
    }
    Ok(count)
}

/// Every member's metadata, after a stop, records the same clean, whole
/// array.
fn metadata_agrees(r: &Run) -> Result<()> {
    let mut first: Option<serde_json::Value> = None;
    for p in members(r) {
        let e = examine(&p)?;
        let problems = e["problems"].as_array().map_or(0, Vec::len);
        ensure!(
            problems == 0,
            "{}: examine reports {}",
            p.display(),
            e["problems"]
        );
        ensure!(
            e["state"] == "clean",
            "{}: state {}",
            p.display(),
            e["state"]
        );
        let whole = e["members"]
            .as_array()
            .context("members")?
            .iter()
            .filter(|m| m["index"].as_u64().is_some_and(|i| i < r.members as u64))
            .all(|m| m["state"] == "in-sync");
        ensure!(
            whole,
            "{}: not every slot in-sync: {}",
            p.display(),
            e["members"]
        );
        ensure!(
            e["bitmap"]["events_cleared"] == e["events"],
            "{}: events_cleared {} != events {}",
            p.display(),
            e["bitmap"]["events_cleared"],
            e["events"]
        );
        if let Some(f) = &first {
            for k in ["array_uuid", "events", "members", "component_size_sectors"] {
                ensure!(
                    f[k] == e[k],
                    "{}: {k} {} differs from the first member's {}",
                    p.display(),
                    e[k],
                    f[k]
                );
            }
        } else {
            first = Some(e);
        }
    }
    Ok(())
}

/// The common end of every run: recover, read everything back, through each
/// member, scrub, stop, compare the metadata.
fn finish(r: &Run, inflight: bool) -> Result<Outcome> {
    let (rebuild, ratio) = recover(r)?;
    let a = acked(r.seed)?;
    let mut blocks = verify(r.seed, a, inflight, true)?;
    blocks += through_each_member(r, a, inflight)?;
    let mm = crate::util::check_mismatches(&md())?;
    ensure!(mm == 0, "mismatch_cnt {mm} after check");
    ctl(&format!("stop {MD}"))?;
    metadata_agrees(r)?;
    Ok(Outcome {
        blocks,
        acked: a,
        rebuild,
        ratio,
    })
}

// ---- the faults ----

/// The run's boot `p.seg`. Returns when the run ended (its verdict), or
/// cuts the power after recording the boot to go on with.
pub fn execute(r: &Run, p: &mut Progress) -> Result<Outcome> {
    REVIVE.store(matches!(r.fault, Fault::KillMeta { .. }), Ordering::SeqCst);
    if p.seg > 0 {
        recreate_dm(
            r,
            victim_on_spare(r) && p.seg > 0 && !matches!(r.fault, Fault::Stale),
        )?;
    }
    match (r.fault, p.seg) {
        (Fault::Crash, 0) => {
            create(r, None)?;
            let w = Writer::start(r.seed, 1, r.writes)?;
            w.wait_acked(r.at)?;
            crash(p, 1)
        }
        (Fault::Crash, _) => finish(r, true),
        (Fault::CrashMeta { point, nth }, 0) => {
            arm(p, 1)?;
            create(r, Some(format!("mdextmon/{point}:{nth}:crash")))?;
            meta_workload(r, false)?;
            println!("TORTURE-FAILPOINT-NOT-REACHED {point}:{nth}");
            planned_cut()
        }
        (Fault::CrashMeta { .. }, _) => finish(r, true),
        (Fault::Kill, _) => {
            create(r, None)?;
            let w = Writer::start(r.seed, 1, r.writes)?;
            w.wait_acked(r.at)?;
            println!("TORTURE-FAULT kill mdextmon at write {}", r.at);
            kill_daemon();
            restart_daemon()?;
            w.join()?;
            finish(r, false)
        }
        (Fault::KillMeta { point, nth }, _) => {
            create(r, Some(format!("mdextmon/{point}:{nth}:abort")))?;
            meta_workload(r, true)?;
            if daemon_pid().is_none() {
                restart_daemon()?;
            }
            finish(r, false)
        }
        (Fault::WriteErrors | Fault::Vanish, _) => {
            create(r, None)?;
            let w = Writer::start(r.seed, 1, r.writes)?;
            w.wait_acked(r.at)?;
            let table = if r.fault == Fault::Vanish {
                format!("0 {} error", sectors())
            } else {
                format!(
                    "0 {} flakey {} 0 0 3600 1 error_writes",
                    sectors(),
                    backing(r.victim)
                )
            };
            println!("TORTURE-FAULT slot {} {}", r.victim, table);
            swap(r.victim, &table)?;
            let mut last = w.join()?;
            // Until md fails the member: more writes (all acknowledged and
            // verified like the rest).
            let victim = member(r.victim);
            while held(&victim)? && md().degraded()? == 0 {
                ensure!(
                    last < r.writes + 4000,
                    "md never failed the erroring member"
                );
                write_all(r.seed, last + 1, last + 50)?;
                last += 50;
            }
            wait_until("the erroring member detached", LONG, || {
                (!held(&victim).ok()?).then_some(())
            })?;
            swap(r.victim, &linear(&backing(r.victim)))?;
            // The re-add rule (mdext(5)): from the bitmap when the device's
            // own record is not older than the array's events_cleared. When
            // the member's writes of the records before its failure failed
            // too, its record is older, and it is rebuilt fully (safe; see
            // docs/reliability.md).
            let own = examine(&victim)?["events"].as_u64().unwrap_or(0);
            let ec = examine(&member((r.victim + 1) % r.members))?["bitmap"]["events_cleared"]
                .as_u64()
                .unwrap_or(u64::MAX);
            let o = finish(r, false)?;
            if own >= ec {
                ensure!(
                    o.rebuild == "bitmap",
                    "the returning member (own record {own}, events_cleared {ec}) was rebuilt {} though the bitmap was kept since it left",
                    o.rebuild
                );
            } else {
                println!(
                    "TORTURE-NOTE full rebuild expected: own record {own} older than events_cleared {ec}"
                );
            }
            Ok(o)
        }
        (Fault::Corrupt(c), _) => {
            create(r, None)?;
            write_all(r.seed, 1, r.writes)?;
            ctl(&format!("stop {MD}"))?;
            corrupt(&member(r.victim), c, r.seed)?;
            finish(r, false)
        }
        (Fault::Blank { crash: true }, 0) => {
            create(r, None)?;
            let w = Writer::start(r.seed, 1, r.writes)?;
            w.wait_acked(r.at)?;
            crash(p, 1)
        }
        (Fault::Blank { crash }, _) => {
            if !crash {
                create(r, None)?;
                write_all(r.seed, 1, r.writes)?;
                ctl(&format!("stop {MD}"))?;
                swap(r.victim, &linear(SPARE))?;
            }
            println!("TORTURE-FAULT slot {} swapped for a blank disk", r.victim);
            finish(r, crash)
        }
        (Fault::Stale, _) => {
            create(r, None)?;
            write_all(r.seed, 1, r.at)?;
            ctl(&format!("stop {MD}"))?;
            copy_disk(&backing(r.victim), SPARE)?;
            ctl(&format!("assemble {NAME} {}", dev_list(r)))?;
            write_all(r.seed, r.at + 1, r.writes)?;
            ctl(&format!("stop {MD}"))?;
            swap(r.victim, &linear(SPARE))?;
            println!(
                "TORTURE-FAULT slot {} swapped for its copy at write {}",
                r.victim, r.at
            );
            finish(r, false)
        }
        (Fault::CrashRecovery, 0) => {
            create(r, None)?;
            write_all(r.seed, 1, r.at)?;
            let victim = member(r.victim);
            fail_member(&victim)?;
            write_all(r.seed, r.at + 1, r.writes)?;
            if matches!(r.level, 5 | 6) {
                // Recorded clean first: a power cut with writes in flight and
                // a member rebuilding is the write hole on parity levels
                // (refused without --force; docs/reliability.md).
                wait_clean()?;
            }
            // Slow the recovery to a crawl (1 KiB/s) so the power cut lands
            // inside it. Not `sync_max`: a raid10 recovery held there spins
            // in md127_resync on 6.1 (soft lockup, the one vCPU never comes
            // back; campaign seed 0x527725d61c6475c2).
            md().write("sync_speed_min", "1")?;
            md().write("sync_speed_max", "1")?;
            ctl(&format!("add {MD} {}", victim.display()))?;
            // Running: `recover`, or `frozen` with progress (a recovery md
            // started just before the daemon froze recovery for the add runs
            // on under `frozen`, monitor.rs). Or already over: md's speed
            // limit counts completed I/O only, so a recovery of a few dirty
            // chunks can end at once under load (campaign seed
            // 0xfe1368e7cd37ab5b: 640 sectors in 50 ms); the power cut then
            // lands just after it.
            let over = wait_until("recovery to run", LONG, || {
                let action = md().read("sync_action").ok()?;
                let progress = md().read("sync_completed").is_ok_and(|c| c != "none");
                if action == "recover" || (action == "frozen" && progress) {
                    return Some(false);
                }
                let whole = md().degraded().ok()? == 0 && action == "idle";
                whole.then_some(true)
            })?;
            if over {
                println!("TORTURE-NOTE the recovery ended before the power cut");
            }
            crash(p, 1)
        }
        (Fault::CrashRecovery, _) => finish(r, false),
        (Fault::CrashAssembly { .. }, 0) => {
            create(r, None)?;
            let w = Writer::start(r.seed, 1, r.writes)?;
            w.wait_acked(r.at)?;
            crash(p, 1)
        }
        (Fault::CrashAssembly { nth }, 1) => {
            arm(p, 2)?;
            let point = if nth % 2 == 0 {
                "sb-write-torn"
            } else {
                "sb-write-after"
            };
            let (ok, out) = ctl_failpoint(
                &format!("assemble --run {NAME} {}", dev_list(r)),
                &format!("mdextctl/{point}:{nth}:crash"),
            )?;
            println!(
                "TORTURE-FAILPOINT-NOT-REACHED assembly wrote fewer ({ok}): {}",
                out.trim()
            );
            planned_cut()
        }
        (Fault::CrashAssembly { .. }, _) => finish(r, true),
    }
}

/// Writes with clean periods between them and a member failing and
/// returning: every kind of metadata update the daemon makes. With
/// `restart`, a daemon that died (a failpoint) is started again wherever
/// the workload finds it gone.
fn meta_workload(r: &Run, restart: bool) -> Result<()> {
    let revive = || -> Result<()> {
        if restart && daemon_pid().is_none() {
            println!("TORTURE-FAULT mdextmon died at its failpoint; restarting it");
            restart_daemon()?;
        }
        Ok(())
    };
    let step = |what: &str| -> Result<()> {
        match ctl_status(what) {
            Ok((true, _, _)) => Ok(()),
            _ if restart => {
                revive()?;
                // The request may have been carried out before the death.
                let _ = ctl_status(what);
                Ok(())
            }
            Ok((false, _, e)) => bail!("mdextctl {what}: {e}"),
            Err(e) => Err(e),
        }
    };
    wait_or_revive(
        || {
            md().degraded().is_ok_and(|d| d == 0)
                && md()
                    .read("array_state")
                    .is_ok_and(|s| s == "clean" || s == "active")
        },
        restart,
    )?;
    let half = r.writes / 2;
    let w = Writer::start(r.seed, 1, half)?;
    wait_or_revive(|| w.finished(), restart)?;
    w.join()?;
    wait_or_revive(
        || md().read("array_state").is_ok_and(|s| s == "clean"),
        restart,
    )?;
    let victim = member(r.victim);
    // Parity levels write nothing while degraded: a power cut there with a
    // write in flight is the write hole (docs/reliability.md).
    let parity = matches!(r.level, 5 | 6);
    step(&format!("fail {MD} {}", victim.display()))?;
    wait_or_revive(|| !held(&victim).unwrap_or(true), restart)?;
    step(&format!("remove {MD} {}", victim.display()))?;
    if !parity {
        let w = Writer::start(r.seed, half + 1, r.writes)?;
        wait_or_revive(|| w.finished(), restart)?;
        w.join()?;
    }
    step(&format!("add {MD} {}", victim.display()))?;
    wait_or_revive(
        || {
            md().degraded().is_ok_and(|d| d == 0)
                && md().read("sync_action").is_ok_and(|s| s == "idle")
        },
        restart,
    )?;
    // The daemon may die at its failpoint only now (can_clear=true after
    // the rebuild): the wait revives it.
    wait_or_revive(
        || {
            let md = md();
            kernel_mode(&md) || can_clear_is(&md, true).unwrap_or(false)
        },
        restart,
    )?;
    revive()?;
    wait_whole(r)?;
    if parity {
        let w = Writer::start(r.seed, half + 1, r.writes)?;
        wait_or_revive(|| w.finished(), restart)?;
        w.join()?;
    }
    wait_clean()
}

fn wait_or_revive(mut done: impl FnMut() -> bool, restart: bool) -> Result<()> {
    wait_until("the workload step", LONG, || {
        if restart && daemon_pid().is_none() {
            println!("TORTURE-FAULT mdextmon died at its failpoint; restarting it");
            restart_daemon().ok()?;
        }
        done().then_some(())
    })
}

fn copy_disk(from: &str, to: &str) -> Result<()> {
    let a = Device::open(Path::new(from), Access::Read)?;
    let b = Device::open(Path::new(to), Access::ExclusiveWrite)?;
    let step = 1u64 << 20;
    for off in (0..DISK_MIB << 20).step_by(step as usize) {
        b.write_at(off, &a.read_at(off, step as usize)?[..step as usize])?;
    }
    b.sync()?;
    Ok(())
}

/// Damage the victim's metadata (the array is stopped).
fn corrupt(p: &Path, c: Corruption, seed: u64) -> Result<()> {
    let e = examine(p)?;
    let newest = e["copy"].as_u64().context("examine: copy")?;
    let at = |copy: u64| {
        if copy == 0 {
            0
        } else {
            mdext::format::COPY1_V2_OFFSET
        }
    };
    let d = Device::open(p, Access::ExclusiveWrite)?;
    let garble = |copy: u64, salt: u64| -> Result<()> {
        let off = at(copy);
        let mut b = d.read_at(off, 4096)?[..4096].to_vec();
        let mut x = super::plan::mix(seed ^ salt);
        for _ in 0..16 {
            x = super::plan::mix(x);
            let i = (x % 512) as usize;
            b[i] ^= (x >> 32) as u8 | 1;
        }
        d.write_at(off, &b)?;
        Ok(())
    };
    match c {
        Corruption::Newest => garble(newest, 1)?,
        Corruption::Oldest => garble(1 - newest, 2)?,
        Corruption::Both => {
            garble(0, 3)?;
            garble(1, 4)?;
        }
        Corruption::TornNewest => {
            let off = at(newest);
            let mut b = d.read_at(off, 4096)?[..4096].to_vec();
            b[2048..].fill(0);
            d.write_at(off, &b)?;
        }
    }
    d.sync()?;
    println!("TORTURE-FAULT {} metadata {c:?}", p.display());
    Ok(())
}
