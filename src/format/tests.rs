use super::*;
use proptest::prelude::*;

fn uuid(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

/// A valid 2-disk raid1 superblock for device slot 0, format version 1
/// (the tests of the copy rules use version 1's 8192-byte area; version 2's
/// own tests are in `v2_*`).
pub(crate) fn sample() -> Superblock {
    let component = Sectors(120_000);
    let g = Geometry {
        level: Level::Raid1,
        layout: 0,
        chunk_size: Bytes(0),
        raid_disks: 2,
        component_size: component,
    };
    let l = layout_for(VERSION_1, &g, Bytes(65536)).expect("layout");
    Superblock {
        array: ArrayMeta {
            version: VERSION_1,
            uuid: uuid(0xaa),
            name: "data".into(),
            ctime: 1_700_000_000,
            utime: 1_700_000_100,
            geometry: g,
            events: 2,
            clean: false,
            resync: Checkpoint::At(Sectors(0)),
            bitmap: BitmapInfo {
                offset: l.bitmap_offset,
                size: l.bitmap_size,
                chunk: Bytes(65536),
                time_base: 5,
                events_cleared: 2,
                mode: crate::meta::BitmapMode::External,
            },
            members: vec![
                MemberEntry {
                    uuid: uuid(1),
                    state: MemberState::InSync,
                    events: 2,
                },
                MemberEntry {
                    uuid: uuid(2),
                    state: MemberState::InSync,
                    events: 2,
                },
            ],
            forced_start: None,
            write_mostly: Vec::new(),
        },
        device: DeviceMeta {
            uuid: uuid(1),
            data_offset: l.data_offset,
            data_size: Sectors(120_100),
        },
    }
}

fn area_of(copies: &[&Superblock]) -> Vec<u8> {
    let mut area = vec![0u8; META_AREA];
    for sb in copies {
        let e = encode(sb).expect("encode");
        let o = e.index * COPY_SIZE;
        area[o..o + COPY_SIZE].copy_from_slice(&e.bytes);
    }
    area
}

#[test]
fn layout_numbers() {
    let sb = sample();
    let e = encode(&sb).expect("encode");
    assert_eq!(e.index, 0);
    let b = &e.bytes;
    assert_eq!(&b[0..8], b"MDEXT\x00SB");
    assert_eq!(&b[8..12], &1u32.to_le_bytes());
    assert_eq!(&b[12..16], &4096u32.to_le_bytes());
    assert_eq!(&b[16..20], &0u32.to_le_bytes());
    assert_eq!(&b[24..32], &2u64.to_le_bytes());
    assert_eq!(&b[32..48], &[0xaa; 16]);
    assert_eq!(&b[48..64], &[1; 16]);
    assert_eq!(&b[64..68], b"data");
    assert!(b[68..96].iter().all(|&x| x == 0));
    assert_eq!(&b[112..116], &1u32.to_le_bytes());
    assert_eq!(&b[124..128], &2u32.to_le_bytes());
    assert_eq!(&b[128..136], &120_000u64.to_le_bytes());
    assert_eq!(&b[136..144], &2048u64.to_le_bytes());
    assert_eq!(&b[156..160], &2u32.to_le_bytes());
    assert_eq!(&b[160..168], &0u64.to_le_bytes());
    assert_eq!(&b[168..176], &16u64.to_le_bytes());
    assert_eq!(&b[176..184], &4096u64.to_le_bytes());
    assert_eq!(&b[184..188], &65536u32.to_le_bytes());
    assert_eq!(&b[188..192], &5u32.to_le_bytes());
    assert!(b[440..512].iter().all(|&x| x == 0));
    assert_eq!(&b[512..528], &[1; 16]);
    assert_eq!(b[528], state_code::IN_SYNC);
    assert_eq!(&b[560..576], &[2; 16]);
    assert!(b[512 + 2 * 48..4092].iter().all(|&x| x == 0));
    assert_eq!(
        u32::from_le_bytes([b[4092], b[4093], b[4094], b[4095]]),
        crc32c::crc32c(&b[..4092])
    );
    let mut sb3 = sb.clone();
    sb3.array.events = 3;
    assert_eq!(encode(&sb3).expect("encode").index, 1);
}

#[test]
fn layout_helper() {
    let mut g = sample().array.geometry;
    // 120000 sectors / 64K chunk = 938 chunks -> 118 bytes -> 4096.
    let layout = |g: &Geometry, c| layout_for(VERSION_1, g, c);
    let l = layout(&g, Bytes(65536)).expect("layout");
    assert_eq!(l.bitmap_offset, Sectors(16));
    assert_eq!(l.bitmap_size, Bytes(4096));
    assert_eq!(l.data_offset, Sectors(2048));
    // 1 TiB with 512 B chunks: 2^31 chunks -> 256 MiB of bitmap.
    g.component_size = Sectors(1 << 31);
    let l = layout(&g, Bytes(512)).expect("layout");
    assert_eq!(l.bitmap_size, Bytes(1 << 28));
    assert_eq!(l.data_offset, Bytes((1 << 28) + (1 << 20)).sectors_floor());
    // Bitmap exactly filling up to 1 MiB - 8 KiB stays at 1 MiB.
    g.component_size = Sectors(((1u64 << 20) - 8192) * 8);
    let l = layout(&g, Bytes(512)).expect("layout");
    assert_eq!(l.bitmap_size, Bytes((1 << 20) - 8192));
    assert_eq!(l.data_offset, Sectors(2048));
    g.component_size = Sectors(g.component_size.0 + 1);
    let l = layout(&g, Bytes(512)).expect("layout");
    assert_eq!(l.data_offset, Sectors(4096));
    // raid10 near-2 over 4 disks: bitmap spans 2x component.
    let g10 = Geometry {
        level: Level::Raid10,
        layout: 0x102,
        chunk_size: Bytes(65536),
        raid_disks: 4,
        component_size: Sectors(1 << 20),
    };
    let chunks = meta::bitmap_chunks(g10.bitmap_span(), Bytes(65536));
    assert_eq!(
        chunks,
        2 * meta::bitmap_chunks(g10.component_size, Bytes(65536))
    );
    assert!(layout(&g10, Bytes(1000)).is_err());
    assert!(layout(&g10, Bytes(256)).is_err());
}

#[test]
fn roundtrip_and_reader_choice() {
    let s2 = sample();
    let mut s3 = s2.clone();
    s3.array.events = 3;
    s3.array.clean = true;
    let area = area_of(&[&s2, &s3]);
    let r = read_area(&area).expect("read");
    assert_eq!(r.copy, 1);
    assert_eq!(r.superblock, s3);
    assert!(r.both_valid());
    assert_eq!(r.other_events, Some(2));
    let mut s4 = s3.clone();
    s4.array.events = 4;
    let area = area_of(&[&s3, &s4]);
    let r = read_area(&area).expect("read");
    assert_eq!(r.copy, 0);
    assert_eq!(r.superblock.array.events, 4);
}

#[test]
fn one_corrupt_byte_in_either_copy() {
    let s2 = sample();
    let mut s3 = s2.clone();
    s3.array.events = 3;
    let clean = area_of(&[&s2, &s3]);
    for (pos, survivor, events) in [(4096 + 100, 0usize, 2u64), (100, 1, 3)] {
        let mut area = clean.clone();
        area[pos] ^= 0x01;
        let r = read_area(&area).expect("read");
        assert_eq!(r.copy, survivor);
        assert_eq!(r.superblock.array.events, events);
        let bad = 1 - survivor;
        assert!(
            matches!(r.copy_errors[bad], Some(FormatError::Checksum { .. })),
            "{:?}",
            r.copy_errors
        );
        assert!(r.copy_errors[survivor].is_none());
        assert_eq!(r.other_events, None);
    }
    // Corrupt the CRC itself and the zero zone.
    let mut area = clean.clone();
    area[4096 + 4095] ^= 0x80;
    assert_eq!(read_area(&area).expect("read").copy, 0);
    let mut area = clean.clone();
    area[511] = 0x55;
    let r = read_area(&area).expect("read");
    assert_eq!(r.copy, 1);
    assert!(matches!(
        r.copy_errors[0],
        Some(FormatError::Checksum { .. })
    ));
}

#[test]
fn torn_write_falls_back_to_older_copy() {
    // Copy 1 holds events 3; events 5 is being written over it and only
    // the first half reached the disk.
    let s3 = {
        let mut s = sample();
        s.array.events = 3;
        s
    };
    let s4 = {
        let mut s = s3.clone();
        s.array.events = 4;
        s
    };
    let mut s5 = s4.clone();
    s5.array.events = 5;
    s5.array.clean = true;
    s5.array.members[1].state = MemberState::Failed;
    s5.array.members[1].events = 5;
    let mut area = area_of(&[&s4, &s3]);
    let new = encode(&s5).expect("encode");
    assert_eq!(new.index, 1);
    area[4096..4096 + 2048].copy_from_slice(&new.bytes[..2048]);
    let r = read_area(&area).expect("read");
    assert_eq!(r.copy, 0);
    assert_eq!(r.superblock, s4);
    assert!(matches!(
        r.copy_errors[1],
        Some(FormatError::Checksum { .. })
    ));
}

#[test]
fn both_bad_and_absent() {
    assert_eq!(read_area(&vec![0u8; META_AREA]), Err(ReadError::NoMetadata));
    let mut junk = vec![0x5au8; META_AREA];
    junk[0] = 1;
    assert_eq!(read_area(&junk), Err(ReadError::NoMetadata));
    let mut area = area_of(&[&sample()]);
    // copy 1 blank, copy 0 corrupted
    area[200] = 1;
    match read_area(&area) {
        Err(ReadError::BothBad { copy0, copy1 }) => {
            assert!(matches!(*copy0, FormatError::Checksum { .. }));
            assert_eq!(*copy1, FormatError::Blank);
        }
        other => panic!("{other:?}"),
    }
    let msg = read_area(&area).expect_err("bad").to_string();
    assert!(msg.contains("copy 0: checksum mismatch"), "{msg}");
    assert_eq!(read_area(&area[..100]), Err(ReadError::BufferSize(100)));
}

#[test]
fn copy_at_wrong_position() {
    let e = encode(&sample()).expect("encode");
    assert_eq!(e.index, 0);
    assert_eq!(
        decode_copy(&e.bytes, 1),
        Err(FormatError::WrongCopy {
            found_at: 1,
            recorded: 0
        })
    );
    let mut area = vec![0u8; META_AREA];
    area[4096..].copy_from_slice(&e.bytes);
    match read_area(&area) {
        Err(ReadError::BothBad { copy0, copy1 }) => {
            assert_eq!(*copy0, FormatError::Blank);
            assert!(matches!(*copy1, FormatError::WrongCopy { .. }));
        }
        other => panic!("{other:?}"),
    }
}

/// Re-seal a hand-modified copy so the checksum is right.
fn reseal(b: &mut [u8]) {
    let crc = checksum(b);
    b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
}

fn decode_patched(patch: impl FnOnce(&mut Vec<u8>)) -> Result<Superblock, FormatError> {
    let mut b = encode(&sample()).expect("encode").bytes;
    patch(&mut b);
    reseal(&mut b);
    decode_copy(&b, 0)
}

fn assert_field(r: Result<impl fmt::Debug, FormatError>, name: &str, value: &str) {
    match r {
        Err(FormatError::Field {
            field,
            value: v,
            reason,
        }) => {
            assert_eq!(field, name, "value {v}: {reason}");
            assert_eq!(v, value, "{field}: {reason}");
            let msg = FormatError::Field {
                field,
                value: v.clone(),
                reason,
            }
            .to_string();
            assert!(msg.starts_with(&format!("{name} = {value}")), "{msg}");
        }
        other => panic!("expected a {name} error, got {other:?}"),
    }
}

/// Write-mostly: bit 0 of a member entry's flags, on raid1 entries with a
/// device only; a copy without it is what earlier writers wrote.
#[test]
fn write_mostly_flag() {
    let mut sb = sample();
    let plain = encode(&sb).expect("encode").bytes;
    assert_eq!(get_u16(&plain, TABLE_OFFSET + ENTRY_SIZE + off::E_FLAGS), 0);
    sb.array.write_mostly = vec![uuid(2)];
    let b = encode(&sb).expect("encode").bytes;
    assert_eq!(get_u16(&b, TABLE_OFFSET + off::E_FLAGS), 0);
    assert_eq!(get_u16(&b, TABLE_OFFSET + ENTRY_SIZE + off::E_FLAGS), 1);
    let back = decode_copy(&b, 0).expect("decode");
    assert_eq!(back, sb);
    assert!(back.array.is_write_mostly(&uuid(2)));
    assert!(!back.array.is_write_mostly(&uuid(1)));
    // A UUID that has left the table is not written.
    sb.array.write_mostly = vec![uuid(77)];
    let b = encode(&sb).expect("encode").bytes;
    assert!(
        b == plain,
        "a stale write-mostly UUID changes nothing on disk"
    );
    // Not on an entry without a device.
    let mut missing = sample();
    missing.array.members[1] = MemberEntry {
        uuid: Uuid::nil(),
        state: MemberState::Missing,
        events: 2,
    };
    let mut b = encode(&missing).expect("encode").bytes;
    put_u16(&mut b, TABLE_OFFSET + ENTRY_SIZE + off::E_FLAGS, 1);
    reseal(&mut b);
    assert_field(decode_copy(&b, 0), "member.flags", "0x1");
    // Only raid1.
    let mut r5 = sample();
    r5.array.geometry.level = Level::Raid5;
    r5.array.geometry.layout = 2;
    r5.array.geometry.raid_disks = 2;
    r5.array.geometry.chunk_size = Bytes(65536);
    r5.array.geometry.component_size = Sectors(r5.array.geometry.component_size.0 / 128 * 128);
    encode(&r5).expect("a raid5 record");
    r5.array.write_mostly = vec![uuid(1)];
    assert_field(encode(&r5), "member.flags", "write-mostly");
}

/// The forced-start field: optional in version 1, announced by its flag.
#[test]
fn forced_start_field() {
    // A record without it is what earlier version 1 writers wrote: flags 0,
    // bytes 200.. zero; it still reads.
    let plain = encode(&sample()).expect("encode").bytes;
    assert_eq!(get_u32(&plain, off::FLAGS), 0);
    assert!(plain[200..ZERO_END].iter().all(|&x| x == 0));
    assert_eq!(
        decode_copy(&plain, 0)
            .expect("old record")
            .array
            .forced_start,
        None
    );
    // With it: flag bit 0 and the event at byte 200; round trip.
    let mut sb = sample();
    sb.array.events = 4;
    sb.array.forced_start = Some(3);
    let e = encode(&sb).expect("encode");
    assert_eq!(get_u32(&e.bytes, off::FLAGS), flag::FORCED_START);
    assert_eq!(get_u64(&e.bytes, off::FORCED_START), 3);
    assert_eq!(decode_copy(&e.bytes, 0).expect("decode"), sb);
    // Out of range on encode.
    sb.array.forced_start = Some(5);
    assert_field(encode(&sb), "forced_start", "5");
    sb.array.forced_start = Some(0);
    assert_field(encode(&sb), "forced_start", "0");
    // Flag without the event, event without the flag, unknown flag bits.
    assert_field(
        decode_patched(|b| put_u32(b, off::FLAGS, flag::FORCED_START)),
        "forced_start",
        "0",
    );
    assert_eq!(
        decode_patched(|b| put_u64(b, off::FORCED_START, 2)),
        Err(FormatError::Reserved {
            offset: 200,
            value: 2
        })
    );
    assert_field(
        decode_patched(|b| put_u32(b, off::FLAGS, 3)),
        "flags",
        "0x3",
    );
}

#[test]
fn decode_header_checks() {
    assert_eq!(
        decode_patched(|b| b[0] = b'X'),
        Err(FormatError::BadMagic(*b"XDEXT\x00SB"))
    );
    assert_eq!(
        decode_patched(|b| put_u32(b, off::VERSION, 3)),
        Err(FormatError::UnsupportedVersion(3))
    );
    // Version 1 has no bitmap_mode: the bytes are reserved.
    assert!(matches!(
        decode_patched(|b| put_u32(b, off::BITMAP_MODE, 2)),
        Err(FormatError::Reserved { offset: 208, .. })
    ));
    assert_field(
        decode_patched(|b| put_u32(b, off::COPY_SIZE, 512)),
        "copy_size",
        "512",
    );
    assert_field(
        decode_patched(|b| put_u32(b, off::FLAGS, 4)),
        "flags",
        "0x4",
    );
    assert_eq!(
        decode_patched(|b| b[300] = 7),
        Err(FormatError::Reserved {
            offset: 300,
            value: 7
        })
    );
    assert_eq!(
        decode_patched(|b| b[510] = 0x55),
        Err(FormatError::Reserved {
            offset: 510,
            value: 0x55
        })
    );
    assert_eq!(
        decode_patched(|b| b[4000] = 1),
        Err(FormatError::Reserved {
            offset: 4000,
            value: 1
        })
    );
    // Name padding must be zero after the NUL.
    assert_eq!(
        decode_patched(|b| b[off::NAME + 10] = b'x'),
        Err(FormatError::Reserved {
            offset: off::NAME + 10,
            value: b'x'
        })
    );
    assert_field(decode_patched(|b| b[off::NAME] = 0xff), "name", "ff617461");
    assert_field(decode_patched(|b| put_u32(b, off::LEVEL, 4)), "level", "4");
    assert_field(decode_patched(|b| put_u32(b, off::CLEAN, 2)), "clean", "2");
    assert_field(
        decode_patched(|b| put_u32(b, off::MEMBER_COUNT, 65)),
        "member_count",
        "65",
    );
    assert_field(
        decode_patched(|b| put_u32(b, off::MEMBER_COUNT, 1)),
        "member_count",
        "1",
    );
    assert_field(
        decode_patched(|b| put_u64(b, off::EVENTS, 3)),
        "events",
        "3",
    );
    assert_field(
        decode_patched(|b| b[TABLE_OFFSET + off::E_STATE] = 9),
        "member.state",
        "9",
    );
    assert_field(
        decode_patched(|b| b[TABLE_OFFSET + off::E_KIND] = 1),
        "member.rebuild_kind",
        "1",
    );
    assert_field(
        decode_patched(|b| {
            b[TABLE_OFFSET + off::E_STATE] = state_code::REBUILDING;
            b[TABLE_OFFSET + off::E_KIND] = 3;
        }),
        "member.rebuild_kind",
        "3",
    );
    assert_field(
        decode_patched(|b| put_u16(b, TABLE_OFFSET + off::E_FLAGS, 2)),
        "member.flags",
        "0x2",
    );
    assert_eq!(
        decode_patched(|b| b[TABLE_OFFSET + off::E_RESERVED2] = 1),
        Err(FormatError::Reserved {
            offset: TABLE_OFFSET + off::E_RESERVED2,
            value: 1
        })
    );
    assert_eq!(
        decode_copy(&[0u8; 10], 0),
        Err(FormatError::BufferSize(10, COPY_SIZE))
    );
    // A rebuilding entry decodes with its kind and checkpoint.
    let sb = decode_patched(|b| {
        b[TABLE_OFFSET + ENTRY_SIZE + off::E_STATE] = state_code::REBUILDING;
        b[TABLE_OFFSET + ENTRY_SIZE + off::E_KIND] = 2;
        put_u64(b, TABLE_OFFSET + ENTRY_SIZE + off::E_CHECKPOINT, 4096);
    })
    .expect("decode");
    assert_eq!(
        sb.array.members[1].state,
        MemberState::Rebuilding {
            kind: RebuildKind::Full,
            checkpoint: Sectors(4096)
        }
    );
}

/// Every field bound, on encode (validate) and on decode (the same value
/// patched into valid bytes).
#[test]
fn field_bounds_rejected_on_encode() {
    type Case = (&'static str, &'static str, fn(&mut Superblock));
    let cases: Vec<Case> = vec![
        ("events", "0", |s| {
            s.array.events = 0;
            s.array.bitmap.events_cleared = 0;
            for m in &mut s.array.members {
                m.events = 0;
            }
        }),
        ("array_uuid", "00000000-0000-0000-0000-000000000000", |s| {
            s.array.uuid = Uuid::nil()
        }),
        ("device_uuid", "00000000-0000-0000-0000-000000000000", |s| {
            s.device.uuid = Uuid::nil()
        }),
        ("device_uuid", "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa", |s| {
            s.device.uuid = s.array.uuid
        }),
        ("name", "\"\"", |s| s.array.name.clear()),
        ("name", "\"123456789012345678901234567890123\"", |s| {
            s.array.name = "123456789012345678901234567890123".into()
        }),
        ("name", "\"a\\0b\"", |s| s.array.name = "a\0b".into()),
        ("name", "\"a\\nb\"", |s| s.array.name = "a\nb".into()),
        ("raid_disks", "0", |s| s.array.geometry.raid_disks = 0),
        ("raid_disks", "65", |s| s.array.geometry.raid_disks = 65),
        ("member_count", "2", |s| s.array.geometry.raid_disks = 3),
        ("layout", "1", |s| s.array.geometry.layout = 1),
        ("chunk_size", "4096", |s| {
            s.array.geometry.chunk_size = Bytes(4096)
        }),
        ("chunk_size", "1000", |s| {
            s.array.geometry.level = Level::Raid5;
            s.array.geometry.chunk_size = Bytes(1000)
        }),
        ("raid_disks", "2", |s| {
            s.array.geometry.level = Level::Raid6;
            s.array.geometry.chunk_size = Bytes(65536)
        }),
        ("layout", "6", |s| {
            s.array.geometry.level = Level::Raid5;
            s.array.geometry.chunk_size = Bytes(65536);
            s.array.geometry.layout = 6;
        }),
        ("layout", "259", |s| {
            s.array.geometry.level = Level::Raid10;
            s.array.geometry.chunk_size = Bytes(65536);
            s.array.geometry.layout = 0x103;
        }),
        ("component_size", "0", |s| {
            s.array.geometry.component_size = Sectors(0)
        }),
        ("component_size", "119999", |s| {
            s.array.geometry.component_size = Sectors(119_999)
        }),
        ("component_size", "120002", |s| {
            s.array.geometry.component_size = Sectors(120_002);
            s.device.data_size = Sectors(120_001);
        }),
        ("component_size", "120000", |s| {
            s.array.geometry.level = Level::Raid5;
            s.array.geometry.chunk_size = Bytes(65536);
            s.array.geometry.layout = 2;
        }),
        ("data_offset", "0", |s| s.device.data_offset = Sectors(0)),
        ("data_offset", "3000", |s| {
            s.device.data_offset = Sectors(3000)
        }),
        ("data_size", "0", |s| s.device.data_size = Sectors(0)),
        ("data_size", "17592186044416", |s| {
            s.device.data_size = MAX_DEVICE_SECTORS
        }),
        ("resync", "120001", |s| {
            s.array.resync = Checkpoint::At(Sectors(120_001))
        }),
        ("bitmap_chunk", "256", |s| s.array.bitmap.chunk = Bytes(256)),
        ("bitmap_chunk", "98304", |s| {
            s.array.bitmap.chunk = Bytes(98304)
        }),
        ("bitmap_chunk", "4294967296", |s| {
            s.array.bitmap.chunk = Bytes(1 << 32)
        }),
        ("bitmap_offset", "8", |s| s.array.bitmap.offset = Sectors(8)),
        ("bitmap_offset", "17", |s| {
            s.array.bitmap.offset = Sectors(17)
        }),
        ("bitmap_size", "0", |s| s.array.bitmap.size = Bytes(0)),
        ("bitmap_size", "4000", |s| s.array.bitmap.size = Bytes(4000)),
        ("bitmap_size", "1044480", |s| {
            s.array.bitmap.size = Bytes(1_044_480)
        }),
        ("bitmap_size", "4096", |s| {
            // 120000 sectors at 512 B chunks = 120000 chunks = 15000 bytes.
            s.array.bitmap.chunk = Bytes(512)
        }),
        ("time_base", "0", |s| s.array.bitmap.time_base = 0),
        ("time_base", "86401", |s| s.array.bitmap.time_base = 86401),
        ("events_cleared", "3", |s| s.array.bitmap.events_cleared = 3),
        ("member.events", "3", |s| s.array.members[1].events = 3),
        ("member.state", "spare", |s| {
            s.array.members[1].state = MemberState::Spare
        }),
        ("member.state", "empty", |s| {
            s.array.members[1].state = MemberState::Empty;
            s.array.members[1].uuid = Uuid::nil();
        }),
        ("member.state", "in-sync", |s| {
            s.array.members.push(MemberEntry {
                uuid: uuid(3),
                state: MemberState::InSync,
                events: 1,
            })
        }),
        ("member.state", "missing", |s| {
            s.array.members.push(MemberEntry {
                uuid: uuid(3),
                state: MemberState::Missing,
                events: 1,
            })
        }),
        ("member.uuid", "03030303-0303-0303-0303-030303030303", |s| {
            s.array.members.push(MemberEntry {
                uuid: uuid(3),
                state: MemberState::Empty,
                events: 1,
            })
        }),
        ("member.uuid", "00000000-0000-0000-0000-000000000000", |s| {
            s.array.members[1].uuid = Uuid::nil()
        }),
        ("member.uuid", "01010101-0101-0101-0101-010101010101", |s| {
            s.array.members[1].uuid = uuid(1)
        }),
        ("member.uuid", "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa", |s| {
            s.array.members[1].uuid = s.array.uuid
        }),
        ("member.checkpoint", "120001", |s| {
            s.array.members[1].state = MemberState::Rebuilding {
                kind: RebuildKind::Bitmap,
                checkpoint: Sectors(120_001),
            }
        }),
        ("member_count", "65", |s| {
            for i in 0..63 {
                s.array.members.push(MemberEntry {
                    uuid: Uuid::from_u128(1000 + i),
                    state: MemberState::Spare,
                    events: 1,
                })
            }
        }),
    ];
    for (name, value, f) in cases {
        let mut sb = sample();
        f(&mut sb);
        assert_field(encode(&sb), name, value);
    }
}

#[test]
fn field_bounds_rejected_on_decode() {
    // Values that encode refuses, patched into sealed bytes.
    assert_field(
        decode_patched(|b| put_u32(b, off::RAID_DISKS, 0)),
        "raid_disks",
        "0",
    );
    assert_field(
        decode_patched(|b| put_u64(b, off::DATA_OFFSET, 2047)),
        "data_offset",
        "2047",
    );
    assert_field(
        decode_patched(|b| put_u32(b, off::BITMAP_CHUNK, 3000)),
        "bitmap_chunk",
        "3000",
    );
    assert_field(
        decode_patched(|b| put_u64(b, off::BITMAP_SIZE, 1 << 20)),
        "bitmap_size",
        "1048576",
    );
    assert_field(
        decode_patched(|b| put_u64(b, off::BITMAP_OFFSET, 2048)),
        "bitmap_offset",
        "2048",
    );
    assert_field(
        decode_patched(|b| put_u64(b, off::COMPONENT_SIZE, u64::MAX)),
        "component_size",
        "18446744073709551615",
    );
    assert_field(
        decode_patched(|b| put_u64(b, off::DATA_SIZE, u64::MAX)),
        "data_size",
        "18446744073709551615",
    );
    // Found by cargo-fuzz: a huge offset overflowed the byte conversion.
    assert_field(
        decode_patched(|b| put_u64(b, off::BITMAP_OFFSET, 1 << 60)),
        "bitmap_offset",
        "1152921504606846976",
    );
    assert_field(
        decode_patched(|b| put_u64(b, off::EVENTS_CLEARED, 4)),
        "events_cleared",
        "4",
    );
    assert_field(
        decode_patched(|b| put_u64(b, off::RESYNC, 1 << 40)),
        "resync",
        "1099511627776",
    );
    let sb = decode_patched(|b| put_u64(b, off::RESYNC, u64::MAX)).expect("decode");
    assert_eq!(sb.array.resync, Checkpoint::None);
    // 64 entries fit and round-trip.
    let mut sb = sample();
    for i in 0..62 {
        sb.array.members.push(MemberEntry {
            uuid: Uuid::from_u128(1000 + i),
            state: MemberState::Spare,
            events: 1,
        });
    }
    let e = encode(&sb).expect("encode");
    assert_eq!(decode_copy(&e.bytes, 0).expect("decode"), sb);
}

#[test]
fn role_from_table() {
    let mut sb = sample();
    assert_eq!(sb.role(), meta::Role::Slot(0));
    sb.device.uuid = uuid(2);
    assert_eq!(sb.role(), meta::Role::Slot(1));
    sb.device.uuid = uuid(9);
    assert_eq!(sb.role(), meta::Role::Spare);
    assert!(encode(&sb).is_ok());
}

fn arb_state(slot: bool) -> impl Strategy<Value = MemberState> {
    let rebuild = (prop::bool::ANY, 0u64..=120_000).prop_map(|(b, c)| MemberState::Rebuilding {
        kind: if b {
            RebuildKind::Bitmap
        } else {
            RebuildKind::Full
        },
        checkpoint: Sectors(c),
    });
    if slot {
        prop_oneof![
            Just(MemberState::InSync),
            rebuild,
            Just(MemberState::Failed),
            Just(MemberState::Missing)
        ]
        .boxed()
    } else {
        prop_oneof![Just(MemberState::Spare), Just(MemberState::Failed)].boxed()
    }
}

prop_compose! {
    fn arb_sb()(
        raid_disks in 1u32..=8,
        spares in 0usize..=4,
        events in 1u64..u64::MAX / 2,
        name in "[a-zA-Z0-9_:. -]{1,32}",
        chunk_shift in 9u32..=26,
        comp_kib in 1u64..=(1 << 30),
        extra in 0u64..1_000_000,
        clean in prop::bool::ANY,
        resync in prop::option::of(0u64..=1),
        time_base in 1u32..=86400,
        seed in prop::array::uniform16(any::<u8>()),
        ctime in any::<u64>(),
        utime in any::<u64>(),
        states in prop::collection::vec((arb_state(true), arb_state(false)), 68),
        ec_frac in 0u64..=100,
        me in 0usize..12,
        forced in prop::option::of(0u64..=100),
        v2 in prop::bool::ANY,
        mode in 0u32..3,
    ) -> Superblock {
        let component = Sectors(comp_kib * 2);
        let g = Geometry { level: Level::Raid1, layout: 0, chunk_size: Bytes(0), raid_disks, component_size: component };
        let chunk = Bytes(1 << chunk_shift);
        let version = if v2 && layout(&g, chunk).is_ok() { VERSION } else { VERSION_1 };
        let l = layout_for(version, &g, chunk).expect("layout");
        let mode = if version == VERSION_1 { BitmapMode::External } else { BitmapMode::from_code(mode).expect("0..3") };
        let n = raid_disks as usize + spares;
        let base = u128::from_le_bytes(seed) | 1;
        let members: Vec<MemberEntry> = (0..n).map(|i| {
            let st = if i < raid_disks as usize { states[i].0 } else { states[i].1 };
            let st = match st {
                MemberState::Rebuilding { kind, checkpoint } => MemberState::Rebuilding {
                    kind, checkpoint: Sectors(checkpoint.0.min(component.0)) },
                s => s,
            };
            let uuid = if st == MemberState::Missing && i % 2 == 0 { Uuid::nil() } else {
                Uuid::from_u128(base.wrapping_add(i as u128 + 1)) };
            MemberEntry { uuid, state: st, events: events / (i as u64 + 1) }
        }).collect();
        let dev_uuid = members.get(me).map(|m| m.uuid).filter(|u| !u.is_nil())
            .unwrap_or(Uuid::from_u128(base.wrapping_add(500)));
        Superblock {
            array: ArrayMeta {
                version,
                uuid: Uuid::from_u128(base),
                name,
                ctime,
                utime,
                geometry: g,
                events,
                clean,
                resync: match resync { None => Checkpoint::None, Some(f) => Checkpoint::At(Sectors(component.0 * f)) },
                bitmap: BitmapInfo { offset: l.bitmap_offset, size: l.bitmap_size, chunk, time_base,
                    events_cleared: events / 100 * ec_frac, mode },
                members,
                forced_start: forced.map(|f| 1 + (events - 1) / 100 * f),
                write_mostly: Vec::new(),
            },
            device: DeviceMeta { uuid: dev_uuid, data_offset: l.data_offset, data_size: Sectors(component.0 + extra) },
        }
    }
}

proptest! {
    #[test]
    fn prop_roundtrip(sb in arb_sb()) {
        let e = encode(&sb).expect("valid by construction");
        prop_assert_eq!(e.index as u64, sb.array.events % 2);
        prop_assert!(e.bytes[440..512].iter().all(|&x| x == 0));
        let back = decode_copy(&e.bytes, e.index).expect("decode");
        prop_assert_eq!(&back, &sb);
        // Re-encoding is byte-identical.
        prop_assert_eq!(encode(&back).expect("encode").bytes, e.bytes);
    }

    #[test]
    fn prop_any_single_byte_flip_is_detected(sb in arb_sb(), pos in 0usize..COPY_SIZE, bit in 0u8..8) {
        let e = encode(&sb).expect("encode");
        let mut b = e.bytes.clone();
        b[pos] ^= 1 << bit;
        prop_assert!(decode_copy(&b, e.index).is_err());
    }

    #[test]
    fn prop_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), COPY_SIZE)) {
        let _ = decode_copy(&bytes, 0);
        let _ = decode_copy(&bytes, 1);
    }
}

