//! Issue 8: starts that met a limit of the kernel or of the devices.
//! - defect 9: a degraded start whose dirty-chunk list is longer than the
//!   page md's `bitmap_set_bits` takes in one write;
//! - defect 11: a member whose device shrank below its recorded data area;
//! - defect 10: raid5/raid6 that crashed while degraded (md refuses a dirty
//!   degraded parity array; `--force` starts it, as mdadm does).

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{bail, ensure, Context, Result};
use mdext::device::{Access, Device};
use mdext::sysfs::MdDev;
use std::path::Path;
use std::time::Duration;

fn md() -> MdDev {
    sysfs().md("md127")
}

fn json_u64(v: &serde_json::Value, k: &str) -> Result<u64> {
    v[k].as_u64().with_context(|| format!("no '{k}' in {v}"))
}

/// The chunks set in the first `len` bytes of `dev`'s bitmap, in the
/// region its recorded mode runs from (md's at sector 8 in mode `kernel`;
/// the external region, after md's, otherwise).
fn bits_on(dev: &Path, len: usize) -> Result<Vec<u64>> {
    mode_bits_len(dev, len)
}

/// Wait for a rebuild to end and mdextmon to allow clearing again.
fn wait_whole(md: &MdDev, limit: Duration) -> Result<()> {
    wait_until("recovery to end", limit, || {
        (md.degraded().ok()? == 0 && md.read("sync_action").ok()? == "idle").then_some(())
    })?;
    wait_until(
        "can_clear true after the rebuild",
        Duration::from_secs(30),
        || can_clear_is(md, true).ok()?.then_some(()),
    )
}

// ---------------------------------------------------------------------------
// Defect 9: a dirty-chunk list longer than a page.

pub static LONG_DIRTY_LIST: Scenario = Scenario {
    name: "degraded_start_with_dirty_list_longer_than_a_page",
    disks: &[176, 176],
    phases: &[Phase {
        name: "main",
        run: long_dirty_list,
        ends: Ends::Ok,
    }],
};

/// 4 KiB bitmap chunks; every other chunk of the first `2 * LONG_DIRTY`
/// written while degraded, so no two dirty chunks merge into a range.
const SMALL_CHUNK_LEN: usize = 4096;
const SMALL_CHUNK: u64 = SMALL_CHUNK_LEN as u64;
const LONG_DIRTY: u64 = 20_000;

fn long_dirty_chunks() -> Vec<u64> {
    (0..LONG_DIRTY).map(|k| 2 * k).collect()
}

