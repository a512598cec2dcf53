//! Thin I/O on a member device: open (exclusively for writers), size,
//! aligned whole-block reads and writes, fdatasync, and the metadata and
//! bitmap areas on top of [`crate::format`].
//!
//! Members are block devices, or regular files (tests and image files).
//! I/O uses O_DIRECT when the file accepts it, so what is read is what is
//! on the device and not a stale page-cache copy, and writes reach the
//! device before `fdatasync` returns. tmpfs refuses O_DIRECT (EINVAL at
//! open); regular files there are opened without it (fdatasync still makes
//! the writes as durable as tmpfs allows).

use crate::format::{self, EncodedCopy, FormatError, ReadError, ReadOutcome, COPY_SIZE, META_AREA};
use crate::meta::{BitmapInfo, Superblock};
use crate::units::Bytes;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use thiserror::Error;

/// Alignment (and length granularity) of all I/O here.
pub const ALIGN: usize = 4096;

/// Errors of device I/O; every one names the device.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The path does not exist.
    #[error("{0}: no such device or file")]
    NotFound(PathBuf),
    /// Neither a block device nor a regular file.
    #[error("{path}: not a block device or regular file ({kind})")]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Exclusive open refused: the device is in use.
    #[error("{0}: device is busy (mounted, part of an md array, or opened exclusively by another program)")]
    Busy(PathBuf),
    /// open(2) failed otherwise.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A read, write, sync or ioctl failed.
    #[error("{path}: {op} at byte {offset} failed: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Where.
        offset: u64,
        /// The cause.
        source: io::Error,
    },
    /// I/O that does not fit the device.
    #[error("{path}: {len} bytes at byte {offset} do not fit in the device ({size} bytes)")]
    OutOfRange {
        /// The path.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// How much.
        len: u64,
        /// The device size.
        size: u64,
    },
    /// Unaligned I/O requested.
    #[error("{path}: I/O at byte {offset} of {len} bytes is not aligned to {ALIGN}")]
    Unaligned {
        /// The path.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// How much.
        len: u64,
    },
    /// The metadata could not be read.
    #[error("{path}: {source}")]
    Metadata {
        /// The path.
        path: PathBuf,
        /// Why.
        source: ReadError,
    },
    /// The superblock to write is invalid.
    #[error("{path}: refusing to write invalid metadata: {source}")]
    Encode {
        /// The path.
        path: PathBuf,
        /// Why.
        source: FormatError,
    },
    /// Allocation of an aligned buffer failed.
    #[error("cannot allocate a {0}-byte I/O buffer")]
    Alloc(usize),
}

// ---------------------------------------------------------------------------

/// A zero-initialised heap buffer aligned to [`ALIGN`] whose length is a
/// multiple of [`ALIGN`], as O_DIRECT needs.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like a Box<[u8]>);
// nothing in it is tied to a thread.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give `&[u8]` access.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes rounded up to a multiple of
    /// [`ALIGN`] (at least one block).
    pub fn zeroed(len: usize) -> Result<AlignedBuf, DeviceError> {
        let len = len
            .max(1)
            .checked_next_multiple_of(ALIGN)
            .ok_or(DeviceError::Alloc(len))?;
        let layout = Layout::from_size_align(len, ALIGN).map_err(|_| DeviceError::Alloc(len))?;
        // SAFETY: `layout` has a nonzero size (len >= ALIGN).
        let p = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).ok_or(DeviceError::Alloc(len))?;
        Ok(AlignedBuf { ptr, len })
    }

    /// A buffer holding a copy of `data` (zero padded to a whole block).
    pub fn from_slice(data: &[u8]) -> Result<AlignedBuf, DeviceError> {
        let mut b = AlignedBuf::zeroed(data.len())?;
        b[..data.len()].copy_from_slice(data);
        Ok(b)
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to `len` initialised (zeroed at allocation)
        // bytes owned by self, valid for self's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this size and alignment
        // (that layout was valid then, so it is now).
        unsafe {
            alloc::dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.len, ALIGN),
            )
        }
    }
}

// ---------------------------------------------------------------------------

/// What kind of file a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DevId {
    /// A block device: its device number.
    Block(u64),
    /// A regular file: (st_dev, st_ino).
    File(u64, u64),
}

