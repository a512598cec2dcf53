//! Foreign signature detection: is something already on this device?
//!
//! Data-driven: [`SIGNATURES`] lists each format's magic and where it is;
//! [`probe_image`] is pure (it looks at a head and a tail window of the
//! device) and [`probe`] reads those windows from a [`Device`].

use crate::device::{Device, DeviceError, ALIGN};
use crate::format::{self, META_AREA};
use std::fmt;

/// Where a magic sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// At this byte offset from the start.
    Start(u64),
    /// mdadm 0.90: at `(size & !(64K-1)) - 64K`.
    Md090,
    /// mdadm 1.0: at `(size - 8K) & !(4K-1)`.
    Md10,
    /// This many bytes before the end (e.g. the GPT backup header).
    FromEnd(u64),
}

/// Extra condition for a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The magic alone.
    Magic,
    /// MBR: 0x55AA plus at least one nonzero partition entry.
    MbrEntry,
}

/// One known signature.
#[derive(Debug, Clone, Copy)]
pub struct SigDef {
    /// What it is.
    pub name: &'static str,
    /// Where.
    pub loc: Loc,
    /// The magic bytes.
    pub magic: &'static [u8],
    /// Additional check.
    pub check: Check,
}

const MD_MAGIC: &[u8] = &0xa92b_4efc_u32.to_le_bytes();

/// Every foreign signature probed for (mdext itself is decoded separately).
#[rustfmt::skip]
pub const SIGNATURES: &[SigDef] = &[
    SigDef { name: "mdadm 0.90 superblock", loc: Loc::Md090, magic: MD_MAGIC, check: Check::Magic },
    SigDef { name: "mdadm 1.0 superblock", loc: Loc::Md10, magic: MD_MAGIC, check: Check::Magic },
    SigDef { name: "mdadm 1.1 superblock", loc: Loc::Start(0), magic: MD_MAGIC, check: Check::Magic },
    SigDef { name: "mdadm 1.2 superblock", loc: Loc::Start(4096), magic: MD_MAGIC, check: Check::Magic },
    SigDef { name: "ext2/3/4 filesystem", loc: Loc::Start(1080), magic: &[0x53, 0xef], check: Check::Magic },
    SigDef { name: "xfs filesystem", loc: Loc::Start(0), magic: b"XFSB", check: Check::Magic },
    SigDef { name: "btrfs filesystem", loc: Loc::Start(65600), magic: b"_BHRfS_M", check: Check::Magic },
    // Swap: the signature ends the first page; page sizes 4K, 8K, 16K, 64K.
    SigDef { name: "swap space", loc: Loc::Start(4086), magic: b"SWAPSPACE2", check: Check::Magic },
    SigDef { name: "swap space", loc: Loc::Start(8182), magic: b"SWAPSPACE2", check: Check::Magic },
    SigDef { name: "swap space", loc: Loc::Start(16374), magic: b"SWAPSPACE2", check: Check::Magic },
    SigDef { name: "swap space", loc: Loc::Start(65526), magic: b"SWAPSPACE2", check: Check::Magic },
    SigDef { name: "swap space (old)", loc: Loc::Start(4086), magic: b"SWAP-SPACE", check: Check::Magic },
    SigDef { name: "swap space (old)", loc: Loc::Start(65526), magic: b"SWAP-SPACE", check: Check::Magic },
    SigDef { name: "LUKS encrypted volume", loc: Loc::Start(0), magic: b"LUKS\xba\xbe", check: Check::Magic },
    // LVM2's label may be in any of the first four sectors (sector 1 by default).
    SigDef { name: "LVM2 physical volume", loc: Loc::Start(0), magic: b"LABELONE", check: Check::Magic },
    SigDef { name: "LVM2 physical volume", loc: Loc::Start(512), magic: b"LABELONE", check: Check::Magic },
    SigDef { name: "LVM2 physical volume", loc: Loc::Start(1024), magic: b"LABELONE", check: Check::Magic },
    SigDef { name: "LVM2 physical volume", loc: Loc::Start(1536), magic: b"LABELONE", check: Check::Magic },
    SigDef { name: "GPT partition table", loc: Loc::Start(512), magic: b"EFI PART", check: Check::Magic },
    SigDef { name: "GPT partition table", loc: Loc::Start(4096), magic: b"EFI PART", check: Check::Magic },
    SigDef { name: "GPT partition table (backup)", loc: Loc::FromEnd(512), magic: b"EFI PART", check: Check::Magic },
    SigDef { name: "MBR partition table", loc: Loc::Start(510), magic: &[0x55, 0xaa], check: Check::MbrEntry },
    SigDef { name: "iso9660 filesystem", loc: Loc::Start(32769), magic: b"CD001", check: Check::Magic },
];

/// Bytes from the start that [`probe`] reads (covers every `Loc::Start`).
pub const HEAD: u64 = 72 * 1024;
/// Bytes before the end that [`probe`] reads (covers 0.90 and 1.0 and
/// the GPT backup).
pub const TAIL: u64 = 136 * 1024;

const _: () = assert!(HEAD % ALIGN as u64 == 0 && TAIL % ALIGN as u64 == 0);
const _: () = assert!(HEAD as usize >= META_AREA);

/// A signature found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// What it is ("xfs filesystem", "mdext array", ...).
    pub name: &'static str,
    /// Byte offset of the magic.
    pub offset: u64,
    /// More detail (for mdext: the array's name and uuid).
    pub detail: Option<String>,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.name, self.offset)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

