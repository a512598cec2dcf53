use super::*;
use crate::format::{read_copies, COPY1_V2_OFFSET, COPY_SIZE, VERSION};

/// The metadata of a member image, every copy position read.
fn read_img(img: &[u8]) -> crate::format::ReadOutcome {
    let hi = usize::try_from(COPY1_V2_OFFSET).expect("offset");
    read_copies(
        &img[..COPY_SIZE],
        &img[COPY_SIZE..2 * COPY_SIZE],
        Some(&img[hi..hi + COPY_SIZE]),
    )
    .expect("metadata")
}
use crate::probe::test_signatures as signatures;
use signatures::{assert_blkid_nothing, assert_blkid_type, Sig};
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

fn images(n: usize, size: u64) -> (TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = (0..n)
        .map(|i| {
            let p = dir.path().join(format!("d{i}.img"));
            let f = std::fs::File::create(&p).expect("create");
            f.set_len(size).expect("set_len");
            p
        })
        .collect();
    (dir, paths)
}

/// The whole file, to compare before and after (compared with memcmp:
/// hashing 64 MiB images takes seconds in a debug build). Compare with
/// `assert!(a == b)`, not `assert_eq!`, which would print them.
fn contents(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read")
}

fn raid1(n: u32) -> CreateOptions {
    CreateOptions::new(Level::Raid1, n, "test")
}

#[test]
fn create_raid1_writes_both_copies_and_bitmap() {
    let (_d, paths) = images(2, 64 * MIB);
    let mut o = raid1(2);
    o.bitmap_chunk = Some(Bytes(1 << 20));
    let sbs = plan(&o, &paths).expect("plan").execute().expect("execute");
    assert_eq!(sbs.len(), 2);
    for (i, p) in paths.iter().enumerate() {
        let img = std::fs::read(p).expect("read");
        let r = read_img(&img);
        assert!(r.both_valid(), "{:?}", r.copy_errors);
        assert!(!r.v1_present);
        assert_eq!(r.superblock.array.version, VERSION);
        assert_eq!(
            r.superblock.array.bitmap.mode,
            crate::meta::BitmapMode::External
        );
        assert_eq!(r.copy, 0);
        assert_eq!(r.other_events, Some(1));
        let sb = &r.superblock;
        assert_eq!(sb, &sbs[i]);
        assert_eq!(sb.array.events, 2);
        assert_eq!(sb.array.name, "test");
        assert_eq!(sb.array.geometry.raid_disks, 2);
        assert_eq!(sb.device.data_offset, Sectors(2048));
        assert_eq!(sb.device.data_size, Sectors((64 - 1) * 2048));
        // 63 MiB rounded down to 64 KiB: exact.
        assert_eq!(sb.array.geometry.component_size, Sectors(63 * 2048));
        assert!(!sb.array.clean);
        assert_eq!(sb.array.resync, Checkpoint::At(Sectors(0)));
        assert_eq!(sb.array.bitmap.offset, Sectors(16));
        assert_eq!(sb.array.bitmap.size, Bytes(4096));
        assert_eq!(sb.array.bitmap.chunk, Bytes(1 << 20));
        assert_eq!(sb.array.bitmap.time_base, 5);
        assert_eq!(
            sb.role(),
            crate::meta::Role::Slot(u32::try_from(i).expect("slot"))
        );
        assert!(sb
            .array
            .members
            .iter()
            .all(|m| m.state == MemberState::InSync));
        // 63 chunks: bytes 8192..8199 = 7 x 0xff + 0x7f, nothing after.
        assert_eq!(
            &img[8192..8200],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]
        );
        // The kernel region (sectors 8-15) is zero until a kernel-mode
        // activation writes md's superblock there; copy 1 is at 2040.
        assert!(img[4096..8192].iter().all(|&b| b == 0));
        assert!(img[8200..2040 * 512].iter().all(|&b| b == 0));
        assert!(img[2040 * 512..2048 * 512].iter().any(|&b| b != 0));
        assert!(img[440..512].iter().all(|&b| b == 0));
    }
    assert_eq!(sbs[0].array.uuid, sbs[1].array.uuid);
    assert_ne!(sbs[0].device.uuid, sbs[1].device.uuid);
    assert_eq!(sbs[0].array.members, sbs[1].array.members);
    // Reading through the device layer gives the same.
    let r = crate::device::read_superblock(&paths[1]).expect("read");
    assert_eq!(r.superblock, sbs[1]);
    let d = Device::open(&paths[1], Access::Read).expect("open");
    let bits = d.read_bitmap(&r.superblock.array.bitmap).expect("bitmap");
    assert_eq!(
        bitmap::count_dirty(&bits, r.superblock.array.bitmap_chunks()),
        63
    );
}