// ---------------------------------------------------------------------------
// Version 2.

/// [`sample`] in version 2 (the layout `create` writes).
pub(crate) fn sample_v2() -> Superblock {
    let mut sb = sample();
    let l = layout(&sb.array.geometry, sb.array.bitmap.chunk).expect("layout");
    sb.array.version = VERSION;
    sb.array.bitmap.offset = l.bitmap_offset;
    sb.array.bitmap.size = l.bitmap_size;
    sb.device.data_offset = l.data_offset;
    sb
}

/// A member image holding every copy position: bytes 0..8192 and the
/// block at sector 2040.
struct Member {
    low: Vec<u8>,
    high: Vec<u8>,
}

impl Member {
    fn new() -> Member {
        Member {
            low: vec![0u8; META_AREA],
            high: vec![0u8; COPY_SIZE],
        }
    }
    fn put(&mut self, sb: &Superblock) {
        let e = encode(sb).expect("encode");
        let o = usize::try_from(e.offset).expect("offset");
        if e.offset == COPY1_V2_OFFSET {
            self.high.copy_from_slice(&e.bytes);
        } else {
            self.low[o..o + COPY_SIZE].copy_from_slice(&e.bytes);
        }
    }
    fn read(&self) -> Result<ReadOutcome, ReadError> {
        read_copies(
            &self.low[..COPY_SIZE],
            &self.low[COPY_SIZE..],
            Some(&self.high),
        )
    }
}

