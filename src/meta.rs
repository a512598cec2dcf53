//! The logical content of mdext's metadata: what an array is and what each
//! member holds. No bytes here: [`crate::format`] turns these values into the
//! on-disk form and back; the monitor and the assembly reason about them.

use crate::md::{Checkpoint, Level};
use crate::units::{Bytes, Sectors};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most entries a member table can hold (raid members plus spares).
pub const MAX_MEMBERS: usize = 64;

/// Longest array name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 32;

/// How a rebuilding member is being rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RebuildKind {
    /// Only the chunks whose bitmap bit is set (the member was away briefly
    /// and the bitmap has been kept since it left).
    Bitmap,
    /// Every sector.
    Full,
}

/// A member table entry's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum MemberState {
    /// An unused table entry (no device belongs here).
    Empty,
    /// The member holds good data for its slot.
    InSync,
    /// Being rebuilt; everything below `checkpoint` is already good.
    Rebuilding {
        /// Bitmap-based or full.
        kind: RebuildKind,
        /// Sectors (of the member's data area) already rebuilt.
        checkpoint: Sectors,
    },
    /// Failed: its data is not to be trusted for this slot.
    Failed,
    /// A spare with no slot.
    Spare,
    /// The slot has no device (its member was removed, or never present).
    Missing,
}

impl MemberState {
    /// The state's name, as `examine` and the JSON output spell it.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Empty => "empty",
            MemberState::InSync => "in-sync",
            MemberState::Rebuilding { .. } => "rebuilding",
            MemberState::Failed => "failed",
            MemberState::Spare => "spare",
            MemberState::Missing => "missing",
        }
    }

    /// Whether the member holds good data.
    pub fn is_in_sync(self) -> bool {
        matches!(self, MemberState::InSync)
    }
}

/// One entry of the member table. For index `i < raid_disks` the entry
/// describes slot `i`; entries from `raid_disks` on are spares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The member device's UUID (nil for an empty or missing slot with no
    /// known device).
    pub uuid: Uuid,
    /// Its state.
    pub state: MemberState,
    /// The array event count at which this state was recorded.
    pub events: u64,
}

/// RAID geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Geometry {
    /// RAID level.
    pub level: Level,
    /// md `layout` (0 for raid1; e.g. 258 = near-2 for raid10, 2 =
    /// left-symmetric for raid5/6).
    pub layout: u32,
    /// Stripe chunk in bytes (0 for raid1).
    pub chunk_size: Bytes,
    /// Number of active slots.
    pub raid_disks: u32,
    /// Data each member contributes (md's `component_size`), in sectors.
    pub component_size: Sectors,
}

/// Which write-intent bitmap the array runs with (format version 2 records
/// the one it last ran in; version 1 always means [`BitmapMode::External`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BitmapMode {
    /// No bitmap: a full resync after a crash, a full rebuild on re-add.
    None,
    /// md's external bitmap (`bitmap/metadata=external`) at `offset`,
    /// cleared only when mdext allows it (`can_clear`). Kernels up to 6.17.
    #[default]
    External,
    /// md's own bitmap at sector 8 (superblock written by mdext, bits from
    /// byte 256), attached after the start; the kernel clears bits itself.
    /// Kernels from 6.18 on.
    Kernel,
}

impl BitmapMode {
    /// The name `examine`, `--bitmap` and the JSON output use.
    pub fn name(self) -> &'static str {
        match self {
            BitmapMode::None => "none",
            BitmapMode::External => "external",
            BitmapMode::Kernel => "kernel",
        }
    }
    /// The on-disk code (version 2 `bitmap_mode`).
    pub fn code(self) -> u32 {
        match self {
            BitmapMode::None => 0,
            BitmapMode::External => 1,
            BitmapMode::Kernel => 2,
        }
    }
    /// From the on-disk code.
    pub fn from_code(c: u32) -> Option<BitmapMode> {
        match c {
            0 => Some(BitmapMode::None),
            1 => Some(BitmapMode::External),
            2 => Some(BitmapMode::Kernel),
            _ => None,
        }
    }
}

fn default_version() -> u32 {
    2
}