/// How to open a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only, shared (examine, assembly's scan).
    Read,
    /// Read-write and exclusive: O_EXCL on a block device (the kernel then
    /// refuses it while mounted or held by md), an exclusive flock on a
    /// regular file.
    ExclusiveWrite,
    /// Read-write, shared (the daemon updating metadata of a member the
    /// running md array already holds).
    SharedWrite,
}

nix::ioctl_read!(
    /// `BLKGETSIZE64`: the size in bytes of the block device open at `fd`,
    /// written to `data`.
    ///
    /// # Safety
    ///
    /// `data` must point to a writable `u64`.
    blkgetsize64,
    0x12,
    114,
    u64
);

/// An open member device.
#[derive(Debug)]
pub struct Device {
    file: File,
    path: PathBuf,
    id: DevId,
    size: Bytes,
    direct: bool,
    /// The exclusive flock on a regular file (released on drop).
    _lock: Option<nix::fcntl::Flock<File>>,
}

impl AsRawFd for Device {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

fn kind_name(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "unknown type"
    }
}

impl Device {
    /// Open `path` (see [`Access`]).
    pub fn open(path: &Path, access: Access) -> Result<Device, DeviceError> {
        let pb = path.to_path_buf();
        let md = std::fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DeviceError::NotFound(pb.clone()),
            _ => DeviceError::Open {
                path: pb.clone(),
                source: e,
            },
        })?;
        let ft = md.file_type();
        let block = ft.is_block_device();
        if !block && !ft.is_file() {
            return Err(DeviceError::WrongKind {
                path: pb,
                kind: kind_name(&ft),
            });
        }
        let write = access != Access::Read;
        let mut extra = OFlag::O_CLOEXEC;
        if block && access == Access::ExclusiveWrite {
            extra |= OFlag::O_EXCL;
        }
        let try_open = |flags: OFlag| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(flags.bits())
                .open(path)
        };
        let (file, direct) = match try_open(extra | OFlag::O_DIRECT) {
            Ok(f) => (f, true),
            // tmpfs (and some other filesystems) refuse O_DIRECT for
            // regular files with EINVAL: use buffered I/O there.
            Err(e) if !block && e.raw_os_error() == Some(Errno::EINVAL as i32) => {
                let f = try_open(extra).map_err(|e| DeviceError::Open {
                    path: pb.clone(),
                    source: e,
                })?;
                (f, false)
            }
            Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => {
                return Err(DeviceError::Busy(pb))
            }
            Err(e) => {
                return Err(DeviceError::Open {
                    path: pb,
                    source: e,
                })
            }
        };
        // Re-check what was actually opened (the path may have changed).
        let md = file.metadata().map_err(|e| DeviceError::Open {
            path: pb.clone(),
            source: e,
        })?;
        let mut lock = None;
        let (id, size) = if md.file_type().is_block_device() {
            let mut sz: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which
            // points to a live, properly aligned u64; the fd is open.
            unsafe { blkgetsize64(file.as_raw_fd(), &mut sz) }.map_err(|e| DeviceError::Io {
                path: pb.clone(),
                op: "BLKGETSIZE64",
                offset: 0,
                source: e.into(),
            })?;
            (DevId::Block(md.rdev()), Bytes(sz))
        } else if md.file_type().is_file() {
            if access == Access::ExclusiveWrite {
                nix::fcntl::Flock::lock(
                    file.try_clone().map_err(|e| DeviceError::Open {
                        path: pb.clone(),
                        source: e,
                    })?,
                    nix::fcntl::FlockArg::LockExclusiveNonblock,
                )
                .map(|l| lock = Some(l))
                .map_err(|(_, e)| {
                    if e == Errno::EWOULDBLOCK {
                        DeviceError::Busy(pb.clone())
                    } else {
                        DeviceError::Open {
                            path: pb.clone(),
                            source: e.into(),
                        }
                    }
                })?;
            }
            (DevId::File(md.dev(), md.ino()), Bytes(md.len()))
        } else {
            return Err(DeviceError::WrongKind {
                path: pb,
                kind: kind_name(&md.file_type()),
            });
        };
        Ok(Device {
            file,
            path: pb,
            id,
            size,
            direct,
            _lock: lock,
        })
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Its identity (for duplicate detection).
    pub fn id(&self) -> DevId {
        self.id
    }
    /// Its size.
    pub fn size(&self) -> Bytes {
        self.size
    }
    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }
    /// Whether it is a block device.
    pub fn is_block(&self) -> bool {
        matches!(self.id, DevId::Block(_))
    }

    /// A second descriptor of the same open file, without O_DIRECT (for
    /// libblkid, which reads unaligned ranges). Opened through
    /// `/proc/self/fd`, so it is the same device or inode even if the path
    /// now names something else; no O_EXCL, so it does not conflict with
    /// this device's own exclusive open.
    pub fn reopen_buffered(&self, write: bool) -> Result<File, DeviceError> {
        let proc = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(OFlag::O_CLOEXEC.bits())
            .open(&proc)
            .map_err(|e| DeviceError::Open {
                path: self.path.clone(),
                source: e,
            })
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        if offset % ALIGN as u64 != 0 || len % ALIGN as u64 != 0 {
            return Err(DeviceError::Unaligned {
                path: self.path.clone(),
                offset,
                len,
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size.0 => Ok(()),
            _ => Err(DeviceError::OutOfRange {
                path: self.path.clone(),
                offset,
                len,
                size: self.size.0,
            }),
        }
    }

    /// The error of an I/O on this device (`op` at byte `offset`); also
    /// for I/O submitted elsewhere (the writers' ring).
    pub fn io_err(&self, op: &'static str, offset: u64, source: io::Error) -> DeviceError {
        DeviceError::Io {
            path: self.path.clone(),
            op,
            offset,
            source,
        }
    }

    /// Read `len` bytes (a multiple of 4096) at `offset` (aligned).
    pub fn read_at(&self, offset: u64, len: usize) -> Result<AlignedBuf, DeviceError> {
        self.check(offset, len as u64)?;
        let mut buf = AlignedBuf::zeroed(len)?;
        self.file
            .read_exact_at(&mut buf[..len], offset)
            .map_err(|e| self.io_err("read", offset, e))?;
        Ok(buf)
    }

    /// Read up to `len` bytes at `offset`, stopping at the end of the
    /// device (the rest of the buffer stays zero). For probing.
    pub fn read_partial(&self, offset: u64, len: usize) -> Result<AlignedBuf, DeviceError> {
        let mut buf = AlignedBuf::zeroed(len)?;
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut buf[done..len], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // O_DIRECT reads that cross the end of a device whose size
                // is not a multiple of the block size fail with EINVAL.
                Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) && done > 0 => break,
                Err(e) => return Err(self.io_err("read", offset + done as u64, e)),
            }
            if done % ALIGN != 0 {
                break;
            }
        }
        Ok(buf)
    }

    /// Write `data` (a multiple of 4096 bytes) at `offset` (aligned). Not
    /// durable until [`Device::sync`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.check(offset, data.len() as u64)?;
        let buf = AlignedBuf::from_slice(data)?;
        self.file
            .write_all_at(&buf[..data.len()], offset)
            .map_err(|e| self.io_err("write", offset, e))
    }

    /// Write `data` (a multiple of 4096 bytes) at `offset` (aligned),
    /// durable when this returns: one `pwritev2(RWF_DSYNC)` (on a block
    /// device opened O_DIRECT a FUA write, followed by a flush where the
    /// device has no FUA), as the writer ring submits it. One system call
    /// and one wait instead of a write and an `fdatasync`. Where the
    /// kernel refuses the flag (before 4.7), a write and an `fdatasync`.
    pub fn write_durable(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.check(offset, data.len() as u64)?;
        let buf = AlignedBuf::from_slice(data)?;
        let iov = nix::libc::iovec {
            iov_base: buf.as_ptr() as *mut nix::libc::c_void,
            iov_len: data.len(),
        };
        let off = nix::libc::off_t::try_from(offset).map_err(|_| {
            self.io_err(
                "write",
                offset,
                io::Error::from_raw_os_error(Errno::EOVERFLOW as i32),
            )
        })?;
        loop {
            // SAFETY: `iov` points at the first `data.len()` bytes of
            // `buf`, which lives until this call returns and is not
            // borrowed mutably meanwhile; the kernel only reads them. The
            // descriptor is our open file's.
            let n = unsafe {
                nix::libc::pwritev2(self.file.as_raw_fd(), &iov, 1, off, nix::libc::RWF_DSYNC)
            };
            if n >= 0 {
                // One aligned block write: short only if the device
                // ended (as the ring treats it).
                return match usize::try_from(n) {
                    Ok(n) if n == data.len() => Ok(()),
                    _ => Err(self.io_err(
                        "write",
                        offset,
                        io::Error::new(
                            io::ErrorKind::WriteZero,
                            format!("short write ({n} bytes)"),
                        ),
                    )),
                };
            }
            let e = io::Error::last_os_error();
            match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
                Errno::EINTR => continue,
                Errno::EOPNOTSUPP | Errno::ENOSYS => {
                    self.write_at(offset, data)?;
                    return self.sync();
                }
                _ => return Err(self.io_err("write", offset, e)),
            }
        }
    }

    /// Write zeros over `len` bytes at `offset` (both aligned).
    pub fn zero(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.check(offset, len)?;
        const STEP: usize = 1 << 20;
        let buf = AlignedBuf::zeroed(STEP)?;
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done).map_or(STEP, |r| r.min(STEP));
            self.file
                .write_all_at(&buf[..n], offset + done)
                .map_err(|e| self.io_err("write", offset + done, e))?;
            done += n as u64;
        }
        Ok(())
    }

    /// fdatasync.
    pub fn sync(&self) -> Result<(), DeviceError> {
        self.file
            .sync_data()
            .map_err(|e| self.io_err("fdatasync", 0, e))
    }

    /// Read both metadata copies and pick the newest valid one.
    pub fn read_superblock(&self) -> Result<ReadOutcome, DeviceError> {
        if self.size.0 < META_AREA as u64 {
            return Err(DeviceError::Metadata {
                path: self.path.clone(),
                source: ReadError::NoMetadata,
            });
        }
        let area = self.read_at(0, META_AREA)?;
        let c1_v2 = if self.size.0 >= format::COPY1_V2_OFFSET + COPY_SIZE as u64 {
            Some(self.read_at(format::COPY1_V2_OFFSET, COPY_SIZE)?)
        } else {
            None
        };
        format::read_copies(&area[..COPY_SIZE], &area[COPY_SIZE..], c1_v2.as_deref()).map_err(
            |source| DeviceError::Metadata {
                path: self.path.clone(),
                source,
            },
        )
    }

    /// Write `sb` durably into copy `events % 2` and return that index.
    ///
    /// The caller picks `events` with [`crate::format::next_events`]: one
    /// more than the newest valid copy, or two more after a failed write
    /// (the same copy again, never the one holding the last good state).
    pub fn write_superblock(&self, sb: &Superblock) -> Result<usize, DeviceError> {
        let e = self.prepare_superblock(sb)?;
        self.write_durable(e.offset, &e.bytes)?;
        crate::failpoint::point("sb-write-after");
        Ok(e.index)
    }

    /// Encode `sb` for this device's record write, passing the failpoints
    /// that come before the write (`sb-write-before`, and `sb-write-torn`,
    /// which tears the copy here and ends the process). The caller writes
    /// the copy durably, then passes `sb-write-after`.
    pub fn prepare_superblock(&self, sb: &Superblock) -> Result<EncodedCopy, DeviceError> {
        let e = format::encode(sb).map_err(|source| DeviceError::Encode {
            path: self.path.clone(),
            source,
        })?;
        self.check(e.offset, e.bytes.len() as u64)?;
        crate::failpoint::point("sb-write-before");
        if let Some(a) = crate::failpoint::hit("sb-write-torn") {
            // A torn write: the first half of the copy reaches the disk
            // (written as one aligned block over the old second half).
            let mut torn = self.read_at(e.offset, COPY_SIZE)?[..COPY_SIZE].to_vec();
            torn[..COPY_SIZE / 2].copy_from_slice(&e.bytes[..COPY_SIZE / 2]);
            self.write_at(e.offset, &torn)?;
            self.sync()?;
            crate::failpoint::perform("sb-write-torn", a);
        }
        debug_assert_eq!(e.bytes.len(), COPY_SIZE);
        Ok(e)
    }

    /// Read the bitmap area described by `info` (all `info.size` bytes).
    pub fn read_bitmap(&self, info: &BitmapInfo) -> Result<Vec<u8>, DeviceError> {
        let len = usize::try_from(info.size.0).map_err(|_| DeviceError::Alloc(usize::MAX))?;
        let buf = self.read_at(info.offset.bytes().0, len)?;
        Ok(buf[..len].to_vec())
    }

    /// The bits of md's own bitmap region (bitmap mode `kernel`): from
    /// byte 256 of sector 8 to the end of the region for `meta`'s chunks.
    pub fn read_kernel_bits(&self, meta: &crate::meta::ArrayMeta) -> Result<Vec<u8>, DeviceError> {
        let len = crate::format::kernel_region_size(meta.bitmap_chunks()).0;
        let len = usize::try_from(len).map_err(|_| DeviceError::Alloc(usize::MAX))?;
        let buf = self.read_at(crate::format::KERNEL_BITMAP_SECTOR.bytes().0, len)?;
        Ok(buf[crate::kmode::SB_SIZE.min(len)..len].to_vec())
    }

    /// The bits of the region the array's recorded bitmap mode runs from
    /// (md's region at sector 8 in mode `kernel`, the external region
    /// otherwise).
    pub fn read_mode_bits(&self, meta: &crate::meta::ArrayMeta) -> Result<Vec<u8>, DeviceError> {
        match meta.bitmap.mode {
            crate::meta::BitmapMode::Kernel => self.read_kernel_bits(meta),
            _ => self.read_bitmap(&meta.bitmap),
        }
    }

    /// Write the whole bitmap area (`bits.len()` must equal `info.size`),
    /// then fdatasync.
    pub fn write_bitmap(&self, info: &BitmapInfo, bits: &[u8]) -> Result<(), DeviceError> {
        if bits.len() as u64 != info.size.0 {
            return Err(DeviceError::OutOfRange {
                path: self.path.clone(),
                offset: info.offset.bytes().0,
                len: bits.len() as u64,
                size: info.size.0,
            });
        }
        self.write_at(info.offset.bytes().0, bits)?;
        self.sync()
    }
}

