//! The on-disk metadata format, version 1: bytes <-> [`Superblock`], nothing
//! else (no I/O; [`crate::device`] does the reading and writing).
//!
//! `man 5 mdext` (`man/mdext.5`) is the reference for the layout; the
//! constants below are the same numbers.
//!
//! # Layout of a member
//! ```text
//! byte 0     copy 0 of the superblock (4096 bytes)
//! byte 4096  copy 1 of the superblock (4096 bytes)
//! byte 8192  bitmap area (sector 16; `bitmap/location` = +16), size a multiple of 4096
//! data_offset (a multiple of 1 MiB): the member's data
//! ```
//!
//! # Update protocol
//! Every write bumps `events` and goes to copy `events % 2`. A torn write
//! therefore only ever damages the copy being written; the other one still
//! holds the previous state (`events - 1`). A reader decodes both copies and
//! takes the valid one with the higher `events` ([`read_area`]).
//!
//! # Strictness
//! All multi-byte integers are little-endian. Reserved bytes must be zero
//! and only the flag bits listed in [`flag`] are defined: a reader rejects a
//! copy with a nonzero reserved byte or an unknown flag. A newer writer that
//! needs new fields bumps `version` instead, except for an optional field
//! that comes with its own flag bit (`forced_start`): a copy without the bit
//! is byte for byte what earlier version 1 writers wrote, and a reader that
//! predates the bit rejects a copy carrying it rather than dropping it. Reason: mdext rewrites whole copies; a lax
//! reader that ignored fields it does not understand would silently drop
//! them on its next write.

use crate::md::{Checkpoint, Level};
use crate::meta::{
    self, ArrayMeta, BitmapInfo, BitmapMode, DeviceMeta, Geometry, MemberEntry, MemberState,
    RebuildKind, Superblock, MAX_MEMBERS, MAX_NAME_LEN,
};
use crate::units::{Bytes, Sectors, SECTOR_SIZE};
use std::fmt;
use thiserror::Error;
use uuid::Uuid;

/// The magic at byte 0 of each copy.
pub const MAGIC: [u8; 8] = *b"MDEXT\x00SB";
/// The version `create` writes (and conversion produces).
pub const VERSION: u32 = 2;
/// The first version: copy 1 at byte 4096, bitmap at sector 16. Still read
/// and, until converted, written for arrays that carry it.
pub const VERSION_1: u32 = 1;
/// Byte offset of copy 1 in version 1 (sectors 8-15).
pub const COPY1_V1_OFFSET: u64 = 4096;
/// Sector of copy 1 in version 2: the last 4 KiB of the first MiB (every
/// data_offset is at least 2048 sectors).
pub const COPY1_V2_SECTOR: Sectors = Sectors(2040);
/// Byte offset of copy 1 in version 2.
pub const COPY1_V2_OFFSET: u64 = 2040 * 512;
/// Version 2: md's kernel-managed bitmap region starts at this sector (md's
/// `bitmap_info.default_offset` for an array set up by `SET_ARRAY_INFO`).
pub const KERNEL_BITMAP_SECTOR: Sectors = Sectors(8);
/// Size of md's bitmap superblock (`bitmap_super_t`) at the start of the
/// kernel region; the kernel's bits follow it.
pub const MD_BITMAP_SB_SIZE: u64 = 256;
/// Size of one superblock copy.
pub const COPY_SIZE: usize = 4096;
/// [`COPY_SIZE`] as the header's u32 field holds it.
const COPY_SIZE_FIELD: u32 = 4096;
const _: () = assert!(COPY_SIZE_FIELD as usize == COPY_SIZE);
/// Number of copies.
pub const COPIES: usize = 2;
/// Size of the area holding both copies (bytes 0..8192 of a member).
pub const META_AREA: usize = COPY_SIZE * COPIES;
/// Header fields live in bytes `0..HEADER_END`.
pub const HEADER_END: usize = 440;
/// Bytes `HEADER_END..ZERO_END` are always zero (covers the MBR partition
/// table and its 0x55AA signature at 510, so the kernel's partition scan
/// never sees a table on a member).
pub const ZERO_END: usize = 512;
/// The member table starts here.
pub const TABLE_OFFSET: usize = 512;
/// Size of one member table entry.
pub const ENTRY_SIZE: usize = 48;
/// The CRC32C of bytes `0..CRC_OFFSET` is stored at `CRC_OFFSET..COPY_SIZE`.
pub const CRC_OFFSET: usize = COPY_SIZE - 4;
/// Where the bitmap starts (right after the two copies), in sectors.
pub const BITMAP_OFFSET: Sectors = Sectors((META_AREA as u64) / SECTOR_SIZE);
/// Data offsets are multiples of this many sectors (1 MiB).
pub const DATA_ALIGN: Sectors = Sectors(2048);
/// Bitmap sizes are multiples of this (and the bitmap offset a multiple of
/// it in bytes), so the area can be read and written with O_DIRECT.
pub const BITMAP_ALIGN: u64 = 4096;
/// Largest bitmap chunk accepted (md stores the chunk size in 32 bits).
pub const MAX_BITMAP_CHUNK: Bytes = Bytes(1 << 31);
/// Smallest bitmap chunk md accepts.
pub const MIN_BITMAP_CHUNK: Bytes = Bytes(512);
/// Largest device size the format accepts (8 PiB): keeps all sector and
/// byte arithmetic far from u64 overflow.
pub const MAX_DEVICE_SECTORS: Sectors = Sectors(1 << 44);
/// Largest `time_base` accepted, seconds.
pub const MAX_TIME_BASE: u32 = 86400;
/// `resync` stored as this value means "nothing owed".
pub const RESYNC_NONE: u64 = u64::MAX;

const _: () = assert!(TABLE_OFFSET + MAX_MEMBERS * ENTRY_SIZE <= CRC_OFFSET);
const _: () = assert!(HEADER_END <= ZERO_END && ZERO_END <= TABLE_OFFSET);

