//! The bitmap modes' pure rules: which mode the running kernel allows
//! (decided from what sysfs offers before the start, never from a version
//! number), md's 256-byte bitmap superblock for the kernel-managed mode,
//! and the bit merge when an array moves between kernels of the two kinds.
//! No I/O here; `man 5 mdext` "Bitmap modes" and `man 8 mdextmon` "Bitmap
//! modes" describe the protocols.
//!
//! # The kernel-managed mode (`kernel`)
//! md from 6.18 on creates its bitmap sysfs group only with a bitmap, so
//! `bitmap/metadata=external` cannot be written before the start; the only
//! bitmap it attaches to an external-metadata array is its own, at sector
//! 8 (`default_offset`, set by the `SET_ARRAY_INFO` ioctl issued before
//! `metadata_version`), with a superblock userspace writes
//! ([`encode_super`]). md sets and clears the bits itself (`can_clear` is
//! inert), so the dirty chunks are re-armed with `bitmap_set_bits` at every
//! dirty or degraded activation ([`crate::monitor::start_plan`]).

use crate::meta::{ArrayMeta, BitmapMode};
use crate::units::{Bytes, Sectors};

/// md's `BITMAP_MAGIC` ("bitm" little-endian).
pub const MAGIC: u32 = 0x6d74_6962;
/// md's `BITMAP_MAJOR_HI`: little-endian bit order.
pub const SB_VERSION: u32 = 4;
/// Size of `bitmap_super_t`; the bits follow it.
pub const SB_SIZE: usize = 256;
/// `events` written to md's superblock. md never compares it for an array
/// without persistent metadata; mdext's own record decides what a member
/// may trust.
pub const SB_EVENTS: u64 = 0;
/// `events_cleared` written before every activation: unequal to md's
/// events (always 0 on an external-metadata array), so on a degraded start
/// md loads every set bit as needing sync instead of clearing it
/// (`md_bitmap_load`: `start = recovery_cp` only if not degraded or
/// `events_cleared == events`). md writes it back to 0 once running, hence
/// before every activation.
pub const SB_EVENTS_CLEARED: u64 = 1;

/// Offsets in `bitmap_super_t` (md-bitmap.h).
mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const UUID: usize = 8;
    pub const EVENTS: usize = 24;
    pub const EVENTS_CLEARED: usize = 32;
    pub const SYNC_SIZE: usize = 40;
    pub const STATE: usize = 48;
    pub const CHUNKSIZE: usize = 52;
    pub const DAEMON_SLEEP: usize = 56;
    pub const WRITE_BEHIND: usize = 60;
    pub const SECTORS_RESERVED: usize = 64;
    pub const NODES: usize = 68;
}

/// Errors of the bitmap-mode rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmodeError {
    /// The kernel offers neither bitmap route.
    #[error(
        "this kernel offers neither bitmap/metadata before the start (external bitmap) nor \
         bitmap_type with 'bitmap' (md's own bitmap at sector 8): it cannot run a write-intent \
         bitmap for an external-metadata array, and mdext does not run an array without the \
         bitmap its metadata promises (bitmap_type reads {0:?})"
    )]
    NoRoute(Option<String>),
    /// A field of md's bitmap superblock is not what mdext writes.
    #[error("md bitmap superblock: {field} is {value}: {why}")]
    Super {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is wrong.
        why: &'static str,
    },
    /// A value does not fit md's 32-bit field.
    #[error("md bitmap superblock: {0} does not fit in 32 bits")]
    TooLarge(&'static str),
}

/// What sysfs offers on a new md device (after `new_array`, before
/// `metadata_version` and the start): the probe's facts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offers {
    /// `bitmap/metadata` exists (md up to 6.17 creates the bitmap group
    /// with the device).
    pub bitmap_metadata: bool,
    /// The contents of `bitmap_type`, if the file exists (6.18 on; e.g.
    /// `none [bitmap]`).
    pub bitmap_type: Option<String>,
}