/// The external write-intent bitmap's settings and its clearing state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BitmapInfo {
    /// Where the bits start, in sectors from the member's sector 0
    /// (md's `bitmap/location`).
    pub offset: Sectors,
    /// Bytes reserved for the bits (a multiple of 4096).
    pub size: Bytes,
    /// Bytes of array (raid1/raid10) or member (raid5/6) data per bit.
    pub chunk: Bytes,
    /// md's `bitmap/time_base`, seconds.
    pub time_base: u32,
    /// The event count at which the kernel was last allowed to clear bits
    /// (`bitmap/can_clear=true` written after all members were recorded in
    /// sync). A member whose own metadata has events at or above this value
    /// missed no cleared bit and can be rebuilt from the bitmap.
    pub events_cleared: u64,
    /// The bitmap mode the array last ran in (whose region holds the bits).
    #[serde(default)]
    pub mode: BitmapMode,
}

/// What every member of an array records identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayMeta {
    /// The on-disk format version the record is written in (1 or 2).
    #[serde(default = "default_version")]
    pub version: u32,
    /// The array's UUID.
    pub uuid: Uuid,
    /// Its name (at most [`MAX_NAME_LEN`] bytes, no NUL).
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub ctime: u64,
    /// Last update time, seconds since the epoch.
    pub utime: u64,
    /// Geometry.
    pub geometry: Geometry,
    /// Event count: bumped on every metadata change.
    pub events: u64,
    /// Whether the array was clean (no writes in flight) when recorded.
    pub clean: bool,
    /// Resync owed: `None` when the mirrors/parity are known consistent,
    /// otherwise the sector from which a resync must run.
    pub resync: Checkpoint,
    /// Bitmap.
    pub bitmap: BitmapInfo,
    /// Member table: `raid_disks` slots, then spares.
    pub members: Vec<MemberEntry>,
    /// The event at which the array was last started with `--force` while
    /// dirty and degraded (a parity level md refuses to start so: the
    /// stripes dirty then may hold stale parity). `None`: never. Kept as a
    /// record; only a new `create` clears it.
    #[serde(default)]
    pub forced_start: Option<u64>,
    /// raid1 members md should read from only when no other member can
    /// serve the read (md's `writemostly` member flag), by UUID. On disk
    /// the member entry's flag bit 0; a UUID no entry carries is not
    /// written (its member has left the table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_mostly: Vec<Uuid>,
}

/// What differs between members: this device's identity and data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceMeta {
    /// This device's UUID (matches one member table entry).
    pub uuid: Uuid,
    /// Where the data starts on this device (a multiple of 1 MiB).
    pub data_offset: Sectors,
    /// Data sectors available on this device from `data_offset`.
    pub data_size: Sectors,
}

/// The whole record one member carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// Shared part.
    pub array: ArrayMeta,
    /// This device's part.
    pub device: DeviceMeta,
}

impl ArrayMeta {
    /// The table index of the member with this UUID.
    pub fn index_of(&self, uuid: &Uuid) -> Option<usize> {
        if uuid.is_nil() {
            return None;
        }
        self.members.iter().position(|m| &m.uuid == uuid)
    }

    /// Whether this record, written over `prev` (the record last made
    /// durable on the members; `None` if not known), must wait until the
    /// members' earlier writes are durable: a flush before the record.
    ///
    /// A record claims things about data written before it: `clean` (the
    /// members agree), a resync or rebuild checkpoint (data below it is in
    /// sync), a member in sync. A disk with a write cache may make the
    /// record durable before that data, and a power cut in between would
    /// leave a record claiming data the members lack. Two records need no
    /// flush before them:
    /// - the one that marks a clean array dirty
    ///   ([`ArrayMeta::marks_dirty_only`], on md's latency path): it claims
    ///   nothing;
    /// - the one that marks a dirty array clean again, nothing else
    ///   changed, where md's bits cover the writes
    ///   ([`ArrayMeta::bits_cover_writes`]): it claims the members agree
    ///   outside the set bits, and a bit stays set on a member until that
    ///   member's earlier writes are durable (md clears bits only with a
    ///   bitmap page write that carries a flush before it); a start takes
    ///   such a clean record with bits set as dirty.
    ///
    /// Every other record does.
    pub fn needs_flush_before(&self, prev: Option<&ArrayMeta>) -> bool {
        !prev.is_some_and(|p| {
            self.marks_dirty_only(p) || (self.marks_clean_only(p) && self.bits_cover_writes())
        })
    }