#[test]
fn assume_clean_zero_bitmap() {
    let (_d, paths) = images(2, 64 * MIB);
    let mut o = raid1(2);
    o.assume_clean = true;
    o.time_base = 7;
    let sbs = plan(&o, &paths).expect("plan").execute().expect("execute");
    assert!(sbs[0].array.clean);
    assert_eq!(sbs[0].array.resync, Checkpoint::None);
    assert_eq!(sbs[0].array.bitmap.time_base, 7);
    // Default 64 MiB chunk: one chunk.
    assert_eq!(sbs[0].array.bitmap.chunk, DEFAULT_BITMAP_CHUNK);
    assert_eq!(sbs[0].array.bitmap_chunks(), 1);
    let img = std::fs::read(&paths[0]).expect("read");
    assert!(img[8192..2040 * 512].iter().all(|&b| b == 0));
}

#[test]
fn bitmap_none_records_no_bitmap_and_zero_bits() {
    let (_d, paths) = images(2, 64 * MIB);
    let mut o = raid1(2);
    o.bitmap_mode = crate::meta::BitmapMode::None;
    o.bitmap_chunk = Some(Bytes(1 << 20));
    let sbs = plan(&o, &paths).expect("plan").execute().expect("execute");
    assert_eq!(sbs[0].array.bitmap.mode, crate::meta::BitmapMode::None);
    // A full resync is owed; no bit claims anything.
    assert_eq!(sbs[0].array.resync, Checkpoint::At(Sectors(0)));
    let img = std::fs::read(&paths[0]).expect("read");
    assert!(img[8192..2040 * 512].iter().all(|&b| b == 0));
    assert_eq!(read_img(&img).superblock, sbs[0]);
}

#[test]
fn different_sizes_use_the_smallest() {
    let (_d, mut paths) = images(1, 64 * MIB);
    let (_d2, p2) = images(1, 100 * MIB + 12345);
    paths.extend(p2);
    let sbs = plan(&raid1(2), &paths)
        .expect("plan")
        .execute()
        .expect("execute");
    assert_eq!(sbs[0].array.geometry.component_size, Sectors(63 * 2048));
    assert_eq!(
        sbs[1].device.data_size,
        Sectors((100 * MIB + 12345) / 512 - 2048)
    );
}

/// Issue 8, defect 5: IMSM (and DDF, LVM2, ZFS, bcache, LUKS2) went
/// unnoticed by the hand-written table, and `--force` left them behind.
#[test]
fn foreign_signatures_refused_then_forced() {
    for sig in signatures::ALL {
        let (_d, paths) = images(2, 64 * MIB);
        sig.write(&paths[1]);
        assert_blkid_type(&paths[1], sig.blkid_type());
        let before: Vec<Vec<u8>> = paths.iter().map(|p| contents(p)).collect();
        let e = plan(&raid1(2), &paths).expect_err("must refuse");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "{}: carries a signature: {} (",
                paths[1].display(),
                sig.blkid_type()
            )),
            "{sig:?}: {msg}"
        );
        assert!(msg.ends_with("; use --force to overwrite"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let after: Vec<Vec<u8>> = paths.iter().map(|p| contents(p)).collect();
        assert!(before == after, "{sig:?}: refused create wrote");
        let mut o = raid1(2);
        o.force = true;
        let pl = plan(&o, &paths).expect("forced plan");
        assert_eq!(pl.members[1].found.len(), 1, "{sig:?}");
        assert_eq!(pl.members[1].found[0].name, sig.blkid_type());
        pl.execute().expect("execute");
        // The old signature is gone, wherever it was; only mdext remains,
        // and blkid sees nothing.
        assert_blkid_nothing(&paths[1]);
        let d = Device::open(&paths[1], Access::Read).expect("open");
        let found = probe::probe(&d).expect("probe");
        assert_eq!(found.len(), 1, "{sig:?}: {found:?}");
        assert_eq!(found[0].name, probe::MDEXT_NAME);
    }
}

