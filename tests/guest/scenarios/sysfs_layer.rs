//! Issue 2: the sysfs layer and the activation order against the real md
//! driver.

use crate::harness::{Ends, Phase, Scenario};
use crate::util::*;
use anyhow::{bail, ensure, Context, Result};
use mdext::assembly::{self, ArraySpec, AssemblyError, BitmapSpec, MemberSpec, StartMode, Step};
use mdext::md::{ArrayState, Checkpoint, Level};
use mdext::units::{Bytes, KiB, Sectors};
use nix::errno::Errno;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

pub static RAID1_EXTERNAL_BITMAP: Scenario = Scenario {
    name: "sysfs_raid1_external_bitmap",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: raid1_external_bitmap,
        ends: Ends::Ok,
    }],
};

pub static WRONG_ORDER: Scenario = Scenario {
    name: "sysfs_wrong_order_is_refused",
    disks: &[],
    phases: &[Phase {
        name: "main",
        run: wrong_order,
        ends: Ends::Ok,
    }],
};

const DATA_OFFSET: Sectors = Sectors(2048); // 1 MiB
const BITMAP_AT: Sectors = Sectors(16); // byte 8192, before the data
const CHUNK: Bytes = Bytes(64 << 10);

fn spec(loops: &[Loop]) -> ArraySpec {
    let size = KiB(63 << 10); // 64 MiB device less the 1 MiB data offset
    ArraySpec {
        md_name: Some("md127".into()),
        metadata_tag: "mdext:test".into(),
        level: Level::Raid1,
        layout: 0,
        chunk_size: Bytes(0),
        raid_disks: u32::try_from(loops.len()).expect("a few loop devices"),
        component_size: size,
        members: loops
            .iter()
            .enumerate()
            .map(|(i, l)| MemberSpec {
                dev: l.dev,
                data_offset: DATA_OFFSET,
                size,
                slot: Some(u32::try_from(i).expect("a few loop devices")),
                write_mostly: false,
            })
            .collect(),
        bitmap: Some(BitmapSpec {
            chunk: CHUNK,
            time_base: 5,
            location: BITMAP_AT,
        }),
        kernel_bitmap: false,
        resync_start: Checkpoint::None,
        start: StartMode::Readonly,
    }
}

fn raid1_external_bitmap() -> Result<()> {
    needs_external_bitmap("the sysfs layer with an external bitmap")?;
    let loops = loop_devices(2, 64)?;
    let sysfs = sysfs();
    let md = assembly::activate(&sysfs, &spec(&loops))?;
    ensure!(
        md.array_state()? == ArrayState::Readonly,
        "not started readonly"
    );
    ensure!(
        md.metadata_version()? == "external:mdext:test",
        "metadata_version {}",
        md.metadata_version()?
    );
    ensure!(
        md.bitmap_location()? == Some(BITMAP_AT),
        "location {:?}",
        md.bitmap_location()?
    );
    ensure!(md.read("bitmap/metadata")? == "external", "bitmap/metadata");
    // Hold the bits so they can be read back (the kernel clears idle bits
    // after about two time_base periods when allowed).
    md.set_can_clear(false)?;
    ensure!(
        md.can_clear()? == Some(false),
        "can_clear did not read back false"
    );
    md.set_array_state(ArrayState::Clean)?;
    let responder = Responder::start(&md)?;

    // Writes: chunk 0, chunks 10-11, chunk 640.
    let dev = md.dev_path();
    let writes: [(u64, usize); 3] = [(0, 64 << 10), (640 << 10, 128 << 10), (40 << 20, 64 << 10)];
    for (i, (off, len)) in writes.iter().enumerate() {
        write_direct(&dev, *off, &pattern(i as u64, *len))?;
    }
    let answered = responder.stop()?;
    ensure!(
        answered >= 1,
        "no write-pending was answered: the first write must block until 'active'"
    );

    // Data reads back through the array and from each mirror directly.
    for (i, (off, len)) in writes.iter().enumerate() {
        let want = pattern(i as u64, *len);
        ensure!(
            read_direct(&dev, *off, *len)? == want,
            "data at {off} differs through {}",
            dev.display()
        );
        for l in &loops {
            let got = read_direct(&l.path, DATA_OFFSET.bytes().0 + off, *len)?;
            ensure!(got == want, "data at {off} differs on {}", l.path.display());
        }
    }
    // The bits are at `location`, on both members, exactly for the chunks
    // written.
    for l in &loops {
        let area = read_direct(&l.path, BITMAP_AT.bytes().0, 4096)?;
        let bits = set_bits(&area);
        ensure!(
            bits == vec![0, 10, 11, 640],
            "bits on {}: {bits:?}",
            l.path.display()
        );
        // Nothing was written between the two areas or before them.
        ensure!(
            read_direct(&l.path, 0, 8192)?.iter().all(|b| *b == 0),
            "bytes before the bitmap changed"
        );
    }
    // mdadm, an independent witness.
    let detail = sh("mdadm --detail /dev/md127")?;
    println!("{detail}");
    for want in [
        "Raid Level : raid1",
        "Raid Devices : 2",
        "Active Devices : 2",
        "Working Devices : 2",
    ] {
        ensure!(detail.contains(want), "mdadm --detail lacks '{want}'");
    }
    let mdstat = std::fs::read_to_string("/proc/mdstat")?;
    ensure!(
        mdstat.contains("md127 : active") && mdstat.contains("super external:mdext:test"),
        "{mdstat}"
    );

    assembly::teardown(&sysfs, &md)?;
    ensure!(
        !Path::new("/sys/block/md127").exists(),
        "md127 still in sysfs"
    );
    let mdstat = std::fs::read_to_string("/proc/mdstat")?;
    ensure!(
        !mdstat.contains("md127"),
        "md127 still in /proc/mdstat: {mdstat}"
    );
    // The members are free again: an exclusive open succeeds.
    for l in &loops {
        mdext::device::Device::open(&l.path, mdext::device::Access::ExclusiveWrite)
            .with_context(|| format!("{} still busy after stop", l.path.display()))?;
    }
    Ok(())
}

