//! The few functions of libblkid's low-level probing API that mdext uses,
//! declared by hand (a bindgen-generated crate would need libclang at
//! build time for eleven functions).
//!
//! [`Probe`] wraps a `blkid_probe` set up the way `wipefs` sets it up:
//! every superblock prober (filesystems, RAID members, volume managers,
//! crypto) and every partition-table prober, reporting each signature's
//! magic and its offset. [`Probe::next`] steps through all of them (a
//! `blkid_do_probe` loop, which unlike `blkid_do_safeprobe` does not stop
//! at the first RAID member or give up on an ambivalent result) and
//! [`Probe::wipe`] erases the one last reported (`blkid_do_wipe`).

use std::ffi::{c_char, c_int, CStr};
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::ptr::{self, NonNull};

/// libblkid's `struct blkid_struct_probe`, only ever behind a pointer.
#[repr(C)]
struct RawProbe {
    _opaque: [u8; 0],
}

// Flags from <blkid/blkid.h> (util-linux 2.38; stable since 2.21).
const BLKID_SUBLKS_LABEL: c_int = 1 << 1;
const BLKID_SUBLKS_UUID: c_int = 1 << 3;
const BLKID_SUBLKS_TYPE: c_int = 1 << 5;
const BLKID_SUBLKS_USAGE: c_int = 1 << 7;
const BLKID_SUBLKS_MAGIC: c_int = 1 << 9;
const BLKID_SUBLKS_BADCSUM: c_int = 1 << 10;
const BLKID_PARTS_FORCE_GPT: c_int = 1 << 1;
const BLKID_PARTS_MAGIC: c_int = 1 << 3;

#[link(name = "blkid")]
extern "C" {
    fn blkid_new_probe() -> *mut RawProbe;
    fn blkid_free_probe(pr: *mut RawProbe);
    fn blkid_probe_set_device(pr: *mut RawProbe, fd: c_int, off: i64, size: i64) -> c_int;
    fn blkid_probe_enable_superblocks(pr: *mut RawProbe, enable: c_int) -> c_int;
    fn blkid_probe_set_superblocks_flags(pr: *mut RawProbe, flags: c_int) -> c_int;
    fn blkid_probe_enable_partitions(pr: *mut RawProbe, enable: c_int) -> c_int;
    fn blkid_probe_set_partitions_flags(pr: *mut RawProbe, flags: c_int) -> c_int;
    fn blkid_do_probe(pr: *mut RawProbe) -> c_int;
    fn blkid_probe_lookup_value(
        pr: *mut RawProbe,
        name: *const c_char,
        data: *mut *const c_char,
        len: *mut usize,
    ) -> c_int;
    fn blkid_do_wipe(pr: *mut RawProbe, dryrun: c_int) -> c_int;
}

/// One signature as libblkid reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// `TYPE` (superblocks) or `PTTYPE` (partition tables), e.g.
    /// `isw_raid_member`, `ext4`, `gpt`.
    pub kind: String,
    /// `USAGE` (`raid`, `filesystem`, `crypto`, `other`), or `None` for a
    /// partition table.
    pub usage: Option<String>,
    /// Whether this is a partition table.
    pub partition_table: bool,
    /// `LABEL`, if any.
    pub label: Option<String>,
    /// `UUID` (or `PTUUID`), if any.
    pub uuid: Option<String>,
    /// Byte offset of the magic (`SBMAGIC_OFFSET` / `PTMAGIC_OFFSET`).
    pub magic_offset: Option<u64>,
    /// `SBBADCSUM`: found although its checksum is wrong.
    pub bad_checksum: bool,
}

/// A libblkid probe over an open file; it borrows the file, whose
/// descriptor libblkid reads (and, for [`Probe::wipe`], writes).
pub struct Probe<'f> {
    pr: NonNull<RawProbe>,
    _file: PhantomData<&'f File>,
}

fn check(rc: c_int, op: &'static str) -> Result<(), (&'static str, io::Error)> {
    if rc == 0 {
        Ok(())
    } else {
        Err((op, io::Error::last_os_error()))
    }
}