#[test]
fn several_signatures_are_all_named_and_all_wiped() {
    let (_d, paths) = images(2, 64 * MIB);
    Sig::Ddf.write(&paths[0]);
    Sig::Luks2.write(&paths[0]);
    Sig::Bcache.write(&paths[0]);
    let msg = plan(&raid1(2), &paths).expect_err("refuse").to_string();
    assert!(msg.contains(": carries 3 signatures: "), "{msg}");
    for ty in ["ddf_raid_member", "crypto_LUKS", "bcache"] {
        assert!(msg.contains(ty), "{msg}");
    }
    let mut o = raid1(2);
    o.force = true;
    plan(&o, &paths).expect("plan").execute().expect("execute");
    assert_blkid_nothing(&paths[0]);
    assert_blkid_nothing(&paths[1]);
}

#[test]
fn existing_mdext_array_refused_by_name() {
    let (_d, paths) = images(2, 64 * MIB);
    let mut o = raid1(2);
    o.name = "old".into();
    let sbs = plan(&o, &paths).expect("plan").execute().expect("execute");
    let msg = plan(&raid1(2), &paths).expect_err("refuse").to_string();
    assert!(msg.contains("mdext array"), "{msg}");
    assert!(msg.contains("name old"), "{msg}");
    assert!(msg.contains(&sbs[0].array.uuid.to_string()), "{msg}");
}

#[test]
fn too_small_refused() {
    let (_d, mut paths) = images(1, 64 * MIB);
    let (_d2, small) = images(1, 5 * MIB - 4096);
    paths.extend(small);
    let msg = plan(&raid1(2), &paths).expect_err("too small").to_string();
    assert!(msg.contains("d0.img: too small"), "{msg}");
    assert!(msg.contains(&format!("need at least {}", 5 * MIB)), "{msg}");
    // Exactly the minimum works.
    let (_d3, ok) = images(2, 5 * MIB);
    plan(&raid1(2), &ok).expect("minimum size");
}

/// A stripe chunk larger than the data area: the component size rounds to
/// 0 chunks. The refusal gave the 5 MiB minimum as the need ("67108864
/// bytes, need at least 5242880"), which the device plainly exceeds.
#[test]
fn chunk_larger_than_the_data_area_names_the_real_need() {
    let (_d, paths) = images(3, 64 * MIB);
    let mut o = CreateOptions::new(Level::Raid5, 3, "test");
    o.chunk = Some(Bytes(64 * MIB));
    let msg = plan(&o, &paths).expect_err("too small").to_string();
    let need = 64 * MIB + MIB;
    assert!(
        msg.contains(&format!(
            "too small: {} bytes, need at least {need} bytes",
            64 * MIB
        )),
        "{msg}"
    );
    assert!(paths.iter().all(|p| contents(p).iter().all(|&b| b == 0)));
    // One chunk of data fits: accepted.
    let (_d2, ok) = images(3, need);
    plan(&o, &ok).expect("one chunk of data");
}

#[test]
fn duplicates_refused() {
    let (d, paths) = images(2, 64 * MIB);
    let same = vec![paths[0].clone(), paths[0].clone()];
    let e = plan(&raid1(2), &same).expect_err("dup");
    assert!(matches!(e, CreateError::Duplicate { .. }), "{e}");
    // Through a symlink and through a hard link.
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&paths[0], &link).expect("symlink");
    let e = plan(&raid1(2), &[paths[0].clone(), link]).expect_err("dup");
    assert!(matches!(e, CreateError::Duplicate { .. }), "{e}");
    let hard = d.path().join("hard");
    std::fs::hard_link(&paths[0], &hard).expect("hard link");
    let e = plan(&raid1(2), &[paths[0].clone(), hard.clone()]).expect_err("dup");
    assert!(matches!(e, CreateError::Duplicate { .. }), "{e}");
    assert!(e.to_string().contains("hard: same device as"), "{e}");
}

