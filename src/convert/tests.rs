use super::*;
use crate::assembly::{choose, Candidate};
use crate::format::{read_copies, COPY1_V2_OFFSET};
use crate::md::{Checkpoint, Level};
use crate::meta::{BitmapInfo, DeviceMeta, Geometry, MemberEntry, MemberState, Superblock as Sb};
use crate::sysfs::DevNum;
use crate::units::Bytes;
use uuid::Uuid;

const IMG: usize = 1 << 20;

/// A version 1 raid1 of `n` members with `chunks` bitmap chunks of 64 KiB,
/// dirty, at events 7 (copy 1 holds events 6); every member's bits have the
/// chunks in `dirty` set (chunk 0 on member 0 only, as a member may miss a
/// page write).
fn v1_array(n: usize, chunks: u64, dirty: &[u64]) -> Vec<Vec<u8>> {
    let g = Geometry {
        level: Level::Raid1,
        layout: 0,
        chunk_size: Bytes(0),
        raid_disks: u32::try_from(n).expect("n"),
        component_size: Sectors(chunks * 128),
    };
    let l = format::layout_for(VERSION_1, &g, Bytes(65536)).expect("layout");
    let members: Vec<MemberEntry> = (0..n)
        .map(|i| MemberEntry {
            uuid: Uuid::from_u128(0x100 + i as u128),
            state: MemberState::InSync,
            events: 5,
        })
        .collect();
    let array = ArrayMeta {
        version: VERSION_1,
        uuid: Uuid::from_u128(9),
        name: "conv".into(),
        ctime: 1,
        utime: 1,
        geometry: g,
        events: 7,
        clean: false,
        resync: Checkpoint::None,
        bitmap: BitmapInfo {
            offset: l.bitmap_offset,
            size: l.bitmap_size,
            chunk: Bytes(65536),
            time_base: 5,
            events_cleared: 5,
            mode: BitmapMode::External,
        },
        members,
        forced_start: None,
        write_mostly: Vec::new(),
    };
    (0..n)
        .map(|i| {
            let mut img = vec![0u8; IMG];
            let dev = DeviceMeta {
                uuid: Uuid::from_u128(0x100 + i as u128),
                data_offset: l.data_offset,
                data_size: Sectors(chunks * 128 + 2048),
            };
            for events in [6, 7] {
                let mut a = array.clone();
                a.events = events;
                let e = format::encode(&Sb {
                    array: a,
                    device: dev,
                })
                .expect("encode");
                let o = usize::try_from(e.offset).expect("offset");
                img[o..o + COPY_SIZE].copy_from_slice(&e.bytes);
            }
            let b = usize::try_from(l.bitmap_offset.bytes().0).expect("offset");
            for &c in dirty {
                if c == 0 && i != 0 {
                    continue;
                }
                let c = usize::try_from(c).expect("chunk");
                img[b + c / 8] |= 1 << (c % 8);
            }
            img
        })
        .collect()
}

fn read(img: &[u8]) -> ReadOutcome {
    let hi = usize::try_from(COPY1_V2_OFFSET).expect("offset");
    read_copies(
        &img[..COPY_SIZE],
        &img[COPY_SIZE..2 * COPY_SIZE],
        Some(&img[hi..hi + COPY_SIZE]),
    )
    .expect("every member keeps a valid copy")
}

fn region(img: &[u8], b: &BitmapInfo) -> Vec<u8> {
    let o = usize::try_from(b.offset.bytes().0).expect("offset");
    let n = usize::try_from(b.size.0).expect("size");
    img[o..o + n].to_vec()
}

fn newest(imgs: &[Vec<u8>]) -> ArrayMeta {
    imgs.iter()
        .map(|i| read(i).superblock.array)
        .max_by_key(|a| a.events)
        .expect("members")
}

fn members(imgs: &[Vec<u8>]) -> Vec<Member> {
    let n = newest(imgs);
    imgs.iter()
        .map(|i| Member {
            outcome: read(i),
            bits: region(i, &n.bitmap),
        })
        .collect()
}

fn apply(imgs: &mut [Vec<u8>], w: &Write, torn: bool) {
    let o = usize::try_from(w.offset).expect("offset");
    let len = if torn {
        w.bytes.len() / 2
    } else {
        w.bytes.len()
    };
    imgs[w.member][o..o + len].copy_from_slice(&w.bytes[..len]);
}