    /// Whether md's bitmap covers every chunk a write may have left unequal
    /// across the members, as long as the writes are not durable on all of
    /// them: a mirror (raid1, raid10: no parity to rebuild from a stripe)
    /// whose bits this daemon keeps (mode external), every slot recorded in
    /// sync. md writes a chunk's bit durably before any data of a write to
    /// it and clears it only after the write reached every member, with a
    /// flush of the member before the bitmap page; and a start takes such
    /// an array's clean record with bits set as dirty
    /// ([`crate::assembly::Choice::resync_start`]).
    pub fn bits_cover_writes(&self) -> bool {
        !self.geometry.level.has_parity()
            && self.bitmap.mode == BitmapMode::External
            && self.all_in_sync()
    }

    /// Whether this record only marks `prev` dirty: it is `prev` with
    /// `clean` false and a later event count (and `events_cleared`
    /// following it where `prev`'s did), nothing else changed.
    pub fn marks_dirty_only(&self, prev: &ArrayMeta) -> bool {
        !self.clean && prev.clean && self.advances_only(prev)
    }

    /// Whether this record only marks `prev` clean, or only advances a
    /// clean `prev`'s event count (the record after a burst of writes that
    /// left a whole mirror's record clean): `prev` with `clean` true and a
    /// later event count (as [`ArrayMeta::marks_dirty_only`]).
    pub fn marks_clean_only(&self, prev: &ArrayMeta) -> bool {
        self.clean && self.advances_only(prev)
    }

    /// `prev` with a later event count (and `events_cleared` following it
    /// where `prev`'s did), `clean` as it may be, nothing else changed.
    fn advances_only(&self, prev: &ArrayMeta) -> bool {
        if self.events <= prev.events {
            return false;
        }
        let mut same = prev.clone();
        same.clean = self.clean;
        same.events = self.events;
        same.utime = self.utime;
        if prev.bitmap.events_cleared == prev.events && self.bitmap.events_cleared == self.events {
            same.bitmap.events_cleared = self.events;
        }
        same == *self
    }

    /// Whether every slot is recorded in sync.
    pub fn all_in_sync(&self) -> bool {
        let n = self.geometry.raid_disks as usize;
        self.members.len() >= n && self.members[..n].iter().all(|m| m.state.is_in_sync())
    }

    /// Whether the member with this UUID is write-mostly.
    pub fn is_write_mostly(&self, uuid: &Uuid) -> bool {
        !uuid.is_nil() && self.write_mostly.contains(uuid)
    }

    /// Number of bitmap chunks that cover the array's data.
    pub fn bitmap_chunks(&self) -> u64 {
        bitmap_chunks(self.geometry.bitmap_span(), self.bitmap.chunk)
    }
}

impl Geometry {
    /// The span the bitmap covers: md sizes its bitmap from
    /// `resync_max_sectors` (`md_bitmap_create`), which raid1, raid5 and
    /// raid6 set to the component size (member sectors) and raid10 to the
    /// array size, `raid10_size()`: the component's whole chunks divided
    /// by the far copies, times `raid_disks`, divided by the near copies,
    /// each division rounding down, in chunks.
    pub fn bitmap_span(&self) -> Sectors {
        match self.level {
            Level::Raid1 | Level::Raid5 | Level::Raid6 => self.component_size,
            Level::Raid10 => {
                let near = (self.layout & 0xff).max(1) as u64;
                let far = ((self.layout >> 8) & 0xff).max(1) as u64;
                let chunk = (self.chunk_size.0 / 512).max(1);
                let chunks = self.component_size.0 / chunk / far * self.raid_disks as u64 / near;
                Sectors(chunks * chunk)
            }
        }
    }
}

/// Seconds since the epoch, for `ctime`/`utime` (0 if the clock is before
/// 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Chunks needed to cover `size` with chunks of `chunk` bytes.
pub fn bitmap_chunks(size: Sectors, chunk: Bytes) -> u64 {
    if chunk.0 == 0 {
        return 0;
    }
    size.bytes().0.div_ceil(chunk.0)
}

