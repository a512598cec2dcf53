//! Conversion of format version 1 members to version 2, crash-safe (the
//! order is `man 5 mdext`, "Conversion from version 1").
//!
//! [`plan`] is pure: from what each member holds it lists the writes, in
//! order, each a whole block at a byte offset. Whatever prefix of them
//! reaches the disks (a power cut after any write, or in the middle of one),
//! every member keeps a valid copy of the newest record it reached, the
//! bits stay where that record says, and [`plan`] on the result finishes
//! the job. The unit tests cut after every single write and check exactly
//! that.

use crate::format::{
    self, FormatError, ReadOutcome, COPY1_V1_OFFSET, COPY1_V2_SECTOR, COPY_SIZE, DATA_ALIGN,
    KERNEL_BITMAP_SECTOR, VERSION, VERSION_1,
};
use crate::meta::{ArrayMeta, BitmapMode, Superblock};
use crate::units::{Sectors, SECTOR_SIZE};
use thiserror::Error;

/// What one member holds, as the caller read it.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its metadata (every copy position read).
    pub outcome: ReadOutcome,
    /// Its bits from the external region of the newest record among the
    /// members (`bitmap.offset`, `bitmap.size`); used only when the region
    /// must move.
    pub bits: Vec<u8>,
}

/// One write: `bytes` at byte `offset` of member `member`, then fdatasync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// Index into the members given to [`plan`].
    pub member: usize,
    /// Byte offset on the member.
    pub offset: u64,
    /// What to write.
    pub bytes: Vec<u8>,
    /// What it is, for messages.
    pub what: &'static str,
}

/// The conversion to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The writes, in order.
    pub writes: Vec<Write>,
    /// The record the members carry at the end (version 2).
    pub record: ArrayMeta,
    /// The external region moved (its new offset), if it had to.
    pub relocated: Option<Sectors>,
}

/// Why a conversion cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvertError {
    /// No member given.
    #[error("no member to convert")]
    Empty,
    /// The version 2 layout has no room for this array's bitmap.
    #[error("cannot convert to format version 2: {0}; the array stays version 1")]
    NoRoom(String),
    /// A record would not encode.
    #[error("cannot convert to format version 2: {0}")]
    Format(#[from] FormatError),
}

/// Whether these members need (more) conversion: the newest record is
/// version 1, or some member still holds a version 1 copy.
pub fn needed(members: &[&ReadOutcome]) -> bool {
    members
        .iter()
        .any(|m| m.v1_present || m.superblock.array.version == VERSION_1)
}

fn round8(s: u64) -> u64 {
    s.div_ceil(8) * 8
}

/// Where the external region goes in version 2 for a version 1 `record`
/// whose members' smallest data offset is `min_data`.
fn v2_offset(record: &ArrayMeta, min_data: Sectors) -> Result<Sectors, ConvertError> {
    let chunks = record.bitmap_chunks();
    let k_end = KERNEL_BITMAP_SECTOR.0 + format::kernel_region_size(chunks).0 / SECTOR_SIZE;
    let c1 = COPY1_V2_SECTOR.0;
    if k_end > c1 {
        return Err(ConvertError::NoRoom(format!(
            "{chunks} bitmap chunks do not fit in md's bitmap region (sectors 8 to {c1})"
        )));
    }
    let off = record.bitmap.offset.0;
    let len = record.bitmap.size.0 / SECTOR_SIZE;
    let clear = |o: u64| o + len <= c1 || o >= c1 + 8;
    if !clear(off) {
        return Err(ConvertError::NoRoom(format!(
            "the version 1 bitmap (sectors {off} to {}) covers sector {c1}, where version 2 keeps copy 1",
            off + len
        )));
    }
    if off >= k_end {
        return Ok(Sectors(off));
    }
    // Past both md's region and the old bits: nothing reads there yet.
    let below = round8(k_end.max(off + len));
    if below + len <= c1 {
        return Ok(Sectors(below));
    }
    let above = round8(DATA_ALIGN.0.max(off + len));
    if above + len <= min_data.0 {
        return Ok(Sectors(above));
    }
    Err(ConvertError::NoRoom(format!(
        "no free room for the {}-byte bitmap outside md's bitmap region before the data",
        record.bitmap.size.0
    )))
}

/// The writes that convert `members` (all of one array, the ones the
/// newest record lists in sync) to version 2, or `None` when nothing is
/// left to do. `utime` is stamped on the records.
pub fn plan(members: &[Member], utime: u64) -> Result<Option<Plan>, ConvertError> {
    let outcomes: Vec<&ReadOutcome> = members.iter().map(|m| &m.outcome).collect();
    let newest = outcomes
        .iter()
        .map(|o| &o.superblock.array)
        .max_by_key(|a| a.events)
        .ok_or(ConvertError::Empty)?;
    if !needed(&outcomes) {
        return Ok(None);
    }
    let mut record = newest.clone();
    let mut relocated = None;
    if newest.version == VERSION_1 {
        let min_data = outcomes
            .iter()
            .map(|o| o.superblock.device.data_offset)
            .min()
            .unwrap_or(DATA_ALIGN);
        let off = v2_offset(newest, min_data)?;
        record.version = VERSION;
        record.bitmap.mode = BitmapMode::External;
        if off != newest.bitmap.offset {
            record.bitmap.offset = off;
            relocated = Some(off);
        }
    }
    record.utime = utime;
    let mut writes = Vec::new();
    if let Some(off) = relocated {
        for (i, m) in members.iter().enumerate() {
            let mut bytes = m.bits.clone();
            bytes.resize(usize::try_from(record.bitmap.size.0).unwrap_or(0), 0);
            writes.push(Write {
                member: i,
                offset: off.bytes().0,
                bytes,
                what: "the bitmap, moved clear of md's bitmap region",
            });
        }
    }
    // The first record goes to copy 1 (sector 2040, unused in version 1),
    // unless some member's only good copy is there (its copy 0 is torn).
    let first = if outcomes
        .iter()
        .any(|o| o.superblock.array.version == VERSION && o.copy == 1 && o.copy_errors[0].is_some())
    {
        0
    } else {
        1
    };
    let e1 = format::next_events(newest.events, Some(first));
    for events in [e1, e1 + 1] {
        record.events = events;
        for (i, m) in members.iter().enumerate() {
            let sb = Superblock {
                array: record.clone(),
                device: m.outcome.superblock.device,
            };
            let e = format::encode(&sb)?;
            writes.push(Write {
                member: i,
                offset: e.offset,
                bytes: e.bytes,
                what: if e.index == 1 {
                    "the version 2 record, copy 1 (sector 2040)"
                } else {
                    "the version 2 record, copy 0"
                },
            });
        }
    }
    for i in 0..members.len() {
        writes.push(Write {
            member: i,
            offset: COPY1_V1_OFFSET,
            bytes: vec![0u8; COPY_SIZE],
            what: "zeros over version 1's copy 1 (sectors 8-15)",
        });
    }
    Ok(Some(Plan {
        writes,
        record,
        relocated,
    }))
}

#[cfg(test)]
mod tests;