/// What assembly sees: every member used (all in sync in the newest
/// record), and each member's bits where that record says identical to
/// before the conversion.
fn assert_assembles(imgs: &[Vec<u8>], bits: &[Vec<u8>], at: &str) {
    let cands: Vec<Candidate> = imgs
        .iter()
        .enumerate()
        .map(|(i, img)| Candidate {
            path: format!("/dev/m{i}").into(),
            dev: DevNum {
                major: 7,
                minor: u32::try_from(i).expect("minor"),
            },
            sb: read(img).superblock,
            size: Bytes(1 << 40),
        })
        .collect();
    let c = choose(cands, false).unwrap_or_else(|e| panic!("{at}: {e}"));
    assert_eq!(c.members.len(), imgs.len(), "{at}: {:?}", c.left_out);
    assert!(!c.meta.clean, "{at}: the record stays dirty");
    for (img, want) in imgs.iter().zip(bits) {
        let got = region(img, &c.meta.bitmap);
        assert!(
            got[..want.len()] == want[..],
            "{at}: bits moved or lost (record v{} offset {})",
            c.meta.version,
            c.meta.bitmap.offset.0
        );
    }
}

fn run_all(imgs: &mut [Vec<u8>]) {
    if let Some(p) = plan(&members(imgs), 2).expect("plan") {
        for w in &p.writes {
            apply(imgs, w, false);
        }
    }
}

fn assert_converted(imgs: &[Vec<u8>]) {
    for img in imgs {
        let r = read(img);
        assert_eq!(r.superblock.array.version, VERSION);
        assert!(r.both_valid() && !r.v1_present, "{r:?}");
    }
    assert!(plan(&members(imgs), 3).expect("plan").is_none());
}

/// Cut after every single write, and in the middle of each (half the
/// bytes written), then assemble, then finish the conversion.
fn cut_everywhere(chunks: u64, expect_relocation: bool) {
    let dirty = [0u64, 3, chunks - 1];
    let start = v1_array(2, chunks, &dirty);
    let bits: Vec<Vec<u8>> = {
        let n = newest(&start);
        start.iter().map(|i| region(i, &n.bitmap)).collect()
    };
    let p = plan(&members(&start), 2).expect("plan").expect("work");
    assert_eq!(p.relocated.is_some(), expect_relocation);
    // 2 records x 2 members + 2 zeroings (+ 2 moves).
    assert_eq!(p.writes.len(), 6 + if expect_relocation { 2 } else { 0 });
    for k in 0..=p.writes.len() {
        for torn in [false, true] {
            if torn && k == p.writes.len() {
                continue;
            }
            let mut imgs = start.clone();
            for w in &p.writes[..k] {
                apply(&mut imgs, w, false);
            }
            if torn {
                apply(&mut imgs, &p.writes[k], true);
            }
            let at = format!(
                "cut after {k} writes{}",
                if torn { " + a torn one" } else { "" }
            );
            assert_assembles(&imgs, &bits, &at);
            run_all(&mut imgs);
            assert_assembles(&imgs, &bits, &format!("{at}, then finished"));
            assert_converted(&imgs);
            // The dirty chunks survive: 0, 3 and the last.
            let n = newest(&imgs);
            let b = region(&imgs[0], &n.bitmap);
            assert_eq!(crate::bitmap::dirty_chunks(&b, chunks), dirty.to_vec());
        }
    }
}

#[test]
fn cut_after_every_write_small_bitmap_stays_in_place() {
    // 938 chunks: version 1's bits at sector 16 are version 2's external
    // region already (md's region is sectors 8-15).
    cut_everywhere(938, false);
}

#[test]
fn cut_after_every_write_large_bitmap_moves() {
    // 40000 chunks: md's region (256 + 5000 bytes) reaches sector 24, over
    // version 1's bits at 16: they move to sector 32, past both.
    cut_everywhere(40_000, true);
}

#[test]
fn converted_array_needs_nothing_and_v2_is_left_alone() {
    let mut imgs = v1_array(3, 100, &[5]);
    run_all(&mut imgs);
    assert_converted(&imgs);
    let r = read(&imgs[1]);
    // Events 7 -> 9 (copy 1 first: odd) -> 10.
    assert_eq!(r.superblock.array.events, 10);
    assert_eq!(r.other_events, Some(9));
    assert_eq!(r.superblock.array.bitmap.mode, BitmapMode::External);
    // The member table is unchanged.
    assert!(r.superblock.array.members.iter().all(|m| m.events == 5));
}

#[test]
fn a_bitmap_over_sector_2040_is_refused() {
    // 9 million chunks: md's region alone passes sector 2040.
    let mut a = read(&v1_array(1, 100, &[])[0]).superblock.array;
    a.geometry.component_size = Sectors(9_000_000 * 128);
    let e = v2_offset(&a, Sectors(1 << 30)).expect_err("no room");
    assert!(e.to_string().contains("do not fit"), "{e}");
    // A version 1 bitmap lying over sector 2040.
    let mut a = read(&v1_array(1, 100, &[])[0]).superblock.array;
    a.bitmap.offset = Sectors(2040);
    let e = v2_offset(&a, Sectors(4096)).expect_err("no room");
    assert!(e.to_string().contains("covers sector 2040"), "{e}");
}
