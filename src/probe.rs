//! Signature detection: is something already on this device?
//!
//! Foreign signatures are libblkid's business: [`probe`] asks libblkid
//! (the library behind `blkid` and `wipefs`) for every signature it knows,
//! RAID members (mdadm, Intel IMSM, DDF, ...), volume managers (LVM2, ZFS,
//! bcache, ...), crypto (LUKS), filesystems and partition tables, each
//! named as `blkid -p` names it (`isw_raid_member`, `LVM2_member`, `gpt`).
//! mdext's own metadata, which libblkid does not know, is recognised by
//! the format reader ([`probe_own`]). [`wipe`] erases what libblkid finds
//! the way `wipefs --all` does: each signature's magic, at the offset
//! libblkid reports, until libblkid finds nothing.

mod blkid;

use crate::device::{Device, DeviceError};
use crate::format::{self, META_AREA};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What [`probe`] reports for mdext's own metadata.
pub const MDEXT_NAME: &str = "mdext array";

/// Upper bound on the wipes of one device: each wipe erases one magic,
/// and the largest count seen in practice is ZFS's (up to 128 uberblocks
/// in each of 4 labels).
const MAX_WIPES: usize = 4096;

/// A signature found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its name: libblkid's `TYPE` or `PTTYPE` (`isw_raid_member`, `ext4`,
    /// `gpt`, ...), or [`MDEXT_NAME`] (or `mdext array (damaged)`).
    pub name: String,
    /// What that is in words ("Intel IMSM RAID member", "filesystem");
    /// empty for mdext.
    pub what: String,
    /// Byte offset of its magic, when known.
    pub offset: Option<u64>,
    /// More detail: label and UUID; for mdext the array's name and uuid.
    pub detail: Option<String>,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if !self.what.is_empty() {
            parts.push(self.what.clone());
        }
        if let Some(d) = &self.detail {
            parts.push(d.clone());
        }
        if let Some(o) = self.offset {
            parts.push(format!("at byte {o}"));
        }
        write!(f, "{}", self.name)?;
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// Why probing or wiping failed; one line, naming the device.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// Opening or reading the device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A libblkid call failed.
    #[error("{path}: libblkid: {op} failed: {source}")]
    Blkid {
        /// The device.
        path: PathBuf,
        /// The call.
        op: &'static str,
        /// errno.
        source: io::Error,
    },
    /// Wiping did not converge (a prober keeps matching after its magic
    /// was erased).
    #[error("{path}: still finding {found} after {MAX_WIPES} wipes; giving up")]
    WipeLoop {
        /// The device.
        path: PathBuf,
        /// The last signature found.
        found: Found,
    },
}

/// Words for the names `blkid` uses most for what mdext may be asked to
/// overwrite; anything else is described by its usage. Only for messages:
/// detection itself is libblkid's.
fn describe(name: &str, usage: Option<&str>, partition_table: bool) -> String {
    let known = match name {
        "isw_raid_member" => "Intel IMSM RAID member",
        "ddf_raid_member" => "SNIA DDF RAID member",
        "linux_raid_member" => "Linux md RAID member",
        "LVM2_member" => "LVM2 physical volume",
        "LVM1_member" => "LVM1 physical volume",
        "zfs_member" => "ZFS pool member",
        "bcache" => "bcache device",
        "crypto_LUKS" => "LUKS encrypted volume",
        "swap" => "swap space",
        "dos" => "MBR partition table",
        "gpt" => "GPT partition table",
        "PMBR" => "protective MBR",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_string();
    }
    if partition_table {
        return "partition table".to_string();
    }
    match usage {
        Some("raid") => "RAID member".to_string(),
        Some("filesystem") => "filesystem".to_string(),
        Some("crypto") => "encrypted volume".to_string(),
        Some(u) => u.to_string(),
        None => String::new(),
    }
}