/// The bitmap mode to run an array recorded in `recorded` with, on a
/// kernel that offers `offers`: `none` stays `none`; where
/// `bitmap/metadata` exists before the start, the external bitmap (the
/// `can_clear` protocol); where only `bitmap_type` offers md's `bitmap`
/// backend, the kernel-managed bitmap at sector 8. Otherwise refused.
pub fn decide(recorded: BitmapMode, offers: &Offers) -> Result<BitmapMode, KmodeError> {
    if recorded == BitmapMode::None {
        return Ok(BitmapMode::None);
    }
    if offers.bitmap_metadata {
        return Ok(BitmapMode::External);
    }
    let has_bitmap = offers.bitmap_type.as_deref().is_some_and(|t| {
        t.split_whitespace()
            .any(|w| w.trim_matches(|c| c == '[' || c == ']') == "bitmap")
    });
    if has_bitmap {
        Ok(BitmapMode::Kernel)
    } else {
        Err(KmodeError::NoRoute(
            offers.bitmap_type.as_ref().map(|t| t.trim().to_string()),
        ))
    }
}

/// A bitmap region of a version 2 member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// The external region at `bitmap_offset` (no header).
    External,
    /// md's region at sector 8: the bits from byte 256.
    Kernel,
}

/// The region that holds the bits of an array running in `mode`.
pub fn region(mode: BitmapMode) -> Option<Region> {
    match mode {
        BitmapMode::None => None,
        BitmapMode::External => Some(Region::External),
        BitmapMode::Kernel => Some(Region::Kernel),
    }
}

/// A move between kernels of the two kinds: the dirty chunks of `from`
/// (the region the record names, authoritative until the record with the
/// new mode is written) are merged into `to` on every member first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// The region the record names.
    pub from: Region,
    /// The region the new mode runs from.
    pub to: Region,
}

/// The move an array recorded in `recorded` needs to run in `running`,
/// if any (none for a `none` array, or when the mode does not change).
pub fn switch(recorded: BitmapMode, running: BitmapMode) -> Option<Switch> {
    match (region(recorded), region(running)) {
        (Some(from), Some(to)) if from != to => Some(Switch { from, to }),
        _ => None,
    }
}

/// The bits to write to the new region: every chunk dirty in either
/// (`from` OR `into`), for the first `chunks` chunks; bits at and beyond
/// `chunks` are zero. The result is as long as `into`. Both directions keep
/// every dirty chunk; a chunk dirty only in the new region's stale bits
/// costs at most a resync of that chunk.
pub fn merge(from: &[u8], into: &[u8], chunks: u64) -> Vec<u8> {
    let mut out: Vec<u8> = into.to_vec();
    for (o, f) in out.iter_mut().zip(from) {
        *o |= f;
    }
    let full = usize::try_from(chunks / 8).unwrap_or(usize::MAX);
    let rem = (chunks % 8) as u32;
    for (i, b) in out.iter_mut().enumerate() {
        if i > full || (i == full && rem == 0) {
            *b = 0;
        } else if i == full {
            *b &= (1u8 << rem) - 1;
        }
    }
    out
}

/// md's bitmap superblock as mdext writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSuper {
    /// The array's UUID (md compares it only for persistent metadata).
    pub uuid: uuid::Uuid,
    /// The span the bits cover, in sectors (md rewrites it).
    pub sync_size: Sectors,
    /// Bytes per bit.
    pub chunk: Bytes,
    /// The bitmap daemon's period, seconds (`bitmap/time_base` at attach).
    pub daemon_sleep: u32,
    /// Sectors reserved for superblock and bits from sector 8.
    pub sectors_reserved: u32,
    /// `events_cleared` ([`SB_EVENTS_CLEARED`] as written).
    pub events_cleared: u64,
}