fn expect_step_error(
    r: Result<mdext::sysfs::MdDev, AssemblyError>,
    step: fn(&Step) -> bool,
    errno: Errno,
    attr: &str,
) -> Result<()> {
    match r {
        Ok(_) => bail!("a wrong order was accepted"),
        Err(e) => {
            let msg = e.to_string();
            println!("refused as expected: {msg}");
            match &e {
                AssemblyError::Step {
                    step: s,
                    cause: source,
                    rollback,
                    ..
                } => {
                    ensure!(step(s), "failed at an unexpected step: {msg}");
                    ensure!(
                        source.errno() == Some(errno),
                        "errno {:?}, want {errno:?}: {msg}",
                        source.errno()
                    );
                    ensure!(rollback.is_none(), "rollback failed: {msg}");
                }
                _ => bail!("unexpected error kind: {msg}"),
            }
            ensure!(msg.contains(attr), "message does not name {attr}: {msg}");
        }
    }
    ensure!(
        !Path::new("/sys/block/md127").exists(),
        "a half-built md127 was left behind"
    );
    let mdstat = std::fs::read_to_string("/proc/mdstat")?;
    ensure!(!mdstat.contains("md127"), "{mdstat}");
    Ok(())
}

fn wrong_order() -> Result<()> {
    needs_external_bitmap("md's refusals of misordered external-bitmap writes")?;
    let loops = loop_devices(2, 64)?;
    let sysfs = sysfs();
    let good = assembly::plan(&spec(&loops))?;

    // A member added before metadata_version: the kernel imports it as
    // non-persistent and refuses metadata_version with EBUSY.
    let mut steps = good.clone();
    let meta = steps
        .iter()
        .position(|s| matches!(s, Step::MetadataVersion(_)))
        .context("no step")?;
    let m = steps.remove(meta);
    let after_dev = steps
        .iter()
        .position(|s| matches!(s, Step::Size(..)))
        .context("no step")?
        + 1;
    steps.insert(after_dev, m);
    expect_step_error(
        assembly::execute(&sysfs, Some("md127"), &steps),
        |s| matches!(s, Step::MetadataVersion(_)),
        Errno::EBUSY,
        "metadata_version",
    )?;

    // bitmap/location before bitmap/metadata=external: EINVAL.
    let mut steps = good.clone();
    let loc = steps
        .iter()
        .position(|s| matches!(s, Step::BitmapLocation(_)))
        .context("no step")?;
    let l = steps.remove(loc);
    let ext = steps
        .iter()
        .position(|s| *s == Step::BitmapExternal)
        .context("no step")?;
    steps.insert(ext, l);
    expect_step_error(
        assembly::execute(&sysfs, Some("md127"), &steps),
        |s| matches!(s, Step::BitmapLocation(_)),
        Errno::EINVAL,
        "bitmap/location",
    )?;

    // The devices were released by the rollbacks: the right order works.
    let md = assembly::execute(&sysfs, Some("md127"), &good)?;
    ensure!(
        md.array_state()? == ArrayState::Readonly,
        "good order did not start"
    );
    let mut buf = [0u8; 512];
    std::fs::File::open(md.dev_path())?.read_at(&mut buf, 0)?;
    assembly::teardown(&sysfs, &md)?;
    wait_until("md127 gone", Duration::from_secs(5), || {
        (!Path::new("/sys/block/md127").exists()).then_some(())
    })?;
    Ok(())
}