impl<'f> Probe<'f> {
    /// A probe over all of `file` (a block device or a regular file,
    /// opened without O_DIRECT: libblkid reads unaligned ranges).
    /// On error: the libblkid call that failed and errno.
    pub fn new(file: &'f File) -> Result<Probe<'f>, (&'static str, io::Error)> {
        // SAFETY: blkid_new_probe takes nothing and returns a new probe
        // owned by the caller, or NULL.
        let raw = unsafe { blkid_new_probe() };
        let pr = NonNull::new(raw).ok_or(("blkid_new_probe", io::Error::last_os_error()))?;
        // From here on Drop frees the probe, whatever fails below.
        let probe = Probe {
            pr,
            _file: PhantomData,
        };
        let p = probe.pr.as_ptr();
        // SAFETY: `p` is a live probe. The descriptor belongs to `file`,
        // which the probe's lifetime 'f keeps open for as long as the probe
        // exists; libblkid does not close a descriptor it was given.
        // Offset 0 and size 0 mean the whole device or file.
        let rc = unsafe { blkid_probe_set_device(p, file.as_raw_fd(), 0, 0) };
        check(rc, "blkid_probe_set_device")?;
        // SAFETY: `p` is a live probe; this only sets a flag on it.
        let rc = unsafe { blkid_probe_enable_superblocks(p, 1) };
        check(rc, "blkid_probe_enable_superblocks")?;
        let flags = BLKID_SUBLKS_TYPE
            | BLKID_SUBLKS_USAGE
            | BLKID_SUBLKS_LABEL
            | BLKID_SUBLKS_UUID
            | BLKID_SUBLKS_MAGIC
            | BLKID_SUBLKS_BADCSUM;
        // SAFETY: as above.
        let rc = unsafe { blkid_probe_set_superblocks_flags(p, flags) };
        check(rc, "blkid_probe_set_superblocks_flags")?;
        // SAFETY: as above.
        let rc = unsafe { blkid_probe_enable_partitions(p, 1) };
        check(rc, "blkid_probe_enable_partitions")?;
        // SAFETY: as above.
        let rc = unsafe {
            blkid_probe_set_partitions_flags(p, BLKID_PARTS_MAGIC | BLKID_PARTS_FORCE_GPT)
        };
        check(rc, "blkid_probe_set_partitions_flags")?;
        Ok(probe)
    }

    /// The next signature, or `None` when every prober has run.
    pub fn next(&mut self) -> Result<Option<Signature>, (&'static str, io::Error)> {
        // SAFETY: `self.pr` is a live probe whose device is still open
        // (see `new`); `&mut self` keeps other calls out meanwhile.
        let rc = unsafe { blkid_do_probe(self.pr.as_ptr()) };
        match rc {
            0 => Ok(Some(self.current())),
            1 => Ok(None),
            _ => Err(("blkid_do_probe", io::Error::last_os_error())),
        }
    }

    /// Erase the magic of the signature [`Probe::next`] returned last and
    /// step back, so that the next [`Probe::next`] runs the same prober
    /// again (a format with more than one copy, such as the GPT backup
    /// header, a LUKS2 secondary header or further ZFS uberblocks, is then
    /// found again at its next place). Needs a descriptor open for
    /// writing. A signature without a known magic is left as it is.
    pub fn wipe(&mut self) -> Result<(), (&'static str, io::Error)> {
        // SAFETY: as in `next`; dryrun 0 writes zeros over the magic
        // through the probe's descriptor and fsyncs it.
        let rc = unsafe { blkid_do_wipe(self.pr.as_ptr(), 0) };
        check(rc, "blkid_do_wipe")
    }

    fn value(&self, name: &CStr) -> Option<Vec<u8>> {
        let mut data: *const c_char = ptr::null();
        let mut len: usize = 0;
        // SAFETY: `self.pr` is a live probe, `name` is NUL-terminated, and
        // `data` and `len` are valid places for the results.
        let rc = unsafe {
            blkid_probe_lookup_value(self.pr.as_ptr(), name.as_ptr(), &mut data, &mut len)
        };
        if rc != 0 || data.is_null() {
            return None;
        }
        // SAFETY: on success libblkid points `data` at `len` bytes held by
        // the probe, valid until the next probing call on it; they are
        // copied out here, before any such call.
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
        Some(bytes.to_vec())
    }

    fn string(&self, name: &CStr) -> Option<String> {
        let v = self.value(name)?;
        // String values are NUL-terminated and `len` counts the NUL.
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        let s = String::from_utf8_lossy(&v[..end]).into_owned();
        (!s.is_empty()).then_some(s)
    }

    fn current(&self) -> Signature {
        let offset = |name: &CStr| self.string(name).and_then(|s| s.parse::<u64>().ok());
        if let Some(kind) = self.string(c"TYPE") {
            Signature {
                kind,
                usage: self.string(c"USAGE"),
                partition_table: false,
                label: self.string(c"LABEL"),
                uuid: self.string(c"UUID"),
                magic_offset: offset(c"SBMAGIC_OFFSET"),
                bad_checksum: self.string(c"SBBADCSUM").is_some(),
            }
        } else {
            Signature {
                kind: self
                    .string(c"PTTYPE")
                    .unwrap_or_else(|| "unknown".to_string()),
                usage: None,
                partition_table: true,
                label: None,
                uuid: self.string(c"PTUUID"),
                magic_offset: offset(c"PTMAGIC_OFFSET"),
                bad_checksum: false,
            }
        }
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        // SAFETY: `self.pr` came from blkid_new_probe and is freed only
        // here, once; it does not close the borrowed descriptor.
        unsafe { blkid_free_probe(self.pr.as_ptr()) }
    }
}