impl KernelSuper {
    /// The superblock for `meta`, attaching with `daemon_sleep` seconds
    /// (the start hold, [`crate::monitor::HOLD_TIME_BASE`]).
    pub fn for_array(meta: &ArrayMeta, daemon_sleep: u32) -> Result<KernelSuper, KmodeError> {
        let region = crate::format::kernel_region_size(meta.bitmap_chunks());
        Ok(KernelSuper {
            uuid: meta.uuid,
            sync_size: meta.geometry.bitmap_span(),
            chunk: meta.bitmap.chunk,
            daemon_sleep,
            sectors_reserved: u32::try_from(region.0 / 512)
                .map_err(|_| KmodeError::TooLarge("sectors_reserved"))?,
            events_cleared: SB_EVENTS_CLEARED,
        })
    }
}

/// The 256 bytes of `bitmap_super_t` (version 4, little-endian, no
/// cluster, state 0, write_behind 0).
pub fn encode_super(s: &KernelSuper) -> Result<[u8; SB_SIZE], KmodeError> {
    let mut b = [0u8; SB_SIZE];
    let chunk = u32::try_from(s.chunk.0).map_err(|_| KmodeError::TooLarge("chunksize"))?;
    b[off::MAGIC..off::MAGIC + 4].copy_from_slice(&MAGIC.to_le_bytes());
    b[off::VERSION..off::VERSION + 4].copy_from_slice(&SB_VERSION.to_le_bytes());
    b[off::UUID..off::UUID + 16].copy_from_slice(s.uuid.as_bytes());
    b[off::EVENTS..off::EVENTS + 8].copy_from_slice(&SB_EVENTS.to_le_bytes());
    b[off::EVENTS_CLEARED..off::EVENTS_CLEARED + 8]
        .copy_from_slice(&s.events_cleared.to_le_bytes());
    b[off::SYNC_SIZE..off::SYNC_SIZE + 8].copy_from_slice(&s.sync_size.0.to_le_bytes());
    b[off::CHUNKSIZE..off::CHUNKSIZE + 4].copy_from_slice(&chunk.to_le_bytes());
    b[off::DAEMON_SLEEP..off::DAEMON_SLEEP + 4].copy_from_slice(&s.daemon_sleep.to_le_bytes());
    b[off::SECTORS_RESERVED..off::SECTORS_RESERVED + 4]
        .copy_from_slice(&s.sectors_reserved.to_le_bytes());
    Ok(b)
}

fn le32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Read md's bitmap superblock back (as md left it: md rewrites events,
/// events_cleared and sync_size).
pub fn decode_super(b: &[u8]) -> Result<KernelSuper, KmodeError> {
    let bad = |field, value: String, why| KmodeError::Super { field, value, why };
    if b.len() < SB_SIZE {
        return Err(bad("length", b.len().to_string(), "shorter than 256 bytes"));
    }
    let magic = le32(b, off::MAGIC);
    if magic != MAGIC {
        return Err(bad("magic", format!("{magic:#x}"), "not md's bitmap magic"));
    }
    let version = le32(b, off::VERSION);
    if version != SB_VERSION {
        return Err(bad(
            "version",
            version.to_string(),
            "mdext writes version 4",
        ));
    }
    for (field, o) in [
        ("state", off::STATE),
        ("write_behind", off::WRITE_BEHIND),
        ("nodes", off::NODES),
    ] {
        let v = le32(b, o);
        if v != 0 && field != "state" {
            return Err(bad(field, v.to_string(), "mdext writes 0"));
        }
    }
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[off::UUID..off::UUID + 16]);
    Ok(KernelSuper {
        uuid: uuid::Uuid::from_bytes(u),
        sync_size: Sectors(le64(b, off::SYNC_SIZE)),
        chunk: Bytes(u64::from(le32(b, off::CHUNKSIZE))),
        daemon_sleep: le32(b, off::DAEMON_SLEEP),
        sectors_reserved: le32(b, off::SECTORS_RESERVED),
        events_cleared: le64(b, off::EVENTS_CLEARED),
    })
}

#[cfg(test)]
mod tests;
