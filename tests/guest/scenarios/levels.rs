//! Issue 12, items 1 and 5: every raid10 layout, raid5 with a non-default
//! layout and raid6, each with the bitmap geometry of its level; `create
//! ... missing`; write-mostly raid1 members.
//!
//! The expected figures come from md's geometry, with a 64 KiB raid chunk
//! and a 64 KiB bitmap chunk:
//! - raid10 counts bitmap chunks in array sectors (`resync_max_sectors` is
//!   the array size): array chunk `c` is bitmap chunk `c`, and its copies
//!   live on slots `(c * near + i + f * near) mod n` for `i < near`,
//!   `f < far` (`__raid10_find_phys`, offset layouts alike);
//! - raid5 and raid6 count bitmap chunks in member sectors: array chunk `c`
//!   lies in stripe row `c / data_disks`, and a dirty row costs every
//!   member that row (128 sectors), whatever the layout puts there.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{bail, ensure, Context, Result};
use mdext::md::Level;
use mdext::sysfs::MdDev;
use std::path::Path;
use std::time::Duration;

pub static LEVELS_READD: Scenario = Scenario {
    name: "levels_layouts_degraded_readd_exact_missing_write_mostly",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: levels_readd,
        ends: Ends::Ok,
    }],
};

pub static LEVELS_CRASH: Scenario = Scenario {
    name: "levels_crash_bitmap_limited_resync",
    // raid10 o2 on vda-vdd, raid5 left-asymmetric on vde-vdg, raid6
    // right-symmetric on vdh-vdk, raid10 f2 crashed while degraded on
    // vdl-vdo.
    disks: &[24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24],
    phases: &[
        Phase {
            name: "write_crash",
            run: crash_phase1,
            ends: Ends::Crash,
        },
        Phase {
            name: "assemble_resync_check",
            run: crash_phase2,
            ends: Ends::Ok,
        },
    ],
};

/// Sectors per 64 KiB chunk (raid chunk and bitmap chunk alike).
const CS: u64 = 128;

/// Array chunks written while degraded or before the crash.
const DIRTY: [u64; 6] = [0, 1, 2, 6, 31, 77];

/// One array's geometry, as the test computes md's.
struct Geo {
    level: Level,
    layout: u32,
    n: usize,
}

impl Geo {
    fn new(level: u32, layout: &str, n: usize) -> Result<Geo> {
        let level: Level = level.to_string().parse().map_err(anyhow::Error::msg)?;
        let layout = level
            .parse_layout(layout, u32::try_from(n)?)
            .map_err(anyhow::Error::msg)?;
        Ok(Geo { level, layout, n })
    }

    /// The slots holding a copy of array chunk `c` (raid10).
    fn copies(&self, c: u64) -> Vec<usize> {
        let near = (self.layout & 0xff) as usize;
        let far = ((self.layout >> 8) & 0xff) as usize;
        let n = self.n;
        let dev0 = usize::try_from(c).unwrap_or(0) * near % n;
        let mut v: Vec<usize> = (0..near)
            .flat_map(|i| (0..far).map(move |f| (dev0 + i + f * near) % n))
            .collect();
        v.sort_unstable();
        v
    }

    fn data_disks(&self) -> u64 {
        self.n as u64
            - match self.level {
                Level::Raid6 => 2,
                _ => 1,
            }
    }