/// Header field offsets (within a copy).
pub mod off {
    /// 8 bytes, [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// u32, format version.
    pub const VERSION: usize = 8;
    /// u32, size of one copy (4096).
    pub const COPY_SIZE: usize = 12;
    /// u32, the copy's own index (0 or 1).
    pub const COPY_INDEX: usize = 16;
    /// u32, flags ([`super::flag`]).
    pub const FLAGS: usize = 20;
    /// u64, event count.
    pub const EVENTS: usize = 24;
    /// 16 bytes, array UUID.
    pub const ARRAY_UUID: usize = 32;
    /// 16 bytes, this device's UUID.
    pub const DEVICE_UUID: usize = 48;
    /// 32 bytes, name, UTF-8, NUL padded.
    pub const NAME: usize = 64;
    /// u64, creation time (s since epoch).
    pub const CTIME: usize = 96;
    /// u64, update time (s since epoch).
    pub const UTIME: usize = 104;
    /// u32, RAID level (1, 10, 5, 6).
    pub const LEVEL: usize = 112;
    /// u32, md layout.
    pub const LAYOUT: usize = 116;
    /// u32, RAID chunk size in bytes (0 for raid1).
    pub const CHUNK_SIZE: usize = 120;
    /// u32, number of slots.
    pub const RAID_DISKS: usize = 124;
    /// u64, component size in sectors.
    pub const COMPONENT_SIZE: usize = 128;
    /// u64, this device's data offset in sectors.
    pub const DATA_OFFSET: usize = 136;
    /// u64, this device's data size in sectors.
    pub const DATA_SIZE: usize = 144;
    /// u32, 1 = clean, 0 = dirty.
    pub const CLEAN: usize = 152;
    /// u32, member table entries in use.
    pub const MEMBER_COUNT: usize = 156;
    /// u64, resync checkpoint in sectors, u64::MAX = none.
    pub const RESYNC: usize = 160;
    /// u64, bitmap offset in sectors from the member's sector 0.
    pub const BITMAP_OFFSET: usize = 168;
    /// u64, bitmap area size in bytes.
    pub const BITMAP_SIZE: usize = 176;
    /// u32, bitmap chunk in bytes.
    pub const BITMAP_CHUNK: usize = 184;
    /// u32, bitmap time base in seconds.
    pub const TIME_BASE: usize = 188;
    /// u64, events_cleared.
    pub const EVENTS_CLEARED: usize = 192;
    /// u64, the event of the last forced dirty+degraded start; nonzero
    /// exactly when [`super::flag::FORCED_START`] is set, zero otherwise.
    pub const FORCED_START: usize = 200;
    /// u32 (version 2 only; zero in version 1): the bitmap mode the array
    /// last ran in, 0 none, 1 external, 2 kernel.
    pub const BITMAP_MODE: usize = 208;
    /// First reserved byte; `RESERVED..HEADER_END` are zero (version 1:
    /// from [`BITMAP_MODE`] on).
    pub const RESERVED: usize = 212;

    /// Member entry: 16 bytes UUID.
    pub const E_UUID: usize = 0;
    /// Member entry: u8 state code.
    pub const E_STATE: usize = 16;
    /// Member entry: u8 rebuild kind (0 none, 1 bitmap, 2 full).
    pub const E_KIND: usize = 17;
    /// Member entry: u16 flags (none defined).
    pub const E_FLAGS: usize = 18;
    /// Member entry: u32 reserved.
    pub const E_RESERVED1: usize = 20;
    /// Member entry: u64 events at which the state was recorded.
    pub const E_EVENTS: usize = 24;
    /// Member entry: u64 rebuild checkpoint in sectors.
    pub const E_CHECKPOINT: usize = 32;
    /// Member entry: 8 reserved bytes.
    pub const E_RESERVED2: usize = 40;
}

/// Header flag bits (`off::FLAGS`).
pub mod flag {
    /// The array was started with `--force` while dirty and degraded;
    /// `forced_start` holds the event.
    pub const FORCED_START: u32 = 1;
    /// Every defined bit.
    pub const KNOWN: u32 = FORCED_START;
}

/// Member entry flag bits (`off::E_FLAGS`).
pub mod entry_flag {
    /// md's `writemostly`: read from this raid1 member only when no other
    /// member can serve the read. Only on an entry with a UUID, of a raid1.
    pub const WRITE_MOSTLY: u16 = 1;
    /// Every defined bit.
    pub const KNOWN: u16 = WRITE_MOSTLY;
}

/// Member state codes in the table.
pub mod state_code {
    /// [`crate::meta::MemberState::Empty`].
    pub const EMPTY: u8 = 0;
    /// [`crate::meta::MemberState::InSync`].
    pub const IN_SYNC: u8 = 1;
    /// [`crate::meta::MemberState::Rebuilding`].
    pub const REBUILDING: u8 = 2;
    /// [`crate::meta::MemberState::Failed`].
    pub const FAILED: u8 = 3;
    /// [`crate::meta::MemberState::Spare`].
    pub const SPARE: u8 = 4;
    /// [`crate::meta::MemberState::Missing`].
    pub const MISSING: u8 = 5;
}