#[test]
fn v2_layout_numbers() {
    let sb = sample_v2();
    // 938 chunks: the kernel region is sectors 8-15 (256 + 118 bytes), the
    // external bits follow at 16, copy 1 sits at 2040, data at 2048.
    assert_eq!(sb.array.bitmap.offset, Sectors(16));
    assert_eq!(sb.device.data_offset, Sectors(2048));
    let e = encode(&sb).expect("encode");
    assert_eq!(e.offset, 0);
    assert_eq!(&e.bytes[8..12], &2u32.to_le_bytes());
    assert_eq!(&e.bytes[208..212], &1u32.to_le_bytes());
    let mut s3 = sb.clone();
    s3.array.events = 3;
    s3.array.bitmap.mode = BitmapMode::Kernel;
    let e = encode(&s3).expect("encode");
    assert_eq!((e.index, e.offset), (1, 2040 * 512));
    assert_eq!(&e.bytes[208..212], &2u32.to_le_bytes());
    assert_eq!(decode_copy(&e.bytes, 1).expect("decode"), s3);
    // A bitmap larger than 3840 bytes pushes the external region past the
    // kernel region; one that does not fit below copy 1 goes to 2048.
    let mut g = sb.array.geometry;
    g.component_size = Sectors(8 * 4096 * 128); // 32768 chunks of 64 KiB
    let l = layout(&g, Bytes(65536)).expect("layout");
    assert_eq!(kernel_region_size(32768), Bytes(8192));
    assert_eq!(l.bitmap_offset, Sectors(8 + 16));
    assert_eq!(l.data_offset, Sectors(2048));
    g.component_size = Sectors(600_000 * 8 * 128); // 4.8M chunks: 600 KB
    let l = layout(&g, Bytes(65536)).expect("layout");
    assert_eq!(l.bitmap_offset, Sectors(2048));
    assert!(l.data_offset.0 >= 2048 + 600_000 / 512);
    // Too many chunks for the kernel region below sector 2040.
    g.component_size = Sectors(9_000_000 * 128);
    assert_field(layout(&g, Bytes(65536)), "bitmap_chunk", "65536");
}