/// What a device is in its array, from its own superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// It holds slot `n` (its table entry index is below `raid_disks`).
    Slot(u32),
    /// A spare: its entry is from `raid_disks` on, or it is not in the
    /// table yet.
    Spare,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Slot(n) => write!(f, "{n}"),
            Role::Spare => f.write_str("spare"),
        }
    }
}

impl Superblock {
    /// This device's role according to its own member table.
    pub fn role(&self) -> Role {
        // An index past u32 is past raid_disks too: a spare.
        match self
            .array
            .index_of(&self.device.uuid)
            .and_then(|i| u32::try_from(i).ok())
        {
            Some(i) if i < self.array.geometry.raid_disks => Role::Slot(i),
            _ => Role::Spare,
        }
    }

    /// This device's own table entry, if it has one.
    pub fn own_entry(&self) -> Option<&MemberEntry> {
        self.array
            .index_of(&self.device.uuid)
            .and_then(|i| self.array.members.get(i))
    }
}

/// What follows `external:` in md's `metadata_version` for an mdext array.
/// md keeps at most 16 characters there (it truncates longer values
/// silently), so the tag is `mdext:` and the first 10 hex digits of the
/// UUID; identity is always confirmed from the members' metadata.
pub fn kernel_tag(uuid: &Uuid) -> String {
    let hex = uuid.simple().to_string();
    format!("mdext:{}", &hex[..10])
}

/// Whether an md `metadata_version` value is an mdext array's.
pub fn is_mdext_version(v: &str) -> bool {
    v.strip_prefix("external:mdext:")
        .is_some_and(|h| !h.is_empty())
}

/// A raid1 record for tests: `n` members, all in sync at event `events`
/// (their UUIDs are `0x1000 + slot`), clean, nothing owed, format version
/// 2, the external bitmap at sector 8 (not a valid layout: these records
/// are not encoded) with `events_cleared == events`. Callers change what they test.
#[cfg(test)]
pub(crate) fn test_raid1(n: u32, component: Sectors, chunk: Bytes, events: u64) -> ArrayMeta {
    ArrayMeta {
        version: 2,
        uuid: Uuid::from_u128(7),
        name: "t".into(),
        ctime: 0,
        utime: 0,
        geometry: Geometry {
            level: Level::Raid1,
            layout: 0,
            chunk_size: Bytes(0),
            raid_disks: n,
            component_size: component,
        },
        events,
        clean: true,
        resync: Checkpoint::None,
        bitmap: BitmapInfo {
            offset: Sectors(8),
            size: Bytes(4096),
            chunk,
            time_base: 1,
            events_cleared: events,
            mode: BitmapMode::External,
        },
        members: (0..n)
            .map(|i| MemberEntry {
                uuid: Uuid::from_u128(0x1000 + u128::from(i)),
                state: MemberState::InSync,
                events,
            })
            .collect(),
        forced_start: None,
        write_mostly: Vec::new(),
    }
}

#[cfg(test)]
mod tag_tests {
    use super::*;

    #[test]
    fn a_dirty_record_that_claims_progress_is_flushed_first() {
        let prev = test_raid1(2, Sectors(1 << 20), Bytes(1 << 20), 10);
        let mut next = prev.clone();
        next.clean = false;
        next.events = 11;
        next.bitmap.events_cleared = 11;
        next.utime = 99;
        assert!(!next.needs_flush_before(Some(&prev)), "only marked dirty");
        next.resync = Checkpoint::At(Sectors(2048));
        assert!(next.needs_flush_before(Some(&prev)), "a checkpoint");
        let mut split = prev.clone();
        split.bitmap.events_cleared = 8;
        let mut next = split.clone();
        next.clean = false;
        next.events = 11;
        next.bitmap.events_cleared = 11;
        assert!(
            next.needs_flush_before(Some(&split)),
            "bits kept since 8, now cleared as of 11"
        );
    }

    #[test]
    fn tag_fits_md_metadata_type() {
        let u = Uuid::from_bytes([0xab; 16]);
        let t = kernel_tag(&u);
        assert_eq!(
            t,
            "mdext:abababab
ab"
            .replace('\n', "")
        );
        assert!(t.len() <= 16);
        assert!(is_mdext_version(&format!("external:{t}")));
        assert!(!is_mdext_version("external:imsm"));
        assert!(!is_mdext_version("1.2"));
    }
}