fn long_dirty_list() -> Result<()> {
    let (a, b) = (Path::new("/dev/vda"), Path::new("/dev/vdb"));
    ctl("create --level 1 --raid-devices 2 --name ld --bitmap-chunk 4K --time-base 1 --assume-clean /dev/vda /dev/vdb")?;
    let ex = examine(a)?;
    let chunks = json_u64(&ex["bitmap"], "chunks")?;
    let bitmap_len = usize::try_from(json_u64(&ex["bitmap"], "size_bytes")?)?;
    let data_offset = json_u64(&ex, "data_offset_sectors")? * 512;
    ensure!(
        chunks >= 2 * LONG_DIRTY,
        "only {chunks} bitmap chunks for {LONG_DIRTY} scattered dirty ones"
    );
    ctl("assemble ld /dev/vda /dev/vdb")?;
    let md = md();
    fail_and_remove(&md, "/dev/vdb")?;
    let dirty = long_dirty_chunks();
    let t0 = std::time::Instant::now();
    {
        // Several writers in flight let md flush one bitmap page for many
        // writes instead of one per write.
        let d = Device::open(&md.dev_path(), Access::SharedWrite)?;
        let writers = 8;
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    let (d, dirty) = (&d, &dirty);
                    s.spawn(move || -> Result<()> {
                        for &c in dirty.iter().skip(w).step_by(writers) {
                            d.write_at(c * SMALL_CHUNK, &pattern(100 + c, SMALL_CHUNK_LEN))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
            }
            Ok(())
        })?;
    }
    ensure!(
        bits_on(a, bitmap_len)? == dirty,
        "bits after the degraded writes are not exactly the {} written chunks",
        dirty.len()
    );
    let list_bytes = mdext::bitmap::ranges_to_set_bits(&mdext::bitmap::dirty_ranges(
        &mode_bytes(a, bitmap_len)?,
        chunks,
    ))
    .len();
    println!(
        "{} dirty chunks written in {:.0?}; their bitmap_set_bits list is {list_bytes} bytes",
        dirty.len(),
        t0.elapsed()
    );
    // A clean stop: the bits stay on disk (can_clear is false while
    // degraded), the array is recorded clean.
    ctl("stop md127")?;
    ensure!(bits_on(a, bitmap_len)? == dirty, "bits after the stop");
    let out = ctl("assemble --run --json ld /dev/vda /dev/vdb")?;
    let rep: serde_json::Value = serde_json::from_str(&out).context("assemble --json")?;
    let rearmed = json_u64(&rep, "rearmed_chunks")?;
    let writes = json_u64(&rep, "rearm_writes")?;
    println!("degraded start re-armed {rearmed} chunks in {writes} writes to bitmap_set_bits");
    ensure!(
        rearmed == LONG_DIRTY,
        "re-armed {rearmed}, expected {LONG_DIRTY}"
    );
    ensure!(
        writes >= list_bytes.div_ceil(4095) as u64,
        "{writes} writes cannot carry a {list_bytes}-byte list in pieces under a page"
    );
    // What md flushed: exactly the requested chunks, no cut token's stray.
    ensure!(
        bits_on(a, bitmap_len)? == dirty,
        "bits after the degraded start differ from the list"
    );
    let w0 = written_sectors("vdb")?;
    let t0 = std::time::Instant::now();
    ctl("add md127 /dev/vdb")?;
    wait_whole(&md, Duration::from_secs(600))?;
    let written = written_sectors("vdb")? - w0;
    let data = LONG_DIRTY * SMALL_CHUNK / 512;
    println!(
        "bitmap rebuild wrote {written} sectors to the returning member ({data} for {LONG_DIRTY} dirty chunks) in {:.0?}",
        t0.elapsed()
    );
    ensure!(
        written >= data && written < data + 400,
        "rebuild wrote {written} sectors, expected {data} plus metadata"
    );
    // The returning member itself holds the data now.
    let slab = 4u64 << 20;
    let span = 2 * LONG_DIRTY * SMALL_CHUNK;
    let mut off = 0;
    while off < span {
        let len = slab.min(span - off);
        let got = read_direct(b, data_offset + off, usize::try_from(len)?)?;
        for (i, blk) in got.chunks(SMALL_CHUNK_LEN).enumerate() {
            let c = (off / SMALL_CHUNK) + i as u64;
            if c % 2 == 0 && blk != pattern(100 + c, SMALL_CHUNK_LEN).as_slice() {
                bail!("chunk {c} on the rebuilt member differs from what was written");
            }
        }
        off += len;
    }
    let t0 = std::time::Instant::now();
    let mm = check_mismatches(&md)?;
    println!(
        "mismatch_cnt after the rebuild: {mm} (check took {:.0?})",
        t0.elapsed()
    );
    ensure!(mm == 0, "mismatch_cnt {mm} after the rebuild");
    ctl("stop md127")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 11: a shrunk member.

pub static SHRUNK_MEMBER: Scenario = Scenario {
    name: "shrunk_member_is_reported_and_left_out",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: shrunk_member,
        ends: Ends::Ok,
    }],
};