fn found_of(s: &blkid::Signature) -> Found {
    let mut detail = Vec::new();
    if let Some(l) = &s.label {
        detail.push(format!("label {l:?}"));
    }
    if let Some(u) = &s.uuid {
        detail.push(format!("uuid {u}"));
    }
    if s.bad_checksum {
        detail.push("bad checksum".to_string());
    }
    Found {
        name: s.kind.clone(),
        what: describe(&s.kind, s.usage.as_deref(), s.partition_table),
        offset: s.magic_offset,
        detail: (!detail.is_empty()).then(|| detail.join(", ")),
    }
}

/// mdext's own metadata in the first [`META_AREA`] bytes of a device, if
/// any (damaged metadata counts too). Pure.
pub fn probe_own(area: &[u8]) -> Option<Found> {
    let area = area.get(..META_AREA)?;
    match format::read_area(area) {
        Ok(r) => Some(Found {
            name: MDEXT_NAME.to_string(),
            what: String::new(),
            offset: Some(format::copy_offset(r.superblock.array.version, r.copy)),
            detail: Some(format!(
                "name {}, uuid {}",
                r.superblock.array.name, r.superblock.array.uuid
            )),
        }),
        Err(format::ReadError::NoMetadata) => None,
        Err(e) => Some(Found {
            name: format!("{MDEXT_NAME} (damaged)"),
            what: String::new(),
            offset: Some(0),
            detail: Some(e.to_string()),
        }),
    }
}

fn blkid_err(path: &Path) -> impl Fn((&'static str, io::Error)) -> ProbeError + '_ {
    move |(op, source)| ProbeError::Blkid {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Every signature libblkid finds on `dev` (one per prober that matches).
pub fn probe_foreign(dev: &Device) -> Result<Vec<Found>, ProbeError> {
    let file = dev.reopen_buffered(false)?;
    let err = blkid_err(dev.path());
    let mut p = blkid::Probe::new(&file).map_err(&err)?;
    let mut out: Vec<Found> = Vec::new();
    while let Some(s) = p.next().map_err(&err)? {
        let f = found_of(&s);
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

/// Every signature on `dev`: mdext's own metadata first, then everything
/// libblkid knows. Reads only.
pub fn probe(dev: &Device) -> Result<Vec<Found>, ProbeError> {
    let mut out = Vec::new();
    if dev.size().0 >= META_AREA as u64 {
        let area = dev.read_at(0, META_AREA)?;
        out.extend(probe_own(&area));
    }
    out.extend(probe_foreign(dev)?);
    Ok(out)
}

/// Erase every signature libblkid finds on `dev`, as `wipefs --all` does:
/// zeros over each magic at the offset libblkid reports, probing again
/// after each (so second copies, backup headers and end-of-device anchors
/// are found and erased too), until libblkid finds nothing it can erase.
/// Returns what was erased (one entry per magic). mdext's own metadata is
/// not touched (create overwrites it anyway). `dev` must be writable.
pub fn wipe(dev: &Device) -> Result<Vec<Found>, ProbeError> {
    let file = dev.reopen_buffered(true)?;
    let err = blkid_err(dev.path());
    let mut p = blkid::Probe::new(&file).map_err(&err)?;
    let mut wiped = Vec::new();
    while let Some(s) = p.next().map_err(&err)? {
        let f = found_of(&s);
        if wiped.len() >= MAX_WIPES {
            return Err(ProbeError::WipeLoop {
                path: dev.path().to_path_buf(),
                found: f,
            });
        }
        p.wipe().map_err(&err)?;
        // Without a magic offset blkid_do_wipe writes nothing and moves on.
        if f.offset.is_some() {
            wiped.push(f);
        }
    }
    Ok(wiped)
}

/// Foreign-signature fixtures shared with tests/cli_create.rs.
#[cfg(test)]
#[path = "../tests/common/signatures.rs"]
pub(crate) mod test_signatures;

#[cfg(test)]
mod tests;