#[test]
fn v2_validation() {
    let sb = sample_v2();
    let mut bad = sb.clone();
    bad.array.bitmap.offset = Sectors(8);
    assert_field(encode(&bad), "bitmap_offset", "8");
    let mut bad = sb.clone();
    bad.array.bitmap.offset = Sectors(2040);
    bad.device.data_offset = Sectors(4096);
    assert_field(encode(&bad), "bitmap_offset", "2040");
    let mut bad = sample();
    bad.array.bitmap.mode = BitmapMode::Kernel;
    assert_field(encode(&bad), "bitmap_mode", "kernel");
    let mut b = encode(&sb).expect("encode").bytes;
    put_u32(&mut b, off::BITMAP_MODE, 3);
    reseal(&mut b);
    assert_field(decode_copy(&b, 0), "bitmap_mode", "3");
}

#[test]
fn v2_reader_picks_newest_across_versions() {
    // A version 1 member: copies at 0 (events 2) and 4096 (events 1).
    let v1 = sample();
    let mut v1_1 = v1.clone();
    v1_1.array.events = 1;
    v1_1.array.bitmap.events_cleared = 1;
    for e in &mut v1_1.array.members {
        e.events = 1;
    }
    let mut m = Member::new();
    m.put(&v1_1);
    m.put(&v1);
    let r = m.read().expect("read");
    assert_eq!((r.superblock.array.version, r.copy), (VERSION_1, 0));
    assert!(r.both_valid() && r.v1_present);
    // Conversion, first write: version 2 copy 1 at sector 2040, events 3.
    let mut v2 = v1.clone();
    v2.array.version = VERSION;
    v2.array.events = 3;
    m.put(&v2);
    let r = m.read().expect("read");
    assert_eq!((r.superblock.array.version, r.copy), (VERSION, 1));
    assert_eq!(r.superblock.array.events, 3);
    assert!(r.both_valid() && r.v1_present, "{r:?}");
    // Second write: version 2 copy 0, events 4.
    v2.array.events = 4;
    m.put(&v2);
    let r = m.read().expect("read");
    assert_eq!((r.superblock.array.events, r.copy), (4, 0));
    assert!(r.both_valid() && r.v1_present);
    // Last step: version 1's copy 1 zeroed.
    m.low[COPY_SIZE..].fill(0);
    let r = m.read().expect("read");
    assert!(r.both_valid() && !r.v1_present);
    assert_eq!(r.other_events, Some(3));
    // md's bitmap superblock at sector 8 (kernel mode) is no copy at all.
    m.low[COPY_SIZE..COPY_SIZE + 4].copy_from_slice(b"bitm");
    assert!(m.read().expect("read").both_valid());
    // A torn version 2 copy 0 falls back to copy 1 at 2040.
    m.low[100] ^= 1;
    let r = m.read().expect("read");
    assert_eq!((r.copy, r.superblock.array.events), (1, 3));
    assert!(matches!(
        r.copy_errors[0],
        Some(FormatError::Checksum { .. })
    ));
}

#[test]
fn v2_copy_at_the_wrong_position_is_rejected() {
    let mut v2 = sample_v2();
    v2.array.events = 3;
    let e = encode(&v2).expect("encode");
    let mut low = vec![0u8; META_AREA];
    low[COPY_SIZE..].copy_from_slice(&e.bytes);
    let r = read_copies(&low[..COPY_SIZE], &low[COPY_SIZE..], None);
    assert!(matches!(r, Err(ReadError::BothBad { .. })), "{r:?}");
}