fn shrunk_member() -> Result<()> {
    let loops = loop_devices(2, 24)?;
    ctl("create --level 1 --raid-devices 2 --name sh --bitmap-chunk 64K --assume-clean /dev/loop0 /dev/loop1")?;
    ctl("assemble sh /dev/loop0 /dev/loop1")?;
    let md = md();
    let comp = json_u64(&examine(&loops[0].path)?, "component_size_sectors")?;
    let blob = pattern(11, usize::try_from(comp * 512)?);
    write_direct(&md.dev_path(), 0, &blob)?;
    ctl("stop md127")?;
    // The file under loop1 is cut to half; the loop device learns it.
    sh("truncate -s 12M /tmp/disk1.img && losetup -c /dev/loop1")?;
    ensure!(
        sh("blockdev --getsize64 /dev/loop1")?.trim() == (12u64 << 20).to_string(),
        "loop1 did not shrink"
    );
    // examine: the record is still printed, the problem is reported, and
    // the exit status says so.
    let (ok, out, err) = ctl_status("examine /dev/loop1")?;
    ensure!(!ok, "examine of a shrunk member exited 0");
    ensure!(
        out.contains("Array UUID"),
        "examine printed no record: {out}"
    );
    ensure!(
        err.contains("/dev/loop1") && err.contains("smaller than"),
        "examine gave no warning: {err}"
    );
    ensure!(
        err.trim().lines().count() == 1,
        "warning not one line: {err}"
    );
    let (ok, _, _) = ctl_status("examine /dev/loop0")?;
    ensure!(ok, "examine of the intact member failed");
    // assemble leaves it out: without --run that is a degraded start.
    let (ok, _, err) = ctl_status("assemble sh /dev/loop0 /dev/loop1")?;
    ensure!(
        !ok && err.contains("--run"),
        "assemble with a shrunk member: {err}"
    );
    ensure!(
        !Path::new("/sys/block/md127").exists(),
        "a refused assembly left an md device"
    );
    let out = ctl("assemble --run sh /dev/loop0 /dev/loop1")?;
    let line = out
        .lines()
        .find(|l| l.contains("/dev/loop1 not used"))
        .with_context(|| format!("loop1 not named as left out: {out}"))?;
    ensure!(line.contains("smaller than"), "reason: {line}");
    ensure!(md.degraded()? == 1, "degraded {}", md.degraded()?);
    ensure!(
        md.members() == vec!["loop0".to_string()],
        "md members: {:?}",
        md.members()
    );
    let mdstat = sh("cat /proc/mdstat")?;
    ensure!(mdstat.contains("[2/1]"), "/proc/mdstat: {mdstat}");
    let detail = sh("mdadm --detail /dev/md127")?;
    ensure!(detail.contains("degraded"), "mdadm --detail: {detail}");
    // Every block reads back: md never touches the short device.
    ensure!(
        read_direct(&md.dev_path(), 0, blob.len())? == blob,
        "data read back wrong"
    );
    let dmesg = sh("dmesg")?;
    ensure!(
        !dmesg.contains("Disk failure"),
        "md failed a member: {dmesg}"
    );
    ctl("stop md127")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Defect 10: raid5/raid6 that crashed while degraded.

pub static DIRTY_DEGRADED_RAID5: Scenario = Scenario {
    name: "raid5_crash_while_degraded_force_start",
    disks: &[64, 64, 64],
    phases: &[
        Phase {
            name: "degrade_write_crash",
            run: raid5_phase1,
            ends: Ends::Crash,
        },
        Phase {
            name: "refuse_force_readd",
            run: raid5_phase2,
            ends: Ends::Ok,
        },
    ],
};

pub static DIRTY_DEGRADED_RAID6: Scenario = Scenario {
    name: "raid6_crash_while_degraded_force_start",
    disks: &[64, 64, 64, 64],
    phases: &[
        Phase {
            name: "degrade_write_crash",
            run: raid6_phase1,
            ends: Ends::Crash,
        },
        Phase {
            name: "refuse_force_readd",
            run: raid6_phase2,
            ends: Ends::Ok,
        },
    ],
};

const CHUNK_LEN: usize = 64 << 10;
const CHUNK: u64 = CHUNK_LEN as u64;
const CHUNK_SECTORS: u64 = CHUNK / 512;
/// Array chunks (64 KiB) written while degraded; each write is
/// acknowledged (O_DIRECT returned) before the crash.
const PARITY_WRITES: [u64; 6] = [2, 3, 50, 51, 150, 300];

struct Parity {
    level: u32,
    devs: &'static [&'static str],
    /// The member failed before the writes and re-added at the end.
    away: &'static str,
}

const RAID5: Parity = Parity {
    level: 5,
    devs: &["/dev/vda", "/dev/vdb", "/dev/vdc"],
    away: "/dev/vdc",
};

const RAID6: Parity = Parity {
    level: 6,
    devs: &["/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd"],
    away: "/dev/vdd",
};

fn raid5_phase1() -> Result<()> {
    parity_phase1(&RAID5)
}
fn raid5_phase2() -> Result<()> {
    parity_phase2(&RAID5)
}
fn raid6_phase1() -> Result<()> {
    parity_phase1(&RAID6)
}
fn raid6_phase2() -> Result<()> {
    parity_phase2(&RAID6)
}

impl Parity {
    fn name(&self) -> String {
        format!("dd{}", self.level)
    }
    fn dev_list(&self) -> String {
        self.devs.join(" ")
    }
}

fn write_chunks(md: &MdDev, seed: u64) -> Result<()> {
    for &c in &PARITY_WRITES {
        write_direct(&md.dev_path(), c * CHUNK, &pattern(seed + c, CHUNK_LEN))?;
    }
    Ok(())
}

fn verify_chunks(md: &MdDev, seed: u64) -> Result<()> {
    for &c in &PARITY_WRITES {
        let got = read_direct(&md.dev_path(), c * CHUNK, CHUNK_LEN)?;
        ensure!(
            got == pattern(seed + c, CHUNK_LEN),
            "acknowledged chunk {c} reads back wrong"
        );
    }
    Ok(())
}