    /// The bitmap bits `chunks` set.
    fn bits(&self, chunks: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = match self.level {
            Level::Raid10 | Level::Raid1 => chunks.to_vec(),
            _ => chunks.iter().map(|c| c / self.data_disks()).collect(),
        };
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The slots a write of array chunk `c` writes: its copies (raid10),
    /// or its data slot and the parity slots of its row (md's
    /// `raid5_compute_sector` for the layout).
    fn touched(&self, c: u64) -> Vec<usize> {
        if self.level == Level::Raid10 {
            return self.copies(c);
        }
        let n = self.n;
        let dd = self.data_disks();
        let row = usize::try_from(c / dd).unwrap_or(0);
        let mut i = usize::try_from(c % dd).unwrap_or(0);
        let (p, q) = match (self.level, self.layout) {
            // left-asymmetric, right-asymmetric
            (Level::Raid5, 0 | 1) => {
                let p = if self.layout == 0 {
                    n - 1 - row % n
                } else {
                    row % n
                };
                if i >= p {
                    i += 1;
                }
                (p, None)
            }
            // left-symmetric, right-symmetric
            (Level::Raid5, 2 | 3) => {
                let p = if self.layout == 2 {
                    n - 1 - row % n
                } else {
                    row % n
                };
                i = (p + 1 + i) % n;
                (p, None)
            }
            (Level::Raid5, 4) => {
                i += 1;
                (0, None)
            }
            (Level::Raid5, 5) => (n - 1, None),
            (Level::Raid6, 0 | 1) => {
                let p = if self.layout == 0 {
                    n - 1 - row % n
                } else {
                    row % n
                };
                if p == n - 1 {
                    i += 1;
                    (p, Some(0))
                } else {
                    if i >= p {
                        i += 2;
                    }
                    (p, Some(p + 1))
                }
            }
            (Level::Raid6, 2 | 3) => {
                let p = if self.layout == 2 {
                    n - 1 - row % n
                } else {
                    row % n
                };
                i = (p + 2 + i) % n;
                (p, Some((p + 1) % n))
            }
            _ => (usize::MAX, None),
        };
        let mut v = vec![i, p];
        v.extend(q);
        v
    }

    /// Sectors a bitmap rebuild of slot `slot` writes after degraded writes
    /// of `chunks`: md clears a chunk's need for a rebuild when every write
    /// in it reached all the slots it was meant for, so only the bitmap
    /// chunks holding a write meant for `slot` are rebuilt (a whole row of
    /// 128 sectors on raid5 and raid6, the chunk's copy on raid10).
    fn rebuilt(&self, chunks: &[u64], slot: usize) -> u64 {
        let mine: Vec<u64> = chunks
            .iter()
            .copied()
            .filter(|&c| self.touched(c).contains(&slot))
            .collect();
        self.share(&mine, slot)
    }

    /// Sectors of slot `slot` that the dirty `chunks` cover: what a bitmap
    /// resync after a restart reads from it (every bit set counts then).
    fn share(&self, chunks: &[u64], slot: usize) -> u64 {
        match self.level {
            Level::Raid10 => {
                chunks
                    .iter()
                    .filter(|&&c| self.copies(c).contains(&slot))
                    .count() as u64
                    * CS
            }
            _ => self.bits(chunks).len() as u64 * CS,
        }
    }
}

fn md127() -> MdDev {
    sysfs().md("md127")
}

fn levels_readd() -> Result<()> {
    let loops = loop_devices(4, 24)?;
    let path = |i: usize| loops[i].path.display().to_string();
    for (level, layout, n) in [
        (10u32, "n2", 4usize),
        (10, "f2", 4),
        (10, "o2", 4),
        (5, "left-asymmetric", 3),
        (6, "left-symmetric", 4),
    ] {
        let g = Geo::new(level, layout, n)?;
        // --assume-clean below: the members must really be identical
        // (the last array left its own layout's data on them).
        zero(&loops)?;
        let devs: Vec<String> = (0..n).map(path).collect();
        let devs = devs.join(" ");
        let name = format!("r{level}{}", layout.replace('-', ""));
        ctl(&format!(
            "create --level {level} --layout {layout} --raid-devices {n} --name {name} --chunk 64K --bitmap-chunk 64K --time-base 1 --assume-clean --force {devs}"
        ))?;
        let e = examine(&loops[0].path)?;
        ensure!(
            e["layout"] == g.layout && e["layout_name"] == layout,
            "{name}: examine layout {} {}",
            e["layout"],
            e["layout_name"]
        );
        ctl(&format!("assemble {name} {devs}"))?;
        let md = md127();
        ensure!(
            md.read("layout")? == g.layout.to_string(),
            "{name}: md layout {}",
            md.read("layout")?
        );
        wait_until("can_clear true", Duration::from_secs(10), || {
            can_clear_is(&md, true).ok()?.then_some(())
        })?;
        ensure!(
            fail_and_remove(&md, &path(1))? == 1,
            "{name}: not degraded by one"
        );
        write_chunks(&md, &DIRTY, level.into())?;
        std::thread::sleep(Duration::from_secs(3));
        let bits = mode_bits(&loops[0].path)?;
        ensure!(
            bits == g.bits(&DIRTY),
            "{name}: bits {bits:?}, expected {:?}",
            g.bits(&DIRTY)
        );
        let w0 = written_sectors("loop1")?;
        ctl(&format!("add md127 {}", path(1)))?;
        wait_whole(&md)?;
        let written = written_sectors("loop1")? - w0;
        let data = g.rebuilt(&DIRTY, 1);
        println!(
            "{name}: bitmap re-add wrote {written} sectors to slot 1 ({data} expected: {} dirty bits of {} chunks)",
            bits.len(),
            DIRTY.len()
        );
        ensure!(
            written >= data && written < data + 256,
            "{name}: re-add wrote {written} sectors, expected {data} plus metadata"
        );
        verify_chunks(&md, &DIRTY, level.into())?;
        ensure!(check_mismatches(&md)? == 0, "{name}: mismatch_cnt");
        ctl("stop md127")?;
    }
    created_missing(&loops)?;
    zero(&loops)?;
    write_mostly(&loops)?;
    Ok(())
}

/// Zeros over the whole of every loop device.
fn zero(loops: &[Loop]) -> Result<()> {
    let zeros = vec![0u8; 24 << 20];
    for l in loops {
        write_direct(&l.path, 0, &zeros)?;
    }
    Ok(())
}

/// `create ... missing`: the slot is recorded missing, assembly needs
/// --run, `add` fills it with a full rebuild.
fn created_missing(loops: &[Loop]) -> Result<()> {
    let (a, b, c) = (&loops[0].path, &loops[1].path, &loops[2].path);
    ctl(&format!(
        "create --level 5 --layout parity-last --raid-devices 3 --name miss --chunk 64K --bitmap-chunk 64K --time-base 1 --force {} missing {}",
        a.display(),
        c.display()
    ))?;
    let e = examine(a)?;
    ensure!(
        e["members"][1]["state"] == "missing" && e["state"] == "clean",
        "missing slot not recorded: {e}"
    );
    let (ok, _, err) = ctl_status(&format!("assemble miss {} {}", a.display(), c.display()))?;
    ensure!(!ok, "a degraded array started without --run");
    println!("assemble without --run: {}", err.trim());
    ctl(&format!(
        "assemble --run miss {} {}",
        a.display(),
        c.display()
    ))?;
    let md = md127();
    write_chunks(&md, &DIRTY, 50)?;
    let comp = e["component_size_sectors"].as_u64().context("component")?;
    // loop1 still carries the last array's metadata: a blank device.
    write_direct(b, 0, &vec![0u8; 1 << 20])?;
    let w0 = written_sectors("loop1")?;
    ctl(&format!("add md127 {}", b.display()))?;
    wait_whole(&md)?;
    let written = written_sectors("loop1")? - w0;
    println!(
        "missing slot filled: full rebuild wrote {written} sectors ({comp} component sectors)"
    );
    // The metadata area (data offset 2048 sectors) is cleared first.
    ensure!(
        written >= comp && written < comp + 2048 + 512,
        "full rebuild wrote {written} sectors, expected {comp} plus the metadata area"
    );
    let e = examine(b)?;
    ensure!(
        e["members"]
            .as_array()
            .context("members")?
            .iter()
            .all(|m| m["state"] == "in-sync"),
        "not whole after the add: {e}"
    );
    verify_chunks(&md, &DIRTY, 50)?;
    ensure!(check_mismatches(&md)? == 0, "miss: mismatch_cnt");
    ctl("stop md127")?;
    Ok(())
}

/// md's `write_mostly` in `dev-X/state` of md127 for `kname`.
fn md_write_mostly(kname: &str) -> Result<bool> {
    let s = std::fs::read_to_string(format!("/sys/block/md127/md/dev-{kname}/state"))?;
    Ok(s.trim().split(',').any(|w| w == "write_mostly"))
}

/// The write-mostly flags of md127's members as `detail --json` reports
/// them, by table index.
fn detail_write_mostly() -> Result<Vec<bool>> {
    let d: serde_json::Value = serde_json::from_str(&ctl("detail --json md127")?)?;
    Ok(d["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| m["write_mostly"] == true)
        .collect())
}

/// `create --write-mostly`, `add --write-mostly`: recorded, shown, and set
/// in md at every assembly.
fn write_mostly(loops: &[Loop]) -> Result<()> {
    let (a, b) = (&loops[0].path, &loops[1].path);
    ctl(&format!(
        "create --level 1 --raid-devices 2 --name wm --bitmap-chunk 64K --time-base 1 --assume-clean --force --write-mostly {} {} {}",
        b.display(),
        a.display(),
        b.display()
    ))?;
    let ex = ctl(&format!("examine {}", a.display()))?;
    ensure!(ex.matches("write-mostly").count() == 1, "{ex}");
    let e = examine(a)?;
    ensure!(
        e["members"][1]["write_mostly"] == true && e["members"][0]["write_mostly"] == false,
        "examine --json: {}",
        e["members"]
    );
    ctl(&format!("assemble wm {} {}", a.display(), b.display()))?;
    ensure!(
        md_write_mostly("loop1")? && !md_write_mostly("loop0")?,
        "md flags after assembly"
    );
    ensure!(
        detail_write_mostly()? == [false, true],
        "detail after assembly"
    );
    // add --write-mostly flags a member that was not.
    let md = md127();
    wait_until("can_clear true", Duration::from_secs(10), || {
        can_clear_is(&md, true).ok()?.then_some(())
    })?;
    fail_and_remove(&md, &a.display().to_string())?;
    ctl(&format!("add --write-mostly md127 {}", a.display()))?;
    wait_whole(&md)?;
    ensure!(
        md_write_mostly("loop0")? && md_write_mostly("loop1")?,
        "md flags after add --write-mostly"
    );
    ensure!(detail_write_mostly()? == [true, true], "detail after add");
    // After a restart both are set again from the record.
    ctl("stop md127")?;
    ctl(&format!("assemble wm {} {}", a.display(), b.display()))?;
    ensure!(
        md_write_mostly("loop0")? && md_write_mostly("loop1")?,
        "md flags after a restart"
    );
    println!(
        "write-mostly: dev-loop0/state {}, dev-loop1/state {}",
        std::fs::read_to_string("/sys/block/md127/md/dev-loop0/state")?.trim(),
        std::fs::read_to_string("/sys/block/md127/md/dev-loop1/state")?.trim()
    );
    ctl("stop md127")?;
    Ok(())
}

/// (name, level, layout, virtio disks).
const CRASH_ARRAYS: [(&str, u32, &str, &[&str]); 3] = [
    ("c10", 10, "o2", &["vda", "vdb", "vdc", "vdd"]),
    ("c5", 5, "left-asymmetric", &["vde", "vdf", "vdg"]),
    ("c6", 6, "right-symmetric", &["vdh", "vdi", "vdj", "vdk"]),
];

fn devs_of(disks: &[&str]) -> String {
    disks
        .iter()
        .map(|d| format!("/dev/{d}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The md device running array `name`.
fn md_of(name: &str) -> Result<MdDev> {
    let v: serde_json::Value = serde_json::from_str(&ctl("status --json")?)?;
    let md = v
        .as_array()
        .context("status --json")?
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["md"].as_str())
        .with_context(|| format!("{name} not running"))?
        .to_string();
    Ok(sysfs().md(&md))
}

/// The array crashed while degraded: raid10 f2, slot 1 (vdm) failed
/// before the writes.
const DEGRADED: (&str, &str, [&str; 4]) = ("d10", "f2", ["vdl", "vdm", "vdn", "vdo"]);

fn crash_phase1() -> Result<()> {
    // First, so that it is md127 (fail_and_remove).
    let (name, layout, disks) = DEGRADED;
    let devs = devs_of(&disks);
    ctl(&format!(
        "create --level 10 --layout {layout} --raid-devices 4 --name {name} --chunk 64K --bitmap-chunk 64K --time-base 1 --assume-clean {devs}"
    ))?;
    ctl(&format!("assemble {name} {devs}"))?;
    let md = md127();
    wait_until("can_clear true", Duration::from_secs(10), || {
        can_clear_is(&md, true).ok()?.then_some(())
    })?;
    ensure!(
        fail_and_remove(&md, "/dev/vdm")? == 1,
        "d10: not degraded by one"
    );
    write_chunks(&md, &DIRTY, 200)?;
    for (i, (name, level, layout, disks)) in CRASH_ARRAYS.iter().enumerate() {
        let devs = devs_of(disks);
        ctl(&format!(
            "create --level {level} --layout {layout} --raid-devices {} --name {name} --chunk 64K --bitmap-chunk 64K --time-base 60 --assume-clean {devs}",
            disks.len()
        ))?;
        ctl(&format!("assemble {name} {devs}"))?;
        let md = md_of(name)?;
        // Hold the array dirty after the writes.
        md.write("safe_mode_delay", "30")?;
        write_chunks(&md, &DIRTY, 100 + i as u64)?;
    }
    for (name, level, layout, disks) in CRASH_ARRAYS {
        let g = Geo::new(level, layout, disks.len())?;
        let first = format!("/dev/{}", disks[0]);
        // raid10 (external mode): the bits; raid5/6: the dirty record.
        wait_writes_covered(Path::new(&first))?;
        let bits = mode_bits(Path::new(&first))?;
        ensure!(
            bits == g.bits(&DIRTY),
            "{name}: bits {bits:?} before the crash, expected {:?}",
            g.bits(&DIRTY)
        );
    }
    println!("MDEXT-CRASHING");
    sh("echo b > /proc/sysrq-trigger")?;
    std::thread::sleep(Duration::from_secs(30));
    bail!("still alive after sysrq b")
}

/// The array crashed while degraded starts with --run, keeps its bits
/// through the resync, and the returning member gets exactly its share of
/// the dirty chunks: after a restart md needs every bit set, so every
/// dirty chunk with a copy on slot 1.
fn degraded_crash_readd() -> Result<()> {
    let (name, layout, disks) = DEGRADED;
    let g = Geo::new(10, layout, 4)?;
    let first = Path::new("/dev/vdl");
    ensure!(
        mode_bits(first)? == g.bits(&DIRTY),
        "{name}: bits after the crash: {:?}",
        mode_bits(first)?
    );
    let out = ctl(&format!("assemble --run {name} {}", devs_of(&disks)))?;
    println!("{name}: {}", out.trim());
    let md = md127();
    wait_sync_idle(&md, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        mode_bits(first)? == g.bits(&DIRTY),
        "{name}: bits lost while degraded: {:?}",
        mode_bits(first)?
    );
    let w0 = written_sectors("vdm")?;
    ctl("add md127 /dev/vdm")?;
    wait_whole(&md)?;
    let written = written_sectors("vdm")? - w0;
    let data = g.share(&DIRTY, 1);
    println!("{name} (10 {layout}): re-add after a crash while degraded wrote {written} sectors to slot 1 ({data} expected)");
    ensure!(
        written >= data && written < data + 256,
        "{name}: re-add wrote {written} sectors, expected {data} plus metadata"
    );
    verify_chunks(&md, &DIRTY, 200)?;
    ensure!(check_mismatches(&md)? == 0, "{name}: mismatch_cnt");
    ctl("stop md127")?;
    Ok(())
}

fn read_sectors(kname: &str) -> Result<u64> {
    Ok(sysfs().block_stat(kname)?.read_sectors.0)
}

fn crash_phase2() -> Result<()> {
    degraded_crash_readd()?;
    for (i, (name, level, layout, disks)) in CRASH_ARRAYS.iter().enumerate() {
        let g = Geo::new(*level, layout, disks.len())?;
        let first = format!("/dev/{}", disks[0]);
        let bits = mode_bits(Path::new(&first))?;
        ensure!(
            bits == g.bits(&DIRTY),
            "{name}: bits {bits:?} after the crash"
        );
        let r0: Vec<u64> = disks
            .iter()
            .map(|d| read_sectors(d))
            .collect::<Result<_>>()?;
        ctl(&format!("assemble {name} {}", devs_of(disks)))?;
        let md = md_of(name)?;
        wait_sync_idle(&md, Duration::from_secs(120))?;
        wait_until(
            "metadata to record the resync done",
            Duration::from_secs(20),
            || {
                examine(Path::new(&first))
                    .ok()
                    .filter(|e| e["resync_sector"].is_null())
                    .map(|_| ())
            },
        )?;
        let comp = examine(Path::new(&first))?["component_size_sectors"]
            .as_u64()
            .context("component")?;
        for (slot, d) in disks.iter().enumerate() {
            let read = read_sectors(d)? - r0[slot];
            let share = g.share(&DIRTY, slot);
            println!(
                "{name} ({level} {layout}): resync after the crash read {read} sectors of {d} ({share} in the dirty chunks, {comp} in all)"
            );
            // The metadata and the bitmap are read too (a few dozen
            // sectors); a full resync would read the whole component.
            ensure!(
                read >= share && read < share + 512,
                "{name}: {d} read {read} sectors, expected {share} plus metadata"
            );
        }
        verify_chunks(&md, &DIRTY, 100 + i as u64)?;
        ensure!(check_mismatches(&md)? == 0, "{name}: mismatch_cnt");
        ctl(&format!("stop {}", md.name()))?;
    }
    Ok(())
}