/// What is wrong with one superblock copy, or with a superblock to encode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// The copy is all zero bytes.
    #[error("no metadata (all zero)")]
    Blank,
    /// The first 8 bytes are not the mdext magic.
    #[error("bad magic {}", hex(.0))]
    BadMagic([u8; 8]),
    /// A version this code does not know.
    #[error("unsupported version {0} (this mdext reads versions {VERSION_1} and {VERSION})")]
    UnsupportedVersion(u32),
    /// The CRC32C does not match.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// CRC stored at bytes 4092..4096.
        stored: u32,
        /// CRC computed over bytes 0..4092.
        computed: u32,
    },
    /// The copy records a different index than where it was found.
    #[error("copy found at position {found_at} records copy index {recorded}")]
    WrongCopy {
        /// Where it was read from.
        found_at: usize,
        /// What its header says.
        recorded: u32,
    },
    /// A reserved byte or unused area is not zero.
    #[error("reserved byte {offset} is {value:#04x}, must be 0")]
    Reserved {
        /// Byte offset within the copy.
        offset: usize,
        /// Its value.
        value: u8,
    },
    /// A field is out of range.
    #[error("{field} = {value}: {reason}")]
    Field {
        /// Field name as in mdext(5).
        field: &'static str,
        /// The offending value.
        value: String,
        /// What is required.
        reason: String,
    },
    /// The buffer has the wrong length.
    #[error("buffer is {0} bytes, expected {1}")]
    BufferSize(usize, usize),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn field(field: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> FormatError {
    FormatError::Field {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl FormatError {
    /// Whether this copy carries no mdext metadata at all (zero or another
    /// magic), as opposed to damaged mdext metadata.
    pub fn is_absent(&self) -> bool {
        matches!(self, FormatError::Blank | FormatError::BadMagic(_))
    }
    /// The field name, for a [`FormatError::Field`].
    pub fn field_name(&self) -> Option<&'static str> {
        match self {
            FormatError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Reading the two-copy area found no usable copy.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    /// Neither copy has the mdext magic.
    #[error("no mdext metadata (no magic in either copy)")]
    NoMetadata,
    /// Both copies are damaged or invalid.
    #[error("both metadata copies are bad: copy 0: {copy0}; copy 1: {copy1}")]
    BothBad {
        /// Why copy 0 was rejected.
        copy0: Box<FormatError>,
        /// Why copy 1 was rejected.
        copy1: Box<FormatError>,
    },
    /// The area has the wrong length.
    #[error("metadata area is {0} bytes, expected {META_AREA}")]
    BufferSize(usize),
}

/// The result of reading both copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The newest valid copy's content.
    pub superblock: Superblock,
    /// Which copy it came from (0 or 1).
    pub copy: usize,
    /// Per copy: why it was rejected (`None` = valid).
    pub copy_errors: [Option<FormatError>; COPIES],
    /// The events of the other copy when it is valid too.
    pub other_events: Option<u64>,
    /// A valid version 1 copy is still on the member (at byte 0 or 4096):
    /// the member is version 1, or its conversion to version 2 is not
    /// finished.
    pub v1_present: bool,
}

impl ReadOutcome {
    /// Whether both copies were valid.
    pub fn both_valid(&self) -> bool {
        self.copy_errors.iter().all(Option::is_none)
    }
}

/// The copy slot a superblock with these events is written to.
pub const fn copy_for_events(events: u64) -> usize {
    (events % 2) as usize
}

/// The copy/retry rule: the events of the next record written after the
/// record with events `last`. Each write goes to copy `events % 2`
/// ([`copy_for_events`]), so the copy it overwrites is never the one just
/// written. `rewrite` names a copy that may be torn or stale on some member
/// (a write to it failed, or a member was read with that copy invalid):
/// the next write then goes to that same copy (events + 2 when + 1 has the
/// other parity), never to the other one, which on that member holds its
/// last good state. Two failed writes in a row thus hit the same copy and a
/// member always keeps one valid copy.
pub const fn next_events(last: u64, rewrite: Option<usize>) -> u64 {
    match rewrite {
        Some(i) if copy_for_events(last + 1) != i => last + 2,
        _ => last + 1,
    }
}

/// The copy to rewrite first, from which of each member's two copies are
/// valid: the index that is invalid on some member. `None` when every copy
/// is valid (or the members disagree, each with a different bad copy: no
/// single next write can spare every member's only good copy, and the
/// first one is kept).
pub fn damaged_copy(members: impl IntoIterator<Item = [bool; 2]>) -> Option<usize> {
    let mut found = None;
    for valid in members {
        for (i, ok) in valid.iter().enumerate() {
            if !ok && found.is_none() {
                found = Some(i);
            }
        }
    }
    found
}

/// Byte offset of copy `index` of a `version` copy within a member.
pub const fn copy_offset(version: u32, index: usize) -> u64 {
    match (version, index) {
        (_, 0) => 0,
        (VERSION_1, _) => COPY1_V1_OFFSET,
        _ => COPY1_V2_OFFSET,
    }
}

/// Bytes of the kernel-managed bitmap region (version 2) for `chunks`:
/// md's 256-byte superblock and one bit per chunk, rounded up to 4096.
pub fn kernel_region_size(chunks: u64) -> Bytes {
    Bytes(MD_BITMAP_SB_SIZE + chunks.div_ceil(8)).align_up(BITMAP_ALIGN)
}

// ---------------------------------------------------------------------------
// Little-endian helpers. Offsets are constants below COPY_SIZE and every
// buffer is checked to be COPY_SIZE long first, so slicing cannot panic.

fn get_u16(b: &[u8], o: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[o..o + 2]);
    u16::from_le_bytes(a)
}
fn get_u32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}
fn get_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn get_uuid(b: &[u8], o: usize) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[o..o + 16]);
    Uuid::from_bytes(a)
}
fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

fn check_zero(b: &[u8], range: std::ops::Range<usize>) -> Result<(), FormatError> {
    let start = range.start;
    match b[range].iter().position(|&x| x != 0) {
        None => Ok(()),
        Some(i) => Err(FormatError::Reserved {
            offset: start + i,
            value: b[start + i],
        }),
    }
}

/// CRC32C of a copy's checksummed bytes.
pub fn checksum(copy: &[u8]) -> u32 {
    crc32c::crc32c(&copy[..CRC_OFFSET.min(copy.len())])
}

// ---------------------------------------------------------------------------
// Validation (shared by encode and decode).