fn parity_phase1(p: &Parity) -> Result<()> {
    ctl(&format!(
        "create --level {} --raid-devices {} --name {} --bitmap-chunk 64K --time-base 1 --assume-clean {}",
        p.level,
        p.devs.len(),
        p.name(),
        p.dev_list()
    ))?;
    ctl(&format!("assemble {} {}", p.name(), p.dev_list()))?;
    let md = md();
    fail_and_remove(&md, p.away)?;
    // Keep the array "active" after the writes (no safe-mode switch to
    // clean), as if the crash came in the middle of writing: the metadata
    // then records the array dirty.
    md.write("safe_mode_delay", "3600")?;
    write_chunks(&md, u64::from(p.level) * 1000)?;
    let state = examine(Path::new(p.devs[0]))?["state"].clone();
    ensure!(state == "dirty", "metadata before the crash: {state}");
    let bits = mode_bits(Path::new(p.devs[0]))?;
    ensure!(!bits.is_empty(), "no dirty bits before the crash");
    println!(
        "raid{}: dirty bitmap chunks before the crash: {bits:?}",
        p.level
    );
    println!("MDEXT-CRASHING");
    sh("echo b > /proc/sysrq-trigger")?;
    std::thread::sleep(Duration::from_secs(30));
    bail!("still alive after sysrq b")
}

fn parity_phase2(p: &Parity) -> Result<()> {
    let first = Path::new(p.devs[0]);
    let bits = mode_bits(first)?;
    ensure!(!bits.is_empty(), "no dirty bits after the crash");
    let ex = examine(first)?;
    ensure!(
        ex["state"] == "dirty",
        "metadata after the crash: {}",
        ex["state"]
    );
    let events = json_u64(&ex, "events")?;
    // Plain --run: refused before the kernel is touched, with the reason
    // and the way forward.
    let (ok, _, err) = ctl_status(&format!("assemble --run {} {}", p.name(), p.dev_list()))?;
    ensure!(!ok, "raid{}: a dirty degraded start was accepted", p.level);
    ensure!(
        err.trim().lines().count() == 1,
        "refusal not one line: {err}"
    );
    for want in ["write hole", "--force", "dirty", "degraded"] {
        ensure!(
            err.contains(want),
            "refusal does not mention '{want}': {err}"
        );
    }
    ensure!(
        !Path::new("/sys/block/md127").exists(),
        "a refused assembly left an md device"
    );
    ensure!(
        !sh("dmesg")?.contains("cannot start dirty degraded"),
        "the refusal came from the kernel, not before it"
    );
    ensure!(
        json_u64(&examine(first)?, "events")? == events,
        "a refused assembly changed the metadata"
    );
    // --force starts it, and the record says so.
    let out = ctl(&format!(
        "assemble --run --force {} {}",
        p.name(),
        p.dev_list()
    ))?;
    ensure!(out.contains("forced"), "assemble --force output: {out}");
    let ex = examine(first)?;
    let forced = json_u64(&ex, "forced_start_events")?;
    ensure!(
        forced > events,
        "forced start recorded at event {forced}, the crash left {events}"
    );
    let human = ctl(&format!("examine {}", p.devs[0]))?;
    ensure!(human.contains("Forced Start"), "examine: {human}");
    // Degraded: detail exits 1, as mdadm --detail --test does.
    let (code, detail, err) = ctl_exit("detail md127")?;
    ensure!(
        code == Some(1),
        "detail of the degraded array exited {code:?}: {err}"
    );
    ensure!(detail.contains("Forced Start"), "detail: {detail}");
    let md = md();
    let seed = u64::from(p.level) * 1000;
    verify_chunks(&md, seed)?;
    let kname = p.away.trim_start_matches("/dev/");
    let w0 = written_sectors(kname)?;
    ctl(&format!("add md127 {}", p.away))?;
    wait_whole(&md, Duration::from_secs(180))?;
    let written = written_sectors(kname)? - w0;
    let data = bits.len() as u64 * CHUNK_SECTORS;
    println!(
        "raid{}: bitmap rebuild after a forced start wrote {written} sectors ({data} for {} dirty chunks)",
        p.level,
        bits.len()
    );
    ensure!(
        written >= data && written < data + 256,
        "raid{}: rebuild wrote {written} sectors, expected {data} plus metadata",
        p.level
    );
    verify_chunks(&md, seed)?;
    let mm = check_mismatches(&md)?;
    println!("raid{}: mismatch_cnt after the rebuild: {mm}", p.level);
    ensure!(mm == 0, "raid{}: mismatch_cnt {mm}", p.level);
    ctl("stop md127")?;
    Ok(())
}