fn offset_of(loc: Loc, size: u64) -> Option<u64> {
    match loc {
        Loc::Start(o) => Some(o),
        Loc::Md090 => (size & !(65536 - 1)).checked_sub(65536),
        Loc::Md10 => size.checked_sub(8192).map(|o| o & !(4096 - 1)),
        Loc::FromEnd(n) => size.checked_sub(n),
    }
}

/// Look for signatures in a device of `size` bytes, given its first bytes
/// (`head`) and the bytes from `tail_offset` on (`tail`). Pure.
pub fn probe_image(head: &[u8], tail: &[u8], tail_offset: u64, size: u64) -> Vec<Found> {
    let get = |off: u64, len: usize| -> Option<&[u8]> {
        let end = off.checked_add(len as u64)?;
        if end > size {
            return None;
        }
        if end <= head.len() as u64 {
            return head.get(off as usize..end as usize);
        }
        let rel = off.checked_sub(tail_offset)?;
        tail.get(rel as usize..rel as usize + len)
    };
    let mut out = Vec::new();
    if let Some(area) = get(0, META_AREA) {
        match format::read_area(area) {
            Ok(r) => out.push(Found {
                name: "mdext array",
                offset: format::copy_offset(r.copy),
                detail: Some(format!(
                    "name {}, uuid {}",
                    r.superblock.array.name, r.superblock.array.uuid
                )),
            }),
            Err(format::ReadError::NoMetadata) => {}
            Err(e) => out.push(Found {
                name: "mdext array (damaged)",
                offset: 0,
                detail: Some(e.to_string()),
            }),
        }
    }
    for s in SIGNATURES {
        let Some(off) = offset_of(s.loc, size) else {
            continue;
        };
        if get(off, s.magic.len()) != Some(s.magic) {
            continue;
        }
        if s.check == Check::MbrEntry {
            let Some(table) = get(446, 64) else { continue };
            if table.iter().all(|&b| b == 0) {
                continue;
            }
        }
        // One report per format and place (the swap variants overlap).
        if out
            .iter()
            .any(|f: &Found| f.name == s.name && f.offset == off)
        {
            continue;
        }
        out.push(Found {
            name: s.name,
            offset: off,
            detail: None,
        });
    }
    out
}

/// The window [`probe`] reads at the end of a device of `size` bytes.
pub fn tail_window(size: u64) -> (u64, u64) {
    let start = size.saturating_sub(TAIL) & !(ALIGN as u64 - 1);
    (start, size - start)
}

/// Read the head and tail of `dev` and look for signatures.
pub fn probe(dev: &Device) -> Result<Vec<Found>, DeviceError> {
    let size = dev.size().0;
    let head = dev.read_partial(0, HEAD.min(size) as usize)?;
    let (start, len) = tail_window(size);
    let tail = dev.read_partial(start, len as usize)?;
    let head_len = HEAD.min(size) as usize;
    Ok(probe_image(
        &head[..head_len],
        &tail[..len as usize],
        start,
        size,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with(def: &SigDef, size: u64) -> Vec<u8> {
        let mut v = vec![0u8; size as usize];
        let off = offset_of(def.loc, size).expect("fits") as usize;
        v[off..off + def.magic.len()].copy_from_slice(def.magic);
        if def.check == Check::MbrEntry {
            v[446 + 4] = 0x83;
        }
        v
    }

    #[test]
    fn every_signature_is_found_where_expected() {
        // A size that is not a multiple of 64K exercises the end rounding.
        let size = (4 << 20) + 12 * 1024 + 512;
        for def in SIGNATURES {
            let img = image_with(def, size);
            let (ts, _) = tail_window(size);
            let f = probe_image(&img[..HEAD as usize], &img[ts as usize..], ts, size);
            assert!(
                f.iter().any(|x| x.name == def.name),
                "{} not found: {f:?}",
                def.name
            );
        }
        assert_eq!(offset_of(Loc::Md090, size), Some((4 << 20) - 65536));
        assert_eq!(offset_of(Loc::Md10, size), Some((4 << 20) + 4096));
        let blank = vec![0u8; size as usize];
        let (ts, _) = tail_window(size);
        assert!(probe_image(&blank[..HEAD as usize], &blank[ts as usize..], ts, size).is_empty());
    }

    #[test]
    fn mbr_needs_an_entry() {
        let mut v = vec![0u8; 1 << 20];
        v[510] = 0x55;
        v[511] = 0xaa;
        let (ts, _) = tail_window(1 << 20);
        assert!(probe_image(&v[..HEAD as usize], &v[ts as usize..], ts, 1 << 20).is_empty());
        v[446 + 4] = 0x83;
        let f = probe_image(&v[..HEAD as usize], &v[ts as usize..], ts, 1 << 20);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].name, "MBR partition table");
        assert_eq!(f[0].offset, 510);
        assert_eq!(f[0].to_string(), "MBR partition table at byte 510");
    }

    #[test]
    fn tiny_devices_do_not_panic() {
        for size in [0u64, 1, 511, 4096, 8192, 65536] {
            let v = vec![0x55u8; size as usize];
            let (ts, _) = tail_window(size);
            let h = (HEAD as usize).min(v.len());
            let _ = probe_image(&v[..h], &v[ts as usize..], ts, size);
        }
    }
}