#[test]
fn option_checks() {
    let (_d, paths) = images(3, 64 * MIB);
    let e = plan(&raid1(2), &paths).expect_err("count");
    assert_eq!(
        e.to_string(),
        "--raid-devices is 2 but 3 devices were given"
    );
    let e = plan(&raid1(1), &paths[..1]).expect_err("raid1 of 1");
    assert!(e.to_string().starts_with("--raid-devices 1:"), "{e}");
    for bad in ["", "a b", "-x", "a/b", "123456789012345678901234567890123"] {
        let mut o = raid1(3);
        o.name = bad.into();
        let e = plan(&o, &paths).expect_err("name");
        assert!(e.to_string().starts_with("--name"), "{bad}: {e}");
    }
    let mut o = raid1(3);
    o.bitmap_chunk = Some(Bytes(1000));
    assert!(plan(&o, &paths)
        .expect_err("chunk")
        .to_string()
        .starts_with("--bitmap-chunk 1000:"));
    let mut o = raid1(3);
    o.time_base = 0;
    assert!(plan(&o, &paths)
        .expect_err("tb")
        .to_string()
        .starts_with("--time-base 0:"));
    let mut o = raid1(3);
    o.chunk = Some(Bytes(65536));
    assert!(plan(&o, &paths).is_err());
    let e = plan(
        &raid1(3),
        &[&paths[0], &paths[1], &PathBuf::from("/nonexistent/x")],
    )
    .expect_err("missing");
    assert!(e.to_string().contains("/nonexistent/x: no such"), "{e}");
}

#[test]
fn failed_check_on_last_device_writes_nothing() {
    let (_d, paths) = images(4, 64 * MIB);
    // Give every image some recognisable non-zero content first.
    for p in &paths {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("open");
        f.write_all_at(&[0x5a; 20000], 100).expect("write");
        f.write_all_at(&[0x5a; 4096], 10 * MIB).expect("write");
    }
    // An IMSM anchor at the end of the last device.
    Sig::Imsm.write(&paths[3]);
    let before: Vec<Vec<u8>> = paths.iter().map(|p| contents(p)).collect();
    let e = plan(&raid1(4), &paths).expect_err("imsm on the last");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: carries a signature: isw_raid_member (Intel IMSM RAID member, at byte {}); \
             use --force to overwrite",
            paths[3].display(),
            64 * MIB - 1024
        )
    );
    // A device that fails to open at the end.
    let mut with_missing = paths[..3].to_vec();
    with_missing.push(PathBuf::from("/nonexistent"));
    plan(&raid1(4), &with_missing).expect_err("missing");
    let after: Vec<Vec<u8>> = paths.iter().map(|p| contents(p)).collect();
    assert!(before == after, "a refused create wrote");
}

#[test]
fn raid5_and_raid10_geometry() {
    let (_d, paths) = images(4, 64 * MIB);
    let mut o = CreateOptions::new(Level::Raid10, 4, "r10");
    o.chunk = Some(Bytes(64 << 10));
    o.bitmap_chunk = Some(Bytes(1 << 20));
    let sbs = plan(&o, &paths).expect("plan").execute().expect("execute");
    let g = sbs[0].array.geometry;
    assert_eq!(g.layout, 0x102);
    assert_eq!(g.component_size, Sectors(63 * 2048));
    // near-2 over 4 disks: the bitmap spans 2 x component.
    assert_eq!(sbs[0].array.bitmap_chunks(), 126);
    let mut o = CreateOptions::new(Level::Raid5, 3, "r5");
    o.force = true;
    let sbs = plan(&o, &paths[..3])
        .expect("plan")
        .execute()
        .expect("execute");
    assert_eq!(sbs[0].array.geometry.chunk_size, DEFAULT_CHUNK);
    assert_eq!(sbs[0].array.geometry.component_size.0 % 1024, 0);
}