fn validate_name(name: &str) -> Result<(), FormatError> {
    if name.is_empty() {
        return Err(field("name", "\"\"", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(field(
            "name",
            format!("{name:?}"),
            format!("is {} bytes, at most {MAX_NAME_LEN}", name.len()),
        ));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(field(
            "name",
            format!("{name:?}"),
            "must not contain NUL or control characters",
        ));
    }
    Ok(())
}

fn is_pow2(v: u64) -> bool {
    v != 0 && v & (v - 1) == 0
}

fn validate_geometry(g: &Geometry) -> Result<(), FormatError> {
    if g.raid_disks == 0 || g.raid_disks as usize > MAX_MEMBERS {
        return Err(field(
            "raid_disks",
            g.raid_disks,
            format!("must be 1..={MAX_MEMBERS}"),
        ));
    }
    match g.level {
        Level::Raid1 => {
            if g.layout != 0 {
                return Err(field("layout", g.layout, "must be 0 for raid1"));
            }
            if g.chunk_size.0 != 0 {
                return Err(field("chunk_size", g.chunk_size.0, "must be 0 for raid1"));
            }
        }
        Level::Raid10 | Level::Raid5 | Level::Raid6 => {
            let c = g.chunk_size.0;
            if !is_pow2(c) || !(4096..=(1 << 30)).contains(&c) {
                return Err(field(
                    "chunk_size",
                    c,
                    "must be a power of two from 4096 to 1 GiB",
                ));
            }
            let min_disks = g.level.min_format_devices();
            if g.raid_disks < min_disks {
                return Err(field(
                    "raid_disks",
                    g.raid_disks,
                    format!("{} needs at least {min_disks}", g.level.as_str()),
                ));
            }
            let layout_ok = g.level.layout_valid(g.layout, g.raid_disks);
            if !layout_ok {
                return Err(field(
                    "layout",
                    g.layout,
                    format!("is not a valid {} layout", g.level.as_str()),
                ));
            }
        }
    }
    let cs = g.component_size.0;
    if cs == 0 || cs > MAX_DEVICE_SECTORS.0 {
        return Err(field(
            "component_size",
            cs,
            format!("must be 1..={} sectors", MAX_DEVICE_SECTORS.0),
        ));
    }
    if cs % 2 != 0 {
        return Err(field(
            "component_size",
            cs,
            "must be a whole number of KiB (even sectors)",
        ));
    }
    if g.chunk_size.0 != 0 && cs % (g.chunk_size.0 / SECTOR_SIZE) != 0 {
        return Err(field(
            "component_size",
            cs,
            format!(
                "must be a multiple of the raid chunk ({} B)",
                g.chunk_size.0
            ),
        ));
    }
    Ok(())
}

/// Check a bitmap chunk size: a power of two from 512 B to 2 GiB.
pub fn check_bitmap_chunk(chunk: Bytes) -> Result<(), FormatError> {
    let c = chunk.0;
    if !is_pow2(c) || !(MIN_BITMAP_CHUNK.0..=MAX_BITMAP_CHUNK.0).contains(&c) {
        return Err(field(
            "bitmap_chunk",
            c,
            format!(
                "must be a power of two from {} to {}",
                MIN_BITMAP_CHUNK.0, MAX_BITMAP_CHUNK.0
            ),
        ));
    }
    Ok(())
}

fn validate_bitmap(a: &ArrayMeta, d: &DeviceMeta) -> Result<(), FormatError> {
    let b = &a.bitmap;
    check_bitmap_chunk(b.chunk)?;
    // Version 1: after both copies. Version 2: after the kernel region.
    let first = if a.version == VERSION_1 {
        BITMAP_OFFSET.0
    } else {
        KERNEL_BITMAP_SECTOR.0 + kernel_region_size(a.bitmap_chunks()).0 / SECTOR_SIZE
    };
    if a.version == VERSION_1 && b.mode != BitmapMode::External {
        return Err(field(
            "bitmap_mode",
            b.mode.name(),
            "version 1 has only the external bitmap",
        ));
    }
    if a.version != VERSION_1 && first > COPY1_V2_SECTOR.0 {
        return Err(field(
            "bitmap_chunk",
            b.chunk.0,
            format!(
                "{} chunks do not fit in the kernel bitmap region (sectors 8 to 2040); use a larger bitmap chunk",
                a.bitmap_chunks()
            ),
        ));
    }
    if b.offset.0 < first {
        return Err(field(
            "bitmap_offset",
            b.offset.0,
            if a.version == VERSION_1 {
                format!("must be at least {first} sectors (after both copies)")
            } else {
                format!("must be at least {first} sectors (after the kernel bitmap region)")
            },
        ));
    }
    if b.offset.0 % (BITMAP_ALIGN / SECTOR_SIZE) != 0 {
        return Err(field(
            "bitmap_offset",
            b.offset.0,
            "must be a multiple of 8 sectors (4 KiB)",
        ));
    }
    if b.size.0 == 0 || b.size.0 % BITMAP_ALIGN != 0 {
        return Err(field(
            "bitmap_size",
            b.size.0,
            "must be a nonzero multiple of 4096",
        ));
    }
    let need = a.bitmap_chunks().div_ceil(8);
    if b.size.0 < need {
        return Err(field(
            "bitmap_size",
            b.size.0,
            format!(
                "is too small for {} chunks ({need} bytes needed)",
                a.bitmap_chunks()
            ),
        ));
    }
    if b.offset >= d.data_offset {
        return Err(field(
            "bitmap_offset",
            b.offset.0,
            format!("must be below data_offset ({})", d.data_offset.0),
        ));
    }
    // offset < data_offset <= MAX_DEVICE_SECTORS (checked before), so the
    // byte conversion cannot overflow (found by cargo-fuzz).
    let end = b.offset.bytes().0.saturating_add(b.size.0);
    if a.version != VERSION_1
        && b.offset.bytes().0 < COPY1_V2_OFFSET + COPY_SIZE as u64
        && end > COPY1_V2_OFFSET
    {
        return Err(field(
            "bitmap_offset",
            b.offset.0,
            format!(
                "the bitmap area (to byte {end}) overlaps copy 1 at sector {}",
                COPY1_V2_SECTOR.0
            ),
        ));
    }
    if end > d.data_offset.bytes().0 {
        return Err(field(
            "bitmap_size",
            b.size.0,
            format!(
                "bitmap area ends at byte {end}, after data_offset (byte {})",
                d.data_offset.bytes().0
            ),
        ));
    }
    if b.time_base == 0 || b.time_base > MAX_TIME_BASE {
        return Err(field(
            "time_base",
            b.time_base,
            format!("must be 1..={MAX_TIME_BASE} seconds"),
        ));
    }
    if b.events_cleared > a.events {
        return Err(field(
            "events_cleared",
            b.events_cleared,
            format!("must not exceed events ({})", a.events),
        ));
    }
    Ok(())
}

fn validate_forced(a: &ArrayMeta) -> Result<(), FormatError> {
    match a.forced_start {
        Some(e) if e == 0 || e > a.events => Err(field(
            "forced_start",
            e,
            format!("must be 1..=events ({})", a.events),
        )),
        _ => Ok(()),
    }
}

fn validate_members(a: &ArrayMeta) -> Result<(), FormatError> {
    let n = a.members.len();
    let rd = a.geometry.raid_disks as usize;
    if n > MAX_MEMBERS || n < rd {
        return Err(field(
            "member_count",
            n,
            format!("must be raid_disks ({rd})..={MAX_MEMBERS}"),
        ));
    }
    for (i, m) in a.members.iter().enumerate() {
        let at = |what: &str| format!("entry {i}: {what}");
        if m.events > a.events {
            return Err(field(
                "member.events",
                m.events,
                at(&format!("exceeds the array's events ({})", a.events)),
            ));
        }
        let slot = i < rd;
        match m.state {
            MemberState::Empty => {
                if !m.uuid.is_nil() {
                    return Err(field(
                        "member.uuid",
                        m.uuid,
                        at("an empty entry must have a nil uuid"),
                    ));
                }
                if slot {
                    return Err(field(
                        "member.state",
                        "empty",
                        at("a slot entry cannot be empty (use missing)"),
                    ));
                }
            }
            MemberState::Spare => {
                if slot {
                    return Err(field(
                        "member.state",
                        "spare",
                        at("entries below raid_disks are slots, not spares"),
                    ));
                }
            }
            MemberState::Missing => {
                if !slot {
                    return Err(field(
                        "member.state",
                        "missing",
                        at("only slot entries (below raid_disks) can be missing"),
                    ));
                }
            }
            MemberState::InSync => {
                if !slot {
                    return Err(field(
                        "member.state",
                        "in-sync",
                        at("entries from raid_disks on must be spare, failed or empty"),
                    ));
                }
            }
            MemberState::Rebuilding { checkpoint, .. } => {
                if !slot {
                    return Err(field(
                        "member.state",
                        "rebuilding",
                        at("entries from raid_disks on must be spare, failed or empty"),
                    ));
                }
                if checkpoint > a.geometry.component_size {
                    return Err(field(
                        "member.checkpoint",
                        checkpoint.0,
                        at(&format!(
                            "exceeds component_size ({})",
                            a.geometry.component_size.0
                        )),
                    ));
                }
            }
            MemberState::Failed => {}
        }
        let needs_uuid = matches!(
            m.state,
            MemberState::InSync | MemberState::Rebuilding { .. } | MemberState::Spare
        );
        if needs_uuid && m.uuid.is_nil() {
            return Err(field("member.uuid", m.uuid, at("must not be nil")));
        }
        if !m.uuid.is_nil() {
            if a.members[..i].iter().any(|o| o.uuid == m.uuid) {
                return Err(field(
                    "member.uuid",
                    m.uuid,
                    at("appears twice in the table"),
                ));
            }
            if m.uuid == a.uuid {
                return Err(field("member.uuid", m.uuid, at("equals the array uuid")));
            }
        }
    }
    if a.geometry.level != Level::Raid1 && a.members.iter().any(|m| a.is_write_mostly(&m.uuid)) {
        return Err(field(
            "member.flags",
            "write-mostly",
            format!(
                "only raid1 members can be write-mostly, not {}",
                a.geometry.level
            ),
        ));
    }
    // This device appears at most once (uuids are unique). A device absent
    // from its own table is a spare not yet recorded there (see
    // `Superblock::role`).
    Ok(())
}

/// Check every field of a superblock against the format's bounds. Encode
/// and decode both call it; the daemon may call it before writing.
pub fn validate(sb: &Superblock) -> Result<(), FormatError> {
    let a = &sb.array;
    let d = &sb.device;
    if a.version != VERSION && a.version != VERSION_1 {
        return Err(FormatError::UnsupportedVersion(a.version));
    }
    if a.events == 0 {
        return Err(field("events", 0, "must be at least 1"));
    }
    if a.uuid.is_nil() {
        return Err(field("array_uuid", a.uuid, "must not be nil"));
    }
    if d.uuid.is_nil() {
        return Err(field("device_uuid", d.uuid, "must not be nil"));
    }
    if d.uuid == a.uuid {
        return Err(field(
            "device_uuid",
            d.uuid,
            "must differ from the array uuid",
        ));
    }
    validate_name(&a.name)?;
    validate_geometry(&a.geometry)?;
    if d.data_offset.0 < DATA_ALIGN.0 || d.data_offset.0 % DATA_ALIGN.0 != 0 {
        return Err(field(
            "data_offset",
            d.data_offset.0,
            "must be a nonzero multiple of 2048 sectors (1 MiB)",
        ));
    }
    if d.data_size.0 == 0 {
        return Err(field("data_size", 0, "must not be zero"));
    }
    match d.data_offset.checked_add(d.data_size) {
        Some(end) if end <= MAX_DEVICE_SECTORS => {}
        _ => {
            return Err(field(
                "data_size",
                d.data_size.0,
                format!(
                    "data_offset + data_size exceeds {} sectors",
                    MAX_DEVICE_SECTORS.0
                ),
            ))
        }
    }
    if a.geometry.component_size > d.data_size {
        return Err(field(
            "component_size",
            a.geometry.component_size.0,
            format!("exceeds data_size ({})", d.data_size.0),
        ));
    }
    if let Checkpoint::At(s) = a.resync {
        if s > a.geometry.component_size {
            return Err(field(
                "resync",
                s.0,
                format!(
                    "exceeds component_size ({}); use none",
                    a.geometry.component_size.0
                ),
            ));
        }
    }
    validate_bitmap(a, d)?;
    validate_forced(a)?;
    validate_members(a)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Encode.

/// One encoded copy and the slot it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedCopy {
    /// Copy index (`events % 2`).
    pub index: usize,
    /// Where to write it: byte [`copy_offset`] of the record's version.
    pub offset: u64,
    /// The 4096 bytes.
    pub bytes: Vec<u8>,
}

/// Encode `sb` as the copy its event count selects (`events % 2`), after
/// validating every field.
pub fn encode(sb: &Superblock) -> Result<EncodedCopy, FormatError> {
    validate(sb)?;
    let index = copy_for_events(sb.array.events);
    let a = &sb.array;
    let d = &sb.device;
    let g = &a.geometry;
    let mut b = vec![0u8; COPY_SIZE];
    b[off::MAGIC..off::MAGIC + 8].copy_from_slice(&MAGIC);
    put_u32(&mut b, off::VERSION, a.version);
    put_u32(&mut b, off::COPY_SIZE, COPY_SIZE_FIELD);
    if a.version >= VERSION {
        put_u32(&mut b, off::BITMAP_MODE, a.bitmap.mode.code());
    }
    // The same as `index` (copy_for_events), 0 or 1.
    put_u32(&mut b, off::COPY_INDEX, (a.events % 2) as u32);
    let flags = if a.forced_start.is_some() {
        flag::FORCED_START
    } else {
        0
    };
    put_u32(&mut b, off::FLAGS, flags);
    put_u64(&mut b, off::FORCED_START, a.forced_start.unwrap_or(0));
    put_u64(&mut b, off::EVENTS, a.events);
    b[off::ARRAY_UUID..off::ARRAY_UUID + 16].copy_from_slice(a.uuid.as_bytes());
    b[off::DEVICE_UUID..off::DEVICE_UUID + 16].copy_from_slice(d.uuid.as_bytes());
    b[off::NAME..off::NAME + a.name.len()].copy_from_slice(a.name.as_bytes());
    put_u64(&mut b, off::CTIME, a.ctime);
    put_u64(&mut b, off::UTIME, a.utime);
    put_u32(&mut b, off::LEVEL, g.level.number());
    put_u32(&mut b, off::LAYOUT, g.layout);
    // validate_geometry bounds chunk_size to 1 GiB.
    let chunk_size = u32::try_from(g.chunk_size.0)
        .map_err(|_| field("chunk_size", g.chunk_size.0, "does not fit in 32 bits"))?;
    put_u32(&mut b, off::CHUNK_SIZE, chunk_size);
    put_u32(&mut b, off::RAID_DISKS, g.raid_disks);
    put_u64(&mut b, off::COMPONENT_SIZE, g.component_size.0);
    put_u64(&mut b, off::DATA_OFFSET, d.data_offset.0);
    put_u64(&mut b, off::DATA_SIZE, d.data_size.0);
    put_u32(&mut b, off::CLEAN, u32::from(a.clean));
    // validate_members bounds the count to MAX_MEMBERS.
    let member_count = u32::try_from(a.members.len())
        .map_err(|_| field("member_count", a.members.len(), "does not fit in 32 bits"))?;
    put_u32(&mut b, off::MEMBER_COUNT, member_count);
    let resync = match a.resync {
        Checkpoint::None => RESYNC_NONE,
        Checkpoint::At(s) => s.0,
    };
    put_u64(&mut b, off::RESYNC, resync);
    put_u64(&mut b, off::BITMAP_OFFSET, a.bitmap.offset.0);
    put_u64(&mut b, off::BITMAP_SIZE, a.bitmap.size.0);
    // validate_bitmap bounds the chunk to 2^31.
    let bitmap_chunk = u32::try_from(a.bitmap.chunk.0)
        .map_err(|_| field("bitmap_chunk", a.bitmap.chunk.0, "does not fit in 32 bits"))?;
    put_u32(&mut b, off::BITMAP_CHUNK, bitmap_chunk);
    put_u32(&mut b, off::TIME_BASE, a.bitmap.time_base);
    put_u64(&mut b, off::EVENTS_CLEARED, a.bitmap.events_cleared);
    for (i, m) in a.members.iter().enumerate() {
        let e = TABLE_OFFSET + i * ENTRY_SIZE;
        b[e + off::E_UUID..e + off::E_UUID + 16].copy_from_slice(m.uuid.as_bytes());
        let (code, kind, cp) = match m.state {
            MemberState::Empty => (state_code::EMPTY, 0, 0),
            MemberState::InSync => (state_code::IN_SYNC, 0, 0),
            MemberState::Rebuilding { kind, checkpoint } => (
                state_code::REBUILDING,
                match kind {
                    RebuildKind::Bitmap => 1,
                    RebuildKind::Full => 2,
                },
                checkpoint.0,
            ),
            MemberState::Failed => (state_code::FAILED, 0, 0),
            MemberState::Spare => (state_code::SPARE, 0, 0),
            MemberState::Missing => (state_code::MISSING, 0, 0),
        };
        b[e + off::E_STATE] = code;
        b[e + off::E_KIND] = kind;
        let eflags = if a.is_write_mostly(&m.uuid) {
            entry_flag::WRITE_MOSTLY
        } else {
            0
        };
        put_u16(&mut b, e + off::E_FLAGS, eflags);
        put_u64(&mut b, e + off::E_EVENTS, m.events);
        put_u64(&mut b, e + off::E_CHECKPOINT, cp);
    }
    let crc = checksum(&b);
    put_u32(&mut b, CRC_OFFSET, crc);
    Ok(EncodedCopy {
        index,
        offset: copy_offset(a.version, index),
        bytes: b,
    })
}

// ---------------------------------------------------------------------------
// Decode.

/// Decode the copy found at position `found_at` (0 or 1). Checks, in this
/// order: length, blank, magic, version, copy size, checksum, copy index,
/// flags and reserved bytes, then every field ([`validate`]).
pub fn decode_copy(buf: &[u8], found_at: usize) -> Result<Superblock, FormatError> {
    if buf.len() != COPY_SIZE {
        return Err(FormatError::BufferSize(buf.len(), COPY_SIZE));
    }
    if buf.iter().all(|&x| x == 0) {
        return Err(FormatError::Blank);
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&buf[off::MAGIC..off::MAGIC + 8]);
    if magic != MAGIC {
        return Err(FormatError::BadMagic(magic));
    }
    // The version is checked before the checksum: a future version may
    // move the checksum, and "unsupported version" is the useful message.
    let version = get_u32(buf, off::VERSION);
    if version != VERSION && version != VERSION_1 {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let copy_size = get_u32(buf, off::COPY_SIZE);
    if copy_size as usize != COPY_SIZE {
        return Err(field(
            "copy_size",
            copy_size,
            format!("must be {COPY_SIZE}"),
        ));
    }
    let stored = get_u32(buf, CRC_OFFSET);
    let computed = checksum(buf);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    let recorded = get_u32(buf, off::COPY_INDEX);
    if recorded as usize != found_at {
        return Err(FormatError::WrongCopy { found_at, recorded });
    }
    let flags = get_u32(buf, off::FLAGS);
    if flags & !flag::KNOWN != 0 {
        return Err(field(
            "flags",
            format!("{flags:#x}"),
            format!("unknown flag bits (version 1 defines {:#x})", flag::KNOWN),
        ));
    }
    let forced_start = if flags & flag::FORCED_START != 0 {
        match get_u64(buf, off::FORCED_START) {
            0 => {
                return Err(field(
                    "forced_start",
                    0,
                    "must be nonzero when the forced_start flag is set",
                ))
            }
            e => Some(e),
        }
    } else {
        check_zero(buf, off::FORCED_START..off::FORCED_START + 8)?;
        None
    };
    let mode = if version == VERSION_1 {
        check_zero(buf, off::BITMAP_MODE..ZERO_END)?;
        BitmapMode::External
    } else {
        check_zero(buf, off::RESERVED..ZERO_END)?;
        let code = get_u32(buf, off::BITMAP_MODE);
        BitmapMode::from_code(code).ok_or_else(|| {
            field(
                "bitmap_mode",
                code,
                "must be 0 (none), 1 (external) or 2 (kernel)",
            )
        })?
    };

    let events = get_u64(buf, off::EVENTS);
    if copy_for_events(events) != found_at {
        return Err(field(
            "events",
            events,
            format!("copy {found_at} only holds events with events % 2 == {found_at}"),
        ));
    }
    let name_bytes = &buf[off::NAME..off::NAME + MAX_NAME_LEN];
    let name_len = name_bytes
        .iter()
        .position(|&x| x == 0)
        .unwrap_or(MAX_NAME_LEN);
    check_zero(buf, off::NAME + name_len..off::NAME + MAX_NAME_LEN)?;
    let name = std::str::from_utf8(&name_bytes[..name_len])
        .map_err(|_| field("name", hex(&name_bytes[..name_len]), "is not valid UTF-8"))?
        .to_string();
    let level_n = get_u32(buf, off::LEVEL);
    let level = Level::from_number(level_n)
        .ok_or_else(|| field("level", level_n, "must be 1, 10, 5 or 6"))?;
    let clean = match get_u32(buf, off::CLEAN) {
        0 => false,
        1 => true,
        v => return Err(field("clean", v, "must be 0 or 1")),
    };
    let count = get_u32(buf, off::MEMBER_COUNT);
    if count as usize > MAX_MEMBERS {
        return Err(field(
            "member_count",
            count,
            format!("must be at most {MAX_MEMBERS}"),
        ));
    }
    let count = count as usize;
    let resync = match get_u64(buf, off::RESYNC) {
        RESYNC_NONE => Checkpoint::None,
        s => Checkpoint::At(Sectors(s)),
    };
    let mut members = Vec::with_capacity(count);
    let mut write_mostly = Vec::new();
    for i in 0..count {
        let e = TABLE_OFFSET + i * ENTRY_SIZE;
        let code = buf[e + off::E_STATE];
        let kind = buf[e + off::E_KIND];
        let cp = get_u64(buf, e + off::E_CHECKPOINT);
        let eflags = get_u16(buf, e + off::E_FLAGS);
        if eflags & !entry_flag::KNOWN != 0 {
            return Err(field(
                "member.flags",
                format!("{eflags:#x}"),
                format!(
                    "entry {i}: unknown flag bits (defined: {:#x})",
                    entry_flag::KNOWN
                ),
            ));
        }
        let uuid = get_uuid(buf, e + off::E_UUID);
        if eflags & entry_flag::WRITE_MOSTLY != 0 {
            if uuid.is_nil() {
                return Err(field(
                    "member.flags",
                    format!("{eflags:#x}"),
                    format!("entry {i}: write-mostly on an entry without a device"),
                ));
            }
            write_mostly.push(uuid);
        }
        check_zero(buf, e + off::E_RESERVED1..e + off::E_EVENTS)?;
        check_zero(buf, e + off::E_RESERVED2..e + ENTRY_SIZE)?;
        if code != state_code::REBUILDING && (kind != 0 || cp != 0) {
            return Err(field(
                "member.rebuild_kind",
                kind,
                format!("entry {i}: kind and checkpoint must be 0 unless rebuilding"),
            ));
        }
        let state = match code {
            state_code::EMPTY => MemberState::Empty,
            state_code::IN_SYNC => MemberState::InSync,
            state_code::REBUILDING => MemberState::Rebuilding {
                kind: match kind {
                    1 => RebuildKind::Bitmap,
                    2 => RebuildKind::Full,
                    k => {
                        return Err(field(
                            "member.rebuild_kind",
                            k,
                            format!("entry {i}: must be 1 (bitmap) or 2 (full)"),
                        ))
                    }
                },
                checkpoint: Sectors(cp),
            },
            state_code::FAILED => MemberState::Failed,
            state_code::SPARE => MemberState::Spare,
            state_code::MISSING => MemberState::Missing,
            c => {
                return Err(field(
                    "member.state",
                    c,
                    format!("entry {i}: unknown state code"),
                ))
            }
        };
        members.push(MemberEntry {
            uuid,
            state,
            events: get_u64(buf, e + off::E_EVENTS),
        });
    }
    let sb = Superblock {
        array: ArrayMeta {
            version,
            uuid: get_uuid(buf, off::ARRAY_UUID),
            name,
            ctime: get_u64(buf, off::CTIME),
            utime: get_u64(buf, off::UTIME),
            geometry: Geometry {
                level,
                layout: get_u32(buf, off::LAYOUT),
                chunk_size: Bytes(u64::from(get_u32(buf, off::CHUNK_SIZE))),
                raid_disks: get_u32(buf, off::RAID_DISKS),
                component_size: Sectors(get_u64(buf, off::COMPONENT_SIZE)),
            },
            events,
            clean,
            resync,
            bitmap: BitmapInfo {
                offset: Sectors(get_u64(buf, off::BITMAP_OFFSET)),
                size: Bytes(get_u64(buf, off::BITMAP_SIZE)),
                chunk: Bytes(u64::from(get_u32(buf, off::BITMAP_CHUNK))),
                time_base: get_u32(buf, off::TIME_BASE),
                events_cleared: get_u64(buf, off::EVENTS_CLEARED),
                mode,
            },
            members,
            forced_start,
            write_mostly,
        },
        device: DeviceMeta {
            uuid: get_uuid(buf, off::DEVICE_UUID),
            data_offset: Sectors(get_u64(buf, off::DATA_OFFSET)),
            data_size: Sectors(get_u64(buf, off::DATA_SIZE)),
        },
    };
    validate(&sb)?;
    // After validate, so a short member_count is reported as such rather
    // than as nonzero bytes in the unused table space.
    check_zero(buf, TABLE_OFFSET + count * ENTRY_SIZE..CRC_OFFSET)?;
    Ok(sb)
}

/// Decode both copies of a version 1 metadata area (the first 8192 bytes of
/// a member) and pick the valid one with the higher events. A version 2
/// member's copy 0 is found here too; its copy 1 is not (see
/// [`read_copies`]).
pub fn read_area(area: &[u8]) -> Result<ReadOutcome, ReadError> {
    if area.len() != META_AREA {
        return Err(ReadError::BufferSize(area.len()));
    }
    read_copies(&area[..COPY_SIZE], &area[COPY_SIZE..], None)
}

/// A copy 1 position only holds copies of its own version.
fn at_position(
    r: Result<Superblock, FormatError>,
    version: u32,
) -> Result<Superblock, FormatError> {
    match r {
        Ok(sb) if sb.array.version != version => Err(field(
            "version",
            sb.array.version,
            format!(
                "a version {} copy found where version {version} keeps copy 1",
                sb.array.version
            ),
        )),
        r => r,
    }
}

/// Decode every copy position of a member and pick the valid copy with the
/// highest events: `c0` at byte 0 (either version), `c1_v1` at byte 4096
/// (version 1's copy 1), `c1_v2` at sector 2040 (version 2's copy 1; `None`
/// when the device is too small to hold it). During a conversion a member
/// holds copies of both versions; events only grow across it, so the
/// newest copy is the authoritative record whatever its version.
pub fn read_copies(
    c0: &[u8],
    c1_v1: &[u8],
    c1_v2: Option<&[u8]>,
) -> Result<ReadOutcome, ReadError> {
    for b in [Some(c0), Some(c1_v1), c1_v2].into_iter().flatten() {
        if b.len() != COPY_SIZE {
            return Err(ReadError::BufferSize(b.len()));
        }
    }
    let r0 = decode_copy(c0, 0);
    let r1 = at_position(decode_copy(c1_v1, 1), VERSION_1);
    let r2 = match c1_v2 {
        Some(b) => at_position(decode_copy(b, 1), VERSION),
        None => Err(FormatError::Blank),
    };
    let v1_present = matches!(&r0, Ok(s) if s.array.version == VERSION_1) || r1.is_ok();
    // Copy 1 where the newest record's version keeps it: a valid version 2
    // copy 1 is newer than every version 1 copy (conversion writes it
    // first); a version 2 copy 0 means the member is converted.
    let v2 = r2.is_ok() || matches!(&r0, Ok(s) if s.array.version == VERSION);
    let c1 = if v2 { r2 } else { r1 };
    match (r0, c1) {
        (Ok(s0), Ok(s1)) => {
            let (superblock, copy, other) = if s0.array.events > s1.array.events {
                (s0, 0, s1.array.events)
            } else {
                (s1, 1, s0.array.events)
            };
            Ok(ReadOutcome {
                superblock,
                copy,
                copy_errors: [None, None],
                other_events: Some(other),
                v1_present,
            })
        }
        (Ok(s), Err(e)) => Ok(ReadOutcome {
            superblock: s,
            copy: 0,
            copy_errors: [None, Some(e)],
            other_events: None,
            v1_present,
        }),
        (Err(e), Ok(s)) => Ok(ReadOutcome {
            superblock: s,
            copy: 1,
            copy_errors: [Some(e), None],
            other_events: None,
            v1_present,
        }),
        (Err(e0), Err(e1)) => {
            if e0.is_absent() && e1.is_absent() {
                Err(ReadError::NoMetadata)
            } else {
                Err(ReadError::BothBad {
                    copy0: Box::new(e0),
                    copy1: Box::new(e1),
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Layout.

/// Where the bitmap regions and the data go on a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The external bitmap region, from the member's sector 0 (version 1:
    /// [`BITMAP_OFFSET`]; version 2: right after the kernel region, or at
    /// sector 2048 when it does not fit below copy 1).
    pub bitmap_offset: Sectors,
    /// External bitmap region size (a multiple of 4096).
    pub bitmap_size: Bytes,
    /// Data offset (a multiple of 1 MiB, at least 1 MiB).
    pub data_offset: Sectors,
}

/// Compute the version 2 layout for `geometry` with a bitmap chunk of
/// `bitmap_chunk` bytes. `geometry.component_size` may be an upper bound
/// (e.g. the smallest device's size): the bitmap is then large enough for
/// any smaller component size too.
pub fn layout(geometry: &Geometry, bitmap_chunk: Bytes) -> Result<Layout, FormatError> {
    layout_for(VERSION, geometry, bitmap_chunk)
}

/// [`layout`] for either format version.
pub fn layout_for(
    version: u32,
    geometry: &Geometry,
    bitmap_chunk: Bytes,
) -> Result<Layout, FormatError> {
    check_bitmap_chunk(bitmap_chunk)?;
    if geometry.component_size > MAX_DEVICE_SECTORS {
        return Err(field(
            "component_size",
            geometry.component_size.0,
            format!("must be at most {} sectors", MAX_DEVICE_SECTORS.0),
        ));
    }
    if geometry.raid_disks == 0 || geometry.raid_disks as usize > MAX_MEMBERS {
        return Err(field(
            "raid_disks",
            geometry.raid_disks,
            format!("must be 1..={MAX_MEMBERS}"),
        ));
    }
    let chunks = meta::bitmap_chunks(geometry.bitmap_span(), bitmap_chunk);
    let bitmap_size = Bytes(chunks.div_ceil(8).max(1)).align_up(BITMAP_ALIGN);
    let bitmap_offset = if version == VERSION_1 {
        BITMAP_OFFSET
    } else {
        let k_end = KERNEL_BITMAP_SECTOR.0 + kernel_region_size(chunks).0 / SECTOR_SIZE;
        if k_end > COPY1_V2_SECTOR.0 {
            return Err(field(
                "bitmap_chunk",
                bitmap_chunk.0,
                format!(
                    "{chunks} bitmap chunks do not fit in the kernel bitmap region (sectors 8 to {}); use a larger bitmap chunk",
                    COPY1_V2_SECTOR.0
                ),
            ));
        }
        if k_end + bitmap_size.0 / SECTOR_SIZE <= COPY1_V2_SECTOR.0 {
            Sectors(k_end)
        } else {
            DATA_ALIGN
        }
    };
    let end = Bytes(bitmap_offset.bytes().0 + bitmap_size.0);
    let data_offset = end.align_up(DATA_ALIGN.bytes().0).sectors_floor();
    Ok(Layout {
        bitmap_offset,
        bitmap_size,
        data_offset: Sectors(data_offset.0.max(DATA_ALIGN.0)),
    })
}

#[cfg(test)]
pub(crate) mod tests;