/// Open `path` read-only and read its metadata.
pub fn read_superblock(path: &Path) -> Result<ReadOutcome, DeviceError> {
    Device::open(path, Access::Read)?.read_superblock()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf() {
        let mut b = AlignedBuf::zeroed(10).expect("alloc");
        assert_eq!(b.len(), 4096);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[5] = 7;
        let c = AlignedBuf::from_slice(&b[..6]).expect("alloc");
        assert_eq!(&c[..6], &[0, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn file_io_and_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("img");
        std::fs::write(&p, vec![0u8; 1 << 20]).expect("write");
        let d = Device::open(&p, Access::ExclusiveWrite).expect("open");
        assert_eq!(d.size(), Bytes(1 << 20));
        assert!(!d.is_block());
        // A second exclusive open of the same file is refused.
        match Device::open(&p, Access::ExclusiveWrite) {
            Err(DeviceError::Busy(_)) => {}
            other => panic!("{other:?}"),
        }
        // Readers are not.
        Device::open(&p, Access::Read).expect("shared read");
        d.write_at(8192, &[0xab; 4096]).expect("write");
        d.sync().expect("sync");
        let r = d.read_at(8192, 4096).expect("read");
        assert!(r.iter().all(|&x| x == 0xab));
        assert_eq!(std::fs::read(&p).expect("read")[8192], 0xab);
        assert!(matches!(
            d.write_at(1 << 20, &[0; 4096]),
            Err(DeviceError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.read_at(100, 4096),
            Err(DeviceError::Unaligned { .. })
        ));
        let e = d.read_superblock().expect_err("blank");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: no mdext metadata (no magic in either copy)",
                p.display()
            )
        );
        assert!(matches!(
            Device::open(dir.path(), Access::Read),
            Err(DeviceError::WrongKind {
                kind: "directory",
                ..
            })
        ));
        assert!(matches!(
            Device::open(&dir.path().join("nope"), Access::Read),
            Err(DeviceError::NotFound(_))
        ));
        // read_partial past the end zero-fills.
        let r = d.read_partial((1 << 20) - 4096, 8192).expect("partial");
        assert_eq!(r.len(), 8192);
        assert!(r[4096..].iter().all(|&x| x == 0));
    }
}