#[test]
fn layouts_are_recorded_and_nonsense_refused() {
    let (_d, paths) = images(4, 40 * MIB);
    for (level, spelled, code) in [
        (Level::Raid10, "f2", 0x201),
        (Level::Raid10, "o2", 0x10201),
        (Level::Raid5, "right-asymmetric", 1),
        (Level::Raid6, "left-symmetric-6", 18),
    ] {
        let mut o = CreateOptions::new(level, 4, "lay");
        o.chunk = Some(Bytes(64 << 10));
        o.layout = Some(parse_layout(level, spelled, 4).expect("layout"));
        o.force = true;
        let sbs = plan(&o, &paths).expect("plan").execute().expect("execute");
        let g = sbs[0].array.geometry;
        assert_eq!(g.layout, code, "{level} {spelled}");
        assert_eq!(level.layout_name(g.layout), spelled);
        // raid10 far copies: whole chunks x far copies per member.
        if level == Level::Raid10 {
            assert_eq!(g.component_size.0 % (2 * 128), 0);
            // The bitmap covers the array: 4 members x component / 2 copies.
            assert_eq!(g.bitmap_span().0, g.component_size.0 * 2);
        } else {
            assert_eq!(g.bitmap_span(), g.component_size);
        }
    }
    let e = parse_layout(Level::Raid10, "n5", 4)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--layout: raid10 layout 'n5': 5 copies need at least 5 devices, the array has 4"
    );
    let e = parse_layout(Level::Raid5, "left-symmetric-6", 4)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "--layout: unknown raid5 layout 'left-symmetric-6' (one of left-asymmetric, "
        ),
        "{e}"
    );
    let mut o = raid1(2);
    o.layout = Some(0);
    let e = plan(&o, &paths[..2]).unwrap_err().to_string();
    assert_eq!(e, "--layout: raid1 has no layout");
    let mut o = CreateOptions::new(Level::Raid10, 4, "x");
    o.layout = Some(0x101);
    let e = plan(&o, &paths).unwrap_err().to_string();
    assert_eq!(
        e,
        "--layout: 257 is not a raid10 layout md runs on 4 devices"
    );
}

#[test]
fn missing_slots_are_recorded_missing() {
    let (_d, paths) = images(3, 40 * MIB);
    let mut devs: Vec<PathBuf> = paths.clone();
    devs.insert(1, PathBuf::from(MISSING));
    // raid5 of 4 with slot 1 missing: nothing to resync, clean.
    let o = CreateOptions::new(Level::Raid5, 4, "deg");
    let sbs = plan(&o, &devs).expect("plan").execute().expect("execute");
    assert_eq!(sbs.len(), 3);
    let a = &sbs[0].array;
    assert_eq!(a.members[1].state, MemberState::Missing);
    assert!(a.members[1].uuid.is_nil());
    assert!(a.clean);
    assert_eq!(a.resync, Checkpoint::None);
    assert_eq!(sbs[1].role(), crate::meta::Role::Slot(2));
    // raid10 n2 of 4 with slot 0 and 2 missing runs; 0 and 1 does not.
    let mut o = CreateOptions::new(Level::Raid10, 4, "deg");
    o.force = true;
    let two = [
        PathBuf::from(MISSING),
        paths[0].clone(),
        PathBuf::from(MISSING),
        paths[1].clone(),
    ];
    let sbs = plan(&o, &two).expect("plan").execute().expect("execute");
    assert!(!sbs[0].array.clean, "raid10 resyncs what it can");
    let bad = [
        PathBuf::from(MISSING),
        PathBuf::from(MISSING),
        paths[0].clone(),
        paths[1].clone(),
    ];
    let e = plan(&o, &bad).unwrap_err().to_string();
    assert_eq!(
        e,
        "raid10 n2 cannot run with slots 0, 1 missing; give fewer 'missing'"
    );
    // raid6 with one missing would need a degraded resync.
    let mut o = CreateOptions::new(Level::Raid6, 4, "deg");
    o.force = true;
    let e = plan(&o, &devs).unwrap_err().to_string();
    assert!(e.starts_with("raid6 with one slot missing"), "{e}");
    o.assume_clean = true;
    plan(&o, &devs).expect("raid6 with --assume-clean");
}

#[test]
fn write_mostly_members_are_recorded() {
    let (_d, paths) = images(2, 40 * MIB);
    let mut o = raid1(2);
    o.write_mostly = vec![paths[1].clone()];
    let sbs = plan(&o, &paths).expect("plan").execute().expect("execute");
    let a = &sbs[0].array;
    assert_eq!(a.write_mostly, vec![sbs[1].device.uuid]);
    let r = read_img(&std::fs::read(&paths[0]).expect("read"));
    assert!(r.superblock.array.is_write_mostly(&sbs[1].device.uuid));
    assert!(!r.superblock.array.is_write_mostly(&sbs[0].device.uuid));
    let mut o = raid1(2);
    o.force = true;
    o.write_mostly = vec![PathBuf::from("/nonexistent")];
    let e = plan(&o, &paths).unwrap_err().to_string();
    assert_eq!(
        e,
        "--write-mostly /nonexistent: is not one of the devices given"
    );
    let mut o = CreateOptions::new(Level::Raid10, 2, "x");
    o.force = true;
    o.write_mostly = vec![paths[0].clone()];
    let e = plan(&o, &paths).unwrap_err().to_string();
    assert!(
        e.ends_with("only raid1 members can be write-mostly, not raid10"),
        "{e}"
    );
}

/// Both merged features together: a slot given as 'missing' and a spare
/// after the slots; the spare fills no slot at create. 'missing' among the
/// spares and --write-mostly naming a spare are refused.
#[test]
fn missing_slots_and_spares_together() {
    let (_d, paths) = images(3, 40 * MIB);
    let devs = [
        paths[0].clone(),
        PathBuf::from(MISSING),
        paths[1].clone(),
        paths[2].clone(),
    ];
    // raid5 of 3 with slot 1 missing, and one spare.
    let mut o = CreateOptions::new(Level::Raid5, 3, "degsp");
    o.spare_devices = 1;
    let sbs = plan(&o, &devs).expect("plan").execute().expect("execute");
    assert_eq!(sbs.len(), 3);
    let a = &sbs[0].array;
    assert_eq!(a.members.len(), 4);
    assert_eq!(a.members[0].state, MemberState::InSync);
    assert_eq!(a.members[1].state, MemberState::Missing);
    assert!(a.members[1].uuid.is_nil());
    assert_eq!(a.members[2].state, MemberState::InSync);
    assert_eq!(a.members[3].state, MemberState::Spare);
    assert_eq!(a.members[3].uuid, sbs[2].device.uuid);
    assert_eq!(a.members[2].uuid, sbs[1].device.uuid);
    assert!(
        a.clean,
        "a parity level with a slot missing resyncs nothing"
    );
    // 'missing' is a slot, never a spare.
    let mut o = raid1(2);
    o.force = true;
    o.spare_devices = 1;
    let bad = [paths[0].clone(), paths[1].clone(), PathBuf::from(MISSING)];
    let e = plan(&o, &bad).unwrap_err().to_string();
    assert!(e.starts_with("spare 0 (device 2) is 'missing'"), "{e}");
    // Write-mostly is for a device in a slot.
    let mut o = raid1(2);
    o.force = true;
    o.spare_devices = 1;
    o.write_mostly = vec![paths[2].clone()];
    let e = plan(&o, &paths).unwrap_err().to_string();
    assert!(
        e.ends_with("is a spare; write-mostly is for a device in a slot"),
        "{e}"
    );
    o.write_mostly = vec![paths[1].clone()];
    let sbs = plan(&o, &paths).expect("plan").execute().expect("execute");
    assert_eq!(sbs[0].array.write_mostly, vec![sbs[1].device.uuid]);
    assert_eq!(sbs[0].array.members[2].state, MemberState::Spare);
}
