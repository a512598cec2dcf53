//! Typed access to md's sysfs interface.
//!
//! Everything mdext does to the kernel goes through the files under
//! `/sys/block/mdX/md/` and `/sys/module/md_mod/parameters/new_array`. The root
//! of the tree is a parameter ([`Sysfs::new`]) so unit tests can run against a
//! fake tree of regular files.
//!
//! Writes are single `write(2)` calls, as sysfs requires. The kernel's errno is
//! kept and the error names the attribute and the value written, so a refusal
//! reads like "md127/bitmap/location: writing '+16' refused: invalid argument
//! (EINVAL)".
//!
//! Held attributes: [`HeldAttr`] keeps an attribute open (read at offset 0,
//! written in one `pwrite`); [`poll_watches`] waits with `POLLPRI | POLLERR`
//! and the caller re-reads from offset 0 after a wake. [`HeldMd`] holds every
//! attribute a manager of a running array touches, so that losing the path
//! view of `/sys` (switch-root) blinds nothing; only `ENODEV` on a held
//! attribute says the array is gone.

use crate::md::{
    ArrayState, Checkpoint, Level, MemberCommand, MemberFlags, SyncAction, SyncCompleted,
};
use crate::units::{Bytes, KiB, Sectors};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Errors from sysfs access. Each names the attribute (relative to the sysfs
/// root) and, for writes, the value that was written.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// The kernel refused a write.
    #[error("{attr}: writing '{value}' refused: {}", describe_errno(*.errno))]
    Write {
        /// The attribute, e.g. `block/md127/md/bitmap/location`.
        attr: String,
        /// What was written.
        value: String,
        /// The kernel's errno.
        errno: Errno,
    },
    /// An attribute could not be read.
    #[error("{attr}: cannot read: {}", describe_errno(*.errno))]
    Read {
        /// The attribute.
        attr: String,
        /// The errno.
        errno: Errno,
    },
    /// An attribute held something this code does not understand.
    #[error("{attr}: unexpected value '{value}'")]
    Parse {
        /// The attribute.
        attr: String,
        /// What it held.
        value: String,
    },
    /// A value to be written failed validation before reaching the kernel.
    #[error("{attr}: refusing to write '{value}': {why}")]
    Invalid {
        /// The attribute.
        attr: String,
        /// The value.
        value: String,
        /// Why.
        why: String,
    },
    /// Poll failed.
    #[error("waiting for md notifications: {0}")]
    Poll(Errno),
}

impl SysfsError {
    /// The kernel errno behind the error, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            SysfsError::Write { errno, .. } | SysfsError::Read { errno, .. } => Some(*errno),
            SysfsError::Poll(e) => Some(*e),
            _ => None,
        }
    }
}

fn describe_errno(e: Errno) -> String {
    let what = match e {
        Errno::EBUSY => "device or resource busy",
        Errno::EINVAL => "invalid argument",
        Errno::ENOENT => "no such file or attribute",
        Errno::EIO => "I/O error",
        Errno::EROFS => "read-only while the array runs",
        Errno::EEXIST => "already exists",
        Errno::EACCES | Errno::EPERM => "permission denied",
        Errno::ENODEV | Errno::ENXIO => "no such device",
        _ => e.desc(),
    };
    format!("{what} ({e:?})")
}

/// A long space-separated list shortened to its first and last tokens.
fn abbreviate_list(s: &str) -> String {
    let mut t = s.split(' ');
    match (t.next(), t.next_back()) {
        (Some(a), Some(b)) => format!("{a} ... {b}"),
        _ => s.to_string(),
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

/// A block device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DevNum {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DevNum {
    /// The device number of the block device node at `p`.
    pub fn of_block_device(p: &Path) -> std::io::Result<DevNum> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = std::fs::metadata(p)?;
        if !m.file_type().is_block_device() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a block device",
            ));
        }
        Ok(DevNum::from_raw(m.rdev()))
    }

    /// From a raw `st_rdev`.
    pub fn from_raw(rdev: u64) -> Self {
        DevNum {
            major: nix::libc::major(rdev),
            minor: nix::libc::minor(rdev),
        }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DevNum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("'{s}' is not MAJOR:MINOR"))?;
        Ok(DevNum {
            major: a.parse().map_err(|_| format!("'{s}' is not MAJOR:MINOR"))?,
            minor: b.parse().map_err(|_| format!("'{s}' is not MAJOR:MINOR"))?,
        })
    }
}

/// The sysfs tree (normally `/sys`).
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::new("/sys")
    }
}

impl Sysfs {
    /// A sysfs tree rooted at `root` (`/sys` on a real system).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    }

    /// Read an attribute, trimmed of the trailing newline.
    pub fn read_path(&self, p: &Path) -> Result<String, SysfsError> {
        let mut s = String::new();
        File::open(p)
            .and_then(|mut f| f.read_to_string(&mut s))
            .map_err(|e| SysfsError::Read {
                attr: self.rel(p),
                errno: io_errno(&e),
            })?;
        Ok(s.trim_end_matches('\n').to_string())
    }

    /// Write an attribute in one `write(2)`.
    pub fn write_path(&self, p: &Path, value: &str) -> Result<(), SysfsError> {
        let err = |errno| SysfsError::Write {
            attr: self.rel(p),
            value: value.to_string(),
            errno,
        };
        // O_TRUNC, as a shell redirect does: harmless on sysfs, and it keeps a
        // fake tree of regular files holding exactly the last value written.
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(p)
            .map_err(|e| err(io_errno(&e)))?;
        let n = f.write(value.as_bytes()).map_err(|e| err(io_errno(&e)))?;
        if n != value.len() {
            return Err(err(Errno::EIO));
        }
        Ok(())
    }

    /// `/sys/module/md_mod/parameters/new_array`: create an (empty, inactive)
    /// md device named `name` (`md127`, or `md_NAME`).
    pub fn new_array(&self, name: &str) -> Result<MdDev, SysfsError> {
        if !valid_md_name(name) {
            return Err(SysfsError::Invalid {
                attr: "module/md_mod/parameters/new_array".into(),
                value: name.into(),
                why: "an md device name is 'md' followed by digits, or 'md_' and a name".into(),
            });
        }
        self.prefer_sync_del_gendisk();
        let p = self.root.join("module/md_mod/parameters/new_array");
        self.write_path(&p, name)?;
        Ok(self.md(name))
    }

    /// md from 6.18 on (upstream 25db5f284fb8, "md: add
    /// legacy_async_del_gendisk mode") offers the module parameter
    /// `legacy_async_del_gendisk`: `Y`, the default for now, removes a
    /// stopped array's block device only when its last reference goes, and
    /// the kernel warns at every new md device that this mode will be
    /// removed; `N` removes it as part of the stop. mdadm 4.5 and later
    /// write `N` before creating an array; so does mdext, which never
    /// touches a stopped array's attributes. Best effort: on a kernel
    /// without the parameter, or where it cannot be written, nothing
    /// changes. Returns whether the parameter now reads `N`.
    pub fn prefer_sync_del_gendisk(&self) -> bool {
        let p = self
            .root
            .join("module/md_mod/parameters/legacy_async_del_gendisk");
        match std::fs::read_to_string(&p) {
            Ok(v) if v.trim() == "N" => true,
            Ok(_) => self.write_path(&p, "N").is_ok(),
            Err(_) => false,
        }
    }

    /// A handle on an existing md device (no I/O).
    pub fn md(&self, name: &str) -> MdDev {
        MdDev {
            sysfs: self.clone(),
            name: name.to_string(),
            dir: self.root.join("block").join(name).join("md"),
        }
    }

    /// Whether `/sys/block/<name>` exists.
    pub fn md_exists(&self, name: &str) -> bool {
        self.root.join("block").join(name).join("md").is_dir()
    }

    /// Names of every md device (`/sys/block/md*` with an `md` directory).
    pub fn list_md(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("block"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("md") && self.md_exists(n))
            .collect();
        v.sort();
        v
    }

    /// A free md device name, counting down from md127 as mdadm does.
    pub fn free_md_name(&self) -> Option<String> {
        (0..=127u32)
            .rev()
            .map(|n| format!("md{n}"))
            .find(|n| !self.root.join("block").join(n).exists())
    }

    /// The kernel name of a block device (`loop0`, `vda`) from its number,
    /// through `/sys/dev/block/MAJ:MIN`.
    pub fn block_name(&self, dev: DevNum) -> Result<String, SysfsError> {
        let p = self.root.join("dev/block").join(dev.to_string());
        let target = std::fs::read_link(&p).map_err(|e| SysfsError::Read {
            attr: self.rel(&p),
            errno: io_errno(&e),
        })?;
        target
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| SysfsError::Parse {
                attr: self.rel(&p),
                value: target.to_string_lossy().into_owned(),
            })
    }

    /// `/sys/block/<dev>/stat` of any block device.
    pub fn block_stat(&self, kname: &str) -> Result<BlockStat, SysfsError> {
        let p = self.root.join("block").join(kname).join("stat");
        let p = if p.exists() {
            p
        } else {
            // A partition lives under its disk; /sys/class/block has both.
            self.root.join("class/block").join(kname).join("stat")
        };
        let s = self.read_path(&p)?;
        let f: Vec<u64> = s
            .split_whitespace()
            .map(|x| x.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| SysfsError::Parse {
                attr: self.rel(&p),
                value: s.clone(),
            })?;
        if f.len() < 7 {
            return Err(SysfsError::Parse {
                attr: self.rel(&p),
                value: s,
            });
        }
        Ok(BlockStat {
            read_sectors: Sectors(f[2]),
            write_sectors: Sectors(f[6]),
        })
    }
}

/// Sector counters of a block device (`/sys/block/X/stat` fields 3 and 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStat {
    /// Sectors read since boot.
    pub read_sectors: Sectors,
    /// Sectors written since boot.
    pub write_sectors: Sectors,
}

/// Whether `name` is a kernel md device name: `md` and digits (`md127`)
/// or `md_` and a name (`md_home`); never a path.
pub fn valid_md_name(name: &str) -> bool {
    if let Some(rest) = name.strip_prefix("md_") {
        !rest.is_empty()
            && rest.len() <= 28
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    } else if let Some(rest) = name.strip_prefix("md") {
        !rest.is_empty() && rest.len() <= 9 && rest.bytes().all(|b| b.is_ascii_digit())
    } else {
        false
    }
}

/// A handle on one md device's `md/` directory.
#[derive(Clone, Debug)]
pub struct MdDev {
    sysfs: Sysfs,
    name: String,
    dir: PathBuf,
}

/// A member of an md device (`md/dev-<kname>/`).
#[derive(Clone, Debug)]
pub struct Member<'a> {
    md: &'a MdDev,
    kname: String,
}

/// md's `mdu_array_info_t` (include/uapi/linux/raid/md_u.h).
#[repr(C)]
#[derive(Default)]
struct MduArrayInfo {
    major_version: i32,
    minor_version: i32,
    patch_version: i32,
    ctime: u32,
    level: i32,
    size: i32,
    nr_disks: i32,
    raid_disks: i32,
    md_minor: i32,
    not_persistent: i32,
    utime: u32,
    state: i32,
    active_disks: i32,
    working_disks: i32,
    failed_disks: i32,
    spare_disks: i32,
    layout: i32,
    chunk_size: i32,
}

nix::ioctl_write_ptr!(
    /// md's `SET_ARRAY_INFO` (`_IOW(MD_MAJOR, 0x23, mdu_array_info_t)`).
    ///
    /// # Safety
    ///
    /// `fd` must be an open md device and `data` a valid `MduArrayInfo`.
    set_array_info_ioctl,
    9,
    0x23,
    MduArrayInfo
);

fn libc_eio() -> i32 {
    Errno::EIO as i32
}

impl MdDev {
    /// The device name (`md127`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/dev/<name>`.
    pub fn dev_path(&self) -> PathBuf {
        PathBuf::from("/dev").join(&self.name)
    }

    /// The sysfs tree this device lives in.
    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    /// Full path of an attribute under `md/`.
    pub fn attr_path(&self, attr: &str) -> PathBuf {
        self.dir.join(attr)
    }

    /// Whether an attribute exists (e.g. `bitmap/metadata`, which 6.18+
    /// kernels no longer offer before start).
    pub fn has_attr(&self, attr: &str) -> bool {
        self.dir.join(attr).exists()
    }

    /// Read an attribute under `md/`.
    pub fn read(&self, attr: &str) -> Result<String, SysfsError> {
        self.sysfs.read_path(&self.dir.join(attr))
    }

    /// Write an attribute under `md/`.
    pub fn write(&self, attr: &str, value: &str) -> Result<(), SysfsError> {
        self.sysfs.write_path(&self.dir.join(attr), value)
    }

    fn parse<T: FromStr>(&self, attr: &str) -> Result<T, SysfsError> {
        let v = self.read(attr)?;
        parse_value(&self.sysfs.rel(&self.dir.join(attr)), v)
    }

    /// `metadata_version=external:<tag>`. Must come before any member is added:
    /// afterwards the kernel answers EBUSY.
    pub fn set_external_metadata(&self, tag: &str) -> Result<(), SysfsError> {
        if tag.is_empty() || tag.contains(char::is_whitespace) {
            return Err(SysfsError::Invalid {
                attr: "metadata_version".into(),
                value: format!("external:{tag}"),
                why: "the tag after 'external:' must be non-empty, without spaces".into(),
            });
        }
        self.write("metadata_version", &format!("external:{tag}"))
    }

    /// `metadata_version`.
    pub fn metadata_version(&self) -> Result<String, SysfsError> {
        self.read("metadata_version")
    }

    /// `level`.
    pub fn set_level(&self, l: Level) -> Result<(), SysfsError> {
        self.write("level", l.as_str())
    }

    /// `layout`.
    pub fn set_layout(&self, layout: u32) -> Result<(), SysfsError> {
        self.write("layout", &layout.to_string())
    }

    /// `raid_disks`.
    pub fn set_raid_disks(&self, n: u32) -> Result<(), SysfsError> {
        self.write("raid_disks", &n.to_string())
    }

    /// `raid_disks`.
    pub fn raid_disks(&self) -> Result<u32, SysfsError> {
        self.parse("raid_disks")
    }

    /// `chunk_size` (bytes).
    pub fn set_chunk_size(&self, b: Bytes) -> Result<(), SysfsError> {
        self.write("chunk_size", &b.0.to_string())
    }

    /// `component_size` (KiB per member).
    pub fn set_component_size(&self, k: KiB) -> Result<(), SysfsError> {
        self.write("component_size", &k.0.to_string())
    }

    /// `component_size` (KiB per member).
    pub fn component_size(&self) -> Result<KiB, SysfsError> {
        self.parse("component_size").map(KiB)
    }

    /// `new_dev`: add a block device; returns the member's handle name
    /// (`dev-<kname>`).
    pub fn add_member(&self, dev: DevNum) -> Result<String, SysfsError> {
        let kname = self.sysfs.block_name(dev)?;
        self.write("new_dev", &dev.to_string())?;
        Ok(kname)
    }

    /// A member handle by kernel name (`loop0`).
    pub fn member(&self, kname: &str) -> Member<'_> {
        Member {
            md: self,
            kname: kname.to_string(),
        }
    }

    /// Kernel names of the current members (`md/dev-*`).
    pub fn members(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix("dev-").map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// `array_state`.
    pub fn array_state(&self) -> Result<ArrayState, SysfsError> {
        self.parse("array_state")
    }

    /// `array_state`.
    pub fn set_array_state(&self, s: ArrayState) -> Result<(), SysfsError> {
        self.write("array_state", s.as_str())
    }

    /// `degraded` (number of missing members).
    pub fn degraded(&self) -> Result<u32, SysfsError> {
        self.parse("degraded")
    }

    /// `sync_action`.
    pub fn sync_action(&self) -> Result<SyncAction, SysfsError> {
        self.parse("sync_action")
    }

    /// `sync_action`.
    pub fn set_sync_action(&self, a: SyncAction) -> Result<(), SysfsError> {
        self.write("sync_action", a.as_str())
    }

    /// `sync_completed`.
    pub fn sync_completed(&self) -> Result<SyncCompleted, SysfsError> {
        self.parse("sync_completed")
    }

    /// `resync_start`.
    pub fn resync_start(&self) -> Result<Checkpoint, SysfsError> {
        self.parse("resync_start")
    }

    /// `resync_start`: where the resync starts (`none`: array in sync).
    pub fn set_resync_start(&self, c: Checkpoint) -> Result<(), SysfsError> {
        self.write("resync_start", &c.to_string())
    }

    /// `mismatch_cnt` (sectors found different by the last check).
    pub fn mismatch_cnt(&self) -> Result<u64, SysfsError> {
        self.parse("mismatch_cnt")
    }

    /// `bitmap/metadata=external`. Must come before `bitmap/location`.
    pub fn set_bitmap_external(&self) -> Result<(), SysfsError> {
        self.write("bitmap/metadata", "external")
    }

    /// `bitmap/chunksize` (bytes; a power of two, at least 512).
    pub fn set_bitmap_chunksize(&self, b: Bytes) -> Result<(), SysfsError> {
        if b.0 < 512 || !b.0.is_power_of_two() {
            return Err(SysfsError::Invalid {
                attr: "bitmap/chunksize".into(),
                value: b.0.to_string(),
                why: "the bitmap chunk must be a power of two of at least 512 bytes".into(),
            });
        }
        self.write("bitmap/chunksize", &b.0.to_string())
    }

    /// `bitmap/time_base` in whole seconds (md prints a fraction when the
    /// period is not whole; it is cut). `None` when there is no bitmap.
    pub fn bitmap_time_base(&self) -> Result<Option<u32>, SysfsError> {
        parse_time_base("bitmap/time_base", &self.read("bitmap/time_base")?)
    }

    /// `bitmap/time_base` (seconds): how often the bitmap daemon runs.
    pub fn set_bitmap_time_base(&self, secs: u32) -> Result<(), SysfsError> {
        self.write("bitmap/time_base", &secs.to_string())
    }

    /// `bitmap/location`: sectors from the member's sector 0 (for external
    /// metadata). Written as `+N`.
    pub fn set_bitmap_location(&self, s: Sectors) -> Result<(), SysfsError> {
        if s.0 == 0 {
            return Err(SysfsError::Invalid {
                attr: "bitmap/location".into(),
                value: "+0".into(),
                why: "the bitmap cannot start at sector 0".into(),
            });
        }
        self.write("bitmap/location", &format!("+{}", s.0))
    }

    /// `bitmap/location` as read back (`+N`, or `none`).
    pub fn bitmap_location(&self) -> Result<Option<Sectors>, SysfsError> {
        let v = self.read("bitmap/location")?;
        if v.trim() == "none" {
            return Ok(None);
        }
        v.trim()
            .trim_start_matches('+')
            .parse()
            .map(|n| Some(Sectors(n)))
            .map_err(|_| SysfsError::Parse {
                attr: "bitmap/location".into(),
                value: v,
            })
    }

    /// What the kernel offers for a bitmap on this (new, not yet started)
    /// md device: the probe behind [`crate::kmode::decide`].
    /// `bitmap/metadata` exists up to 6.17 (the bitmap group comes with the
    /// device); from 6.18 on only `bitmap_type` does.
    pub fn bitmap_offers(&self) -> crate::kmode::Offers {
        crate::kmode::Offers {
            bitmap_metadata: self.has_attr("bitmap/metadata"),
            bitmap_type: self.read("bitmap_type").ok(),
        }
    }

    /// The `SET_ARRAY_INFO` ioctl on the new, empty md device (0.90-style
    /// `mdu_array_info_t`, `not_persistent`, state clean): the only way to
    /// get md's `bitmap_info.default_offset` = 8 on an external-metadata
    /// array, so issued before `metadata_version`. Level, sizes and slots
    /// are written again through sysfs afterwards.
    pub fn set_array_info(
        &self,
        level: u32,
        raid_disks: u32,
        chunk: Bytes,
        layout: u32,
    ) -> Result<(), SysfsError> {
        let dev = self.dev_path();
        let fail = |errno: Errno| SysfsError::Write {
            attr: format!("{} (ioctl SET_ARRAY_INFO)", dev.display()),
            value: format!("level {level}, raid_disks {raid_disks}, not_persistent"),
            errno,
        };
        let as_int = |v: u64| i32::try_from(v).unwrap_or(i32::MAX);
        let mut info = MduArrayInfo::default();
        info.level = as_int(u64::from(level));
        // `size` stays 0: md sets dev_sectors from it, and `component_size`
        // then refuses any value not below it (ENOSPC, measured on 7.2).
        info.raid_disks = as_int(u64::from(raid_disks));
        info.nr_disks = info.raid_disks;
        info.not_persistent = 1;
        info.state = 1; // 1 << MD_SB_CLEAN
        info.layout = as_int(u64::from(layout));
        info.chunk_size = as_int(chunk.0);
        let f = std::fs::File::open(&dev)
            .map_err(|e| fail(Errno::from_raw(e.raw_os_error().unwrap_or(libc_eio()))))?;
        use std::os::fd::AsRawFd;
        // SAFETY: `f` is an open md block device for the duration of the
        // call and `info` is a live, correctly laid out mdu_array_info_t
        // (18 32-bit fields) the kernel only reads.
        unsafe { set_array_info_ioctl(f.as_raw_fd(), &info) }.map_err(fail)?;
        Ok(())
    }

    /// Fence every write to the array (`suspend_lo` 0, `suspend_hi` its
    /// size in sectors): writes wait until [`MdDev::lift_fence`]. The files
    /// exist only once the array runs (readonly is enough).
    pub fn fence_all(&self) -> Result<(), SysfsError> {
        let size_attr = self
            .sysfs
            .root()
            .join("block")
            .join(&self.name)
            .join("size");
        let size = self.sysfs.read_path(&size_attr)?;
        let sectors: u64 = size.trim().parse().map_err(|_| SysfsError::Parse {
            attr: format!("block/{}/size", self.name),
            value: size.clone(),
        })?;
        self.write("suspend_lo", "0")?;
        self.write("suspend_hi", &sectors.to_string())
    }

    /// Lift the fence of [`MdDev::fence_all`].
    pub fn lift_fence(&self) -> Result<(), SysfsError> {
        self.write("suspend_hi", "0")?;
        self.write("suspend_lo", "0")
    }

    /// `bitmap/can_clear`: `None` when there is no bitmap (it reads empty).
    pub fn can_clear(&self) -> Result<Option<bool>, SysfsError> {
        parse_can_clear("bitmap/can_clear", self.read("bitmap/can_clear")?)
    }

    /// `bitmap/can_clear`. The kernel refuses `true` with EBUSY while degraded.
    pub fn set_can_clear(&self, b: bool) -> Result<(), SysfsError> {
        self.write("bitmap/can_clear", if b { "true" } else { "false" })
    }

    /// `md/bitmap_set_bits`: mark chunks dirty and needing sync. The kernel
    /// accepts anything silently, so the list is formatted here as
    /// space-separated decimal chunk numbers and ranges, and every chunk must
    /// be below `nchunks`. md takes at most a page per write, so a long list
    /// goes in pieces under a page, each cut between tokens and written with
    /// its own `write(2)` ([`crate::bitmap::set_bits_pieces`]). Returns the
    /// number of writes. md flushes the bits to the bitmap area after each
    /// write; check there what it took.
    pub fn bitmap_set_bits(
        &self,
        ranges: &[(u64, u64)],
        nchunks: u64,
    ) -> Result<usize, SysfsError> {
        if let Some(&(a, b)) = ranges.iter().find(|&&(a, b)| a > b || b >= nchunks) {
            return Err(SysfsError::Invalid {
                attr: "bitmap_set_bits".into(),
                value: format!("{a}-{b}"),
                why: format!("chunk range outside 0..{nchunks}"),
            });
        }
        let pieces = crate::bitmap::set_bits_pieces(ranges, crate::bitmap::SET_BITS_MAX_WRITE);
        let n = pieces.len();
        for (i, piece) in pieces.iter().enumerate() {
            self.write("bitmap_set_bits", piece).map_err(|e| match e {
                // Name the piece, not its 4 KiB of numbers.
                SysfsError::Write { attr, errno, .. } => SysfsError::Write {
                    attr,
                    value: format!(
                        "{} (piece {} of {n}, {} bytes)",
                        abbreviate_list(piece),
                        i + 1,
                        piece.len()
                    ),
                    errno,
                },
                other => other,
            })?;
        }
        Ok(n)
    }

    /// Open an attribute and hold it ([`HeldAttr`]): for notification
    /// waits, and for reads and writes that must not depend on the path.
    pub fn watch(&self, attr: &str) -> Result<HeldAttr, SysfsError> {
        HeldAttr::open(&self.sysfs, &self.dir.join(attr))
    }
}

impl Member<'_> {
    /// Kernel name (`loop0`).
    pub fn kname(&self) -> &str {
        &self.kname
    }

    fn attr(&self, a: &str) -> String {
        format!("dev-{}/{a}", self.kname)
    }

    /// Whether the member directory exists.
    pub fn exists(&self) -> bool {
        self.md.has_attr(&format!("dev-{}", self.kname))
    }

    /// `dev-X/offset`: where the data starts on the member. Only before start.
    pub fn set_offset(&self, s: Sectors) -> Result<(), SysfsError> {
        self.md.write(&self.attr("offset"), &s.0.to_string())
    }

    /// `dev-X/size`: usable data on the member (KiB).
    pub fn set_size(&self, k: KiB) -> Result<(), SysfsError> {
        self.md.write(&self.attr("size"), &k.0.to_string())
    }

    /// `dev-X/slot` (role), or `none`.
    pub fn set_slot(&self, slot: Option<u32>) -> Result<(), SysfsError> {
        let v = slot.map(|s| s.to_string()).unwrap_or_else(|| "none".into());
        self.md.write(&self.attr("slot"), &v)
    }

    /// `dev-X/slot`.
    pub fn slot(&self) -> Result<Option<u32>, SysfsError> {
        parse_slot(&self.attr("slot"), self.md.read(&self.attr("slot"))?)
    }

    /// `dev-X/state` flags.
    pub fn flags(&self) -> Result<MemberFlags, SysfsError> {
        self.md.parse(&self.attr("state"))
    }

    /// Write a command to `dev-X/state`.
    pub fn command(&self, c: MemberCommand) -> Result<(), SysfsError> {
        self.md.write(&self.attr("state"), c.as_str())
    }

    /// `dev-X/recovery_start`.
    pub fn recovery_start(&self) -> Result<Checkpoint, SysfsError> {
        self.md.parse(&self.attr("recovery_start"))
    }

    /// `dev-X/recovery_start`: resume a rebuild from a checkpoint.
    pub fn set_recovery_start(&self, c: Checkpoint) -> Result<(), SysfsError> {
        self.md.write(&self.attr("recovery_start"), &c.to_string())
    }

    /// Watch `dev-X/state`.
    pub fn watch_state(&self) -> Result<HeldAttr, SysfsError> {
        self.md.watch(&self.attr("state"))
    }
}

/// An attribute held open: read with one `pread` at offset 0, written with
/// one `pwrite` at offset 0 (on sysfs each is one `show`/`store`), polled
/// for `POLLPRI`. Opened read-write where the attribute allows it,
/// read-only otherwise.
///
/// Held attributes are how a manager survives losing its path view of
/// `/sys` (a daemon started in the initramfs keeps the initramfs's root
/// after switch-root, where `/sys/...` no longer resolves): an open
/// attribute keeps working until the kernel object itself goes away, and
/// then every access fails with `ENODEV` (never `ENOENT`).
#[derive(Debug)]
pub struct HeldAttr {
    file: File,
    attr: String,
    /// Not on sysfs (a fake tree of regular files in unit tests): cut the
    /// file to the value after a write, as `O_TRUNC` does on a path write.
    regular: bool,
}

impl std::os::fd::AsFd for HeldAttr {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl HeldAttr {
    /// Open an attribute and read it once (sysfs arms the notification on
    /// read).
    pub fn open(sysfs: &Sysfs, p: &Path) -> Result<HeldAttr, SysfsError> {
        let attr = sysfs.rel(p);
        let err = |e: &std::io::Error| SysfsError::Read {
            attr: attr.clone(),
            errno: io_errno(e),
        };
        let file = match OpenOptions::new().read(true).write(true).open(p) {
            Ok(f) => f,
            // A read-only attribute (`degraded`, `sync_completed`).
            Err(e) if matches!(io_errno(&e), Errno::EACCES | Errno::EPERM | Errno::EROFS) => {
                File::open(p).map_err(|e| err(&e))?
            }
            Err(e) => return Err(err(&e)),
        };
        let regular = nix::sys::statfs::fstatfs(&file)
            .is_ok_and(|f| f.filesystem_type() != nix::sys::statfs::SYSFS_MAGIC);
        let w = HeldAttr {
            file,
            attr,
            regular,
        };
        w.read_fresh()?;
        Ok(w)
    }

    /// The attribute's name (relative to the sysfs root).
    pub fn attr(&self) -> &str {
        &self.attr
    }

    /// Re-read from offset 0 (this also re-arms the notification).
    pub fn read_fresh(&self) -> Result<String, SysfsError> {
        let mut buf = [0u8; 4096];
        let n = self
            .file
            .read_at(&mut buf, 0)
            .map_err(|e| SysfsError::Read {
                attr: self.attr.clone(),
                errno: io_errno(&e),
            })?;
        Ok(String::from_utf8_lossy(&buf[..n])
            .trim_end_matches('\n')
            .to_string())
    }

    /// Read afresh and parse.
    pub fn parse<T: FromStr>(&self) -> Result<T, SysfsError> {
        let v = self.read_fresh()?;
        parse_value(&self.attr, v)
    }

    /// Write `value` in one `pwrite(2)` at offset 0.
    pub fn write(&self, value: &str) -> Result<(), SysfsError> {
        let err = |errno| SysfsError::Write {
            attr: self.attr.clone(),
            value: value.to_string(),
            errno,
        };
        let n = self
            .file
            .write_at(value.as_bytes(), 0)
            .map_err(|e| err(io_errno(&e)))?;
        if n != value.len() {
            return Err(err(Errno::EIO));
        }
        if self.regular {
            self.file.set_len(n as u64).map_err(|e| err(io_errno(&e)))?;
        }
        Ok(())
    }

    /// Whether an error from this attribute says its kernel object is gone
    /// (`ENODEV`: the md device or member was deleted). The only evidence
    /// of a vanished array that survives a vanished `/sys` path.
    pub fn is_gone_error(e: &SysfsError) -> bool {
        e.errno() == Some(Errno::ENODEV)
    }
}

/// Parse a value read from `attr`.
fn parse_value<T: FromStr>(attr: &str, v: String) -> Result<T, SysfsError> {
    v.trim().parse().map_err(|_| SysfsError::Parse {
        attr: attr.to_string(),
        value: v,
    })
}

/// `bitmap/can_clear`: `None` when there is no bitmap (it reads empty).
fn parse_can_clear(attr: &str, v: String) -> Result<Option<bool>, SysfsError> {
    match v.trim() {
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        "" => Ok(None),
        _ => Err(SysfsError::Parse {
            attr: attr.to_string(),
            value: v,
        }),
    }
}

/// `bitmap/time_base` in whole seconds (md prints a fraction when the
/// period is not whole; it is cut). `None` when there is no bitmap.
fn parse_time_base(attr: &str, v: &str) -> Result<Option<u32>, SysfsError> {
    let t = v.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let whole = t.split('.').next().unwrap_or(t);
    whole.parse().map(Some).map_err(|_| SysfsError::Parse {
        attr: attr.to_string(),
        value: v.to_string(),
    })
}

/// `dev-X/slot`: `None` for `none`.
fn parse_slot(attr: &str, v: String) -> Result<Option<u32>, SysfsError> {
    if v.trim() == "none" {
        return Ok(None);
    }
    v.trim().parse().map(Some).map_err(|_| SysfsError::Parse {
        attr: attr.to_string(),
        value: v,
    })
}

/// One member's attributes, held open ([`HeldMd`]).
#[derive(Debug)]
pub struct HeldMember {
    kname: String,
    state: HeldAttr,
    slot: HeldAttr,
    recovery_start: HeldAttr,
}

impl HeldMember {
    /// Open `dev-<kname>/{state,slot,recovery_start}` of `md` by path.
    pub fn open(md: &MdDev, kname: &str) -> Result<HeldMember, SysfsError> {
        let m = md.member(kname);
        Ok(HeldMember {
            kname: kname.to_string(),
            state: md.watch(&m.attr("state"))?,
            slot: md.watch(&m.attr("slot"))?,
            recovery_start: md.watch(&m.attr("recovery_start"))?,
        })
    }

    /// Kernel name (`loop0`).
    pub fn kname(&self) -> &str {
        &self.kname
    }

    /// `dev-X/state` flags.
    pub fn flags(&self) -> Result<MemberFlags, SysfsError> {
        self.state.parse()
    }

    /// Write a command to `dev-X/state`.
    pub fn command(&self, c: MemberCommand) -> Result<(), SysfsError> {
        self.state.write(c.as_str())
    }

    /// `dev-X/slot`.
    pub fn slot(&self) -> Result<Option<u32>, SysfsError> {
        parse_slot(self.slot.attr(), self.slot.read_fresh()?)
    }

    /// `dev-X/recovery_start`.
    pub fn recovery_start(&self) -> Result<Checkpoint, SysfsError> {
        self.recovery_start.parse()
    }

    /// `dev-X/state`, for `POLLPRI`.
    pub fn state_attr(&self) -> &HeldAttr {
        &self.state
    }
}

/// The attributes of a running md device that its manager reads and writes,
/// held open from take-over on, as mdmon does: they keep working when the
/// `/sys` path no longer resolves (see [`HeldAttr`]), so the manager keeps
/// answering the kernel. Members are opened by path when they appear (a
/// member added later is added by an admin, with a working root).
#[derive(Debug)]
pub struct HeldMd {
    array_state: HeldAttr,
    degraded: HeldAttr,
    sync_action: HeldAttr,
    sync_completed: HeldAttr,
    resync_start: HeldAttr,
    /// `bitmap/can_clear` and `bitmap/time_base` (absent without a bitmap).
    can_clear: Option<HeldAttr>,
    time_base: Option<HeldAttr>,
    members: Vec<HeldMember>,
}

/// How a held array reads when asked whether it still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// `array_state` reads a running state.
    Running(ArrayState),
    /// `array_state` reads `clear` or `inactive`, or the md device was
    /// deleted (`ENODEV`, read as `clear`): it was stopped.
    Stopped(ArrayState),
    /// `array_state` could not be read for another reason: nothing is
    /// known.
    Unknown,
}

impl HeldMd {
    /// Open the array attributes of `md` and of the members `knames`, by
    /// path. A member whose attributes cannot be opened is left out (and
    /// named in the log by the caller through [`HeldMd::has_member`]).
    pub fn open(md: &MdDev, knames: &[&str]) -> Result<HeldMd, SysfsError> {
        let optional = |a: &str| {
            if md.has_attr(a) {
                md.watch(a).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut h = HeldMd {
            array_state: md.watch("array_state")?,
            degraded: md.watch("degraded")?,
            sync_action: md.watch("sync_action")?,
            sync_completed: md.watch("sync_completed")?,
            resync_start: md.watch("resync_start")?,
            can_clear: optional("bitmap/can_clear")?,
            time_base: optional("bitmap/time_base")?,
            members: Vec::new(),
        };
        for k in knames {
            h.open_member(md, k)?;
        }
        Ok(h)
    }

    /// Open a member's attributes by path (a member that just appeared),
    /// replacing any held for the same kernel name.
    pub fn open_member(&mut self, md: &MdDev, kname: &str) -> Result<(), SysfsError> {
        let m = HeldMember::open(md, kname)?;
        self.members.retain(|x| x.kname != kname);
        self.members.push(m);
        Ok(())
    }

    /// Close a member's attributes (it was removed).
    pub fn drop_member(&mut self, kname: &str) {
        self.members.retain(|x| x.kname != kname);
    }

    /// A held member.
    pub fn member(&self, kname: &str) -> Option<&HeldMember> {
        self.members.iter().find(|m| m.kname == kname)
    }

    /// Whether a member is held.
    pub fn has_member(&self, kname: &str) -> bool {
        self.member(kname).is_some()
    }

    /// Kernel names of the held members.
    pub fn member_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.kname.clone()).collect()
    }

    /// The attributes md notifies, for `POLLPRI`: `array_state`,
    /// `degraded`, `sync_action`, `sync_completed`, each member's `state`.
    pub fn notifiers(&self) -> impl Iterator<Item = &HeldAttr> {
        [
            &self.array_state,
            &self.degraded,
            &self.sync_action,
            &self.sync_completed,
        ]
        .into_iter()
        .chain(self.members.iter().map(|m| &m.state))
    }

    /// Whether the array still runs, from the held `array_state` alone.
    pub fn liveness(&self) -> Liveness {
        match self.array_state() {
            Ok(s) if s.is_running() => Liveness::Running(s),
            Ok(s) => Liveness::Stopped(s),
            Err(e) if HeldAttr::is_gone_error(&e) => Liveness::Stopped(ArrayState::Clear),
            Err(_) => Liveness::Unknown,
        }
    }

    /// `array_state`.
    pub fn array_state(&self) -> Result<ArrayState, SysfsError> {
        self.array_state.parse()
    }

    /// `array_state`.
    pub fn set_array_state(&self, s: ArrayState) -> Result<(), SysfsError> {
        self.array_state.write(s.as_str())
    }

    /// `degraded`.
    pub fn degraded(&self) -> Result<u32, SysfsError> {
        self.degraded.parse()
    }

    /// `sync_action`.
    pub fn sync_action(&self) -> Result<SyncAction, SysfsError> {
        self.sync_action.parse()
    }

    /// `sync_action`.
    pub fn set_sync_action(&self, a: SyncAction) -> Result<(), SysfsError> {
        self.sync_action.write(a.as_str())
    }

    /// `sync_completed`.
    pub fn sync_completed(&self) -> Result<SyncCompleted, SysfsError> {
        self.sync_completed.parse()
    }

    /// `resync_start`.
    pub fn resync_start(&self) -> Result<Checkpoint, SysfsError> {
        self.resync_start.parse()
    }

    /// `bitmap/can_clear` (`None` without a bitmap).
    pub fn can_clear(&self) -> Result<Option<bool>, SysfsError> {
        match &self.can_clear {
            None => Ok(None),
            Some(a) => parse_can_clear(a.attr(), a.read_fresh()?),
        }
    }

    /// `bitmap/can_clear`.
    pub fn set_can_clear(&self, b: bool) -> Result<(), SysfsError> {
        self.bitmap_attr(&self.can_clear, "bitmap/can_clear")?
            .write(if b { "true" } else { "false" })
    }

    /// `bitmap/time_base` in whole seconds (`None` without a bitmap).
    pub fn time_base(&self) -> Result<Option<u32>, SysfsError> {
        match &self.time_base {
            None => Ok(None),
            Some(a) => parse_time_base(a.attr(), &a.read_fresh()?),
        }
    }

    /// `bitmap/time_base` (seconds).
    pub fn set_time_base(&self, secs: u32) -> Result<(), SysfsError> {
        self.bitmap_attr(&self.time_base, "bitmap/time_base")?
            .write(&secs.to_string())
    }

    fn bitmap_attr<'a>(
        &self,
        a: &'a Option<HeldAttr>,
        name: &str,
    ) -> Result<&'a HeldAttr, SysfsError> {
        a.as_ref().ok_or_else(|| SysfsError::Read {
            attr: name.to_string(),
            errno: Errno::ENOENT,
        })
    }
}

/// Wait until any watched attribute is notified (`POLLPRI | POLLERR`), or
/// the timeout passes (`None`: forever). Returns the indices that woke; the
/// caller re-reads them with [`HeldAttr::read_fresh`].
pub fn poll_watches(ws: &[&HeldAttr], timeout: Option<Duration>) -> Result<Vec<usize>, SysfsError> {
    let mut fds: Vec<PollFd> = ws
        .iter()
        .map(|w| PollFd::new(w.file.as_fd(), PollFlags::POLLPRI | PollFlags::POLLERR))
        .collect();
    let t = match timeout {
        None => PollTimeout::NONE,
        Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
    };
    loop {
        match nix::poll::poll(&mut fds, t) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SysfsError::Poll(e)),
        }
    }
    Ok(fds
        .iter()
        .enumerate()
        .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
        .map(|(i, _)| i)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> (tempfile::TempDir, Sysfs) {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Sysfs::new(d.path());
        let md = d.path().join("block/md127/md");
        std::fs::create_dir_all(md.join("bitmap")).expect("mkdir");
        std::fs::create_dir_all(md.join("dev-loop0")).expect("mkdir");
        std::fs::create_dir_all(d.path().join("module/md_mod/parameters")).expect("mkdir");
        std::fs::create_dir_all(d.path().join("dev/block")).expect("mkdir");
        std::fs::create_dir_all(d.path().join("devices/virtual/block/loop0")).expect("mkdir");
        std::os::unix::fs::symlink(
            d.path().join("devices/virtual/block/loop0"),
            d.path().join("dev/block/7:0"),
        )
        .expect("symlink");
        for (f, v) in [
            ("array_state", "clean\n"),
            ("sync_action", "idle\n"),
            ("sync_completed", "none\n"),
            ("resync_start", "none\n"),
            ("degraded", "0\n"),
            ("bitmap/can_clear", "true\n"),
            ("bitmap/location", "+16\n"),
            ("dev-loop0/state", "in_sync\n"),
            ("dev-loop0/slot", "0\n"),
            ("new_dev", ""),
            ("bitmap_set_bits", ""),
        ] {
            std::fs::write(md.join(f), v).expect("write");
        }
        std::fs::write(d.path().join("module/md_mod/parameters/new_array"), "").expect("write");
        (d, s)
    }

    #[test]
    fn reads_typed_values() {
        let (_d, s) = fake();
        let md = s.md("md127");
        assert_eq!(md.array_state().expect("state"), ArrayState::Clean);
        assert_eq!(md.sync_action().expect("action"), SyncAction::Idle);
        assert_eq!(md.sync_completed().expect("sc"), SyncCompleted::None);
        assert_eq!(md.resync_start().expect("rs"), Checkpoint::None);
        assert_eq!(md.degraded().expect("deg"), 0);
        assert_eq!(md.can_clear().expect("cc"), Some(true));
        assert_eq!(md.bitmap_location().expect("loc"), Some(Sectors(16)));
        let m = md.member("loop0");
        assert!(m.flags().expect("flags").in_sync);
        assert_eq!(m.slot().expect("slot"), Some(0));
        assert_eq!(md.members(), vec!["loop0".to_string()]);
        assert_eq!(s.list_md(), vec!["md127".to_string()]);
    }

    #[test]
    fn writes_land_whole() {
        let (d, s) = fake();
        let md = s.md("md127");
        md.set_array_state(ArrayState::ActiveIdle).expect("w");
        md.set_array_state(ArrayState::Clean).expect("w");
        assert_eq!(md.array_state().expect("r"), ArrayState::Clean);
        md.set_bitmap_location(Sectors(16)).expect("w");
        let loc =
            std::fs::read_to_string(d.path().join("block/md127/md/bitmap/location")).expect("r");
        assert_eq!(loc, "+16");
        md.set_resync_start(Checkpoint::At(Sectors(256)))
            .expect("w");
        assert_eq!(md.resync_start().expect("r"), Checkpoint::At(Sectors(256)));
        md.member("loop0")
            .command(MemberCommand::Unblock)
            .expect("w");
        assert_eq!(
            std::fs::read_to_string(d.path().join("block/md127/md/dev-loop0/state")).expect("r"),
            "-blocked"
        );
    }

    #[test]
    fn errors_name_the_attribute_and_value() {
        let (_d, s) = fake();
        let md = s.md("md127");
        let e = md.write("no_such_attr", "7").expect_err("must fail");
        assert_eq!(e.errno(), Some(Errno::ENOENT));
        let m = e.to_string();
        assert!(m.contains("block/md127/md/no_such_attr"), "{m}");
        assert!(m.contains("'7'"), "{m}");
        assert!(m.contains("ENOENT"), "{m}");
        let e = md
            .set_bitmap_chunksize(Bytes(1000))
            .expect_err("not a power of two");
        assert!(e.to_string().contains("bitmap/chunksize"));
        let e = md.set_bitmap_location(Sectors(0)).expect_err("zero");
        assert!(e.to_string().contains("bitmap/location"));
    }

    #[test]
    fn block_name_resolves() {
        let (_d, s) = fake();
        assert_eq!(
            s.block_name(DevNum { major: 7, minor: 0 }).expect("name"),
            "loop0"
        );
        assert!(s.block_name(DevNum { major: 7, minor: 9 }).is_err());
        let md = s.md("md127");
        assert_eq!(
            md.add_member(DevNum { major: 7, minor: 0 }).expect("add"),
            "loop0"
        );
    }

    #[test]
    fn set_bits_formats_and_masks() {
        let (d, s) = fake();
        let md = s.md("md127");
        let n = md
            .bitmap_set_bits(&[(2, 2), (50, 51), (150, 150)], 188)
            .expect("w");
        assert_eq!(n, 1);
        let attr = d.path().join("block/md127/md/bitmap_set_bits");
        assert_eq!(std::fs::read_to_string(&attr).expect("r"), "2 50-51 150");
        // A list longer than a page goes in several writes; the fake file
        // keeps the last one, a whole list under a page ending the input.
        let long: Vec<(u64, u64)> = (0..5000u64).map(|k| (2 * k, 2 * k)).collect();
        let n = md.bitmap_set_bits(&long, 10_000).expect("w");
        assert!(n > 1, "{n} writes");
        let last = std::fs::read_to_string(&attr).expect("r");
        assert!(last.len() < 4096 && last.ends_with(" 9998"), "{last}");
        assert_eq!(md.bitmap_set_bits(&[], 188).expect("w"), 0);
        assert!(md.bitmap_set_bits(&[(187, 188)], 188).is_err());
        assert!(md.bitmap_set_bits(&[(5, 4)], 188).is_err());
    }

    #[test]
    fn parses_kernel_spellings() {
        assert_eq!("write-pending".parse(), Ok(ArrayState::WritePending));
        assert_eq!("active-idle\n".parse(), Ok(ArrayState::ActiveIdle));
        assert!("bogus".parse::<ArrayState>().is_err());
        assert_eq!(
            "128 / 24000".parse(),
            Ok(SyncCompleted::Progress {
                done: Sectors(128),
                total: Sectors(24000)
            })
        );
        let f: MemberFlags = "faulty,blocked".parse().expect("flags");
        assert!(f.faulty && f.blocked && !f.in_sync);
        assert_eq!("raid1".parse::<Level>(), Ok(Level::Raid1));
        assert_eq!("10".parse::<Level>(), Ok(Level::Raid10));
        assert!("raid7".parse::<Level>().is_err());
        assert!(valid_md_name("md127"));
        assert!(valid_md_name("md_home"));
        assert!(!valid_md_name("md"));
        assert!(!valid_md_name("sda"));
        assert!(!valid_md_name("md1x"));
    }

    #[test]
    fn new_array_asks_for_the_synchronous_del_gendisk_where_offered() {
        let (d, s) = fake();
        let p = d
            .path()
            .join("module/md_mod/parameters/legacy_async_del_gendisk");
        // Before 6.18: no such parameter, nothing written.
        assert!(!s.prefer_sync_del_gendisk());
        assert!(!p.exists());
        std::fs::write(&p, "Y\n").expect("write");
        s.new_array("md126").expect("new_array");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "N");
        assert!(s.prefer_sync_del_gendisk());
    }

    #[test]
    fn new_array_validates_name() {
        let (_d, s) = fake();
        assert!(s.new_array("../etc").is_err());
        assert!(s.new_array("md126").is_ok());
    }

    #[test]
    fn held_attributes_outlive_their_path() {
        let (d, s) = fake();
        for (f, v) in [
            ("bitmap/time_base", "100000\n"),
            ("dev-loop0/recovery_start", "none\n"),
        ] {
            std::fs::write(d.path().join("block/md127/md").join(f), v).expect("write");
        }
        let md = s.md("md127");
        let h = HeldMd::open(&md, &["loop0"]).expect("hold");
        assert_eq!(h.liveness(), Liveness::Running(ArrayState::Clean));
        // The path view goes away (switch-root moved /sys; the initramfs
        // root stays behind): the held attributes keep working.
        let moved = d.path().join("moved");
        std::fs::rename(d.path().join("block"), &moved).expect("rename");
        assert!(md.array_state().is_err(), "the path is gone");
        h.set_array_state(ArrayState::ActiveIdle).expect("write");
        h.set_array_state(ArrayState::Clean).expect("write");
        assert_eq!(h.array_state().expect("read"), ArrayState::Clean);
        assert_eq!(
            std::fs::read_to_string(moved.join("md127/md/array_state")).expect("r"),
            "clean",
            "one write, the whole value and nothing of the previous one"
        );
        assert_eq!(h.can_clear().expect("cc"), Some(true));
        h.set_can_clear(false).expect("w");
        assert_eq!(h.can_clear().expect("cc"), Some(false));
        assert_eq!(h.time_base().expect("tb"), Some(100_000));
        h.set_time_base(1).expect("w");
        assert_eq!(h.time_base().expect("tb"), Some(1));
        let m = h.member("loop0").expect("held member");
        assert!(m.flags().expect("flags").in_sync);
        assert_eq!(m.slot().expect("slot"), Some(0));
        m.command(MemberCommand::Unblock).expect("w");
        assert_eq!(
            std::fs::read_to_string(moved.join("md127/md/dev-loop0/state")).expect("r"),
            "-blocked"
        );
        // A vanished path is no evidence of a stopped array; `clear` is.
        assert_eq!(h.liveness(), Liveness::Running(ArrayState::Clean));
        std::fs::write(moved.join("md127/md/array_state"), "clear\n").expect("w");
        assert_eq!(h.liveness(), Liveness::Stopped(ArrayState::Clear));
        // Only ENODEV says the kernel object is gone.
        let gone = SysfsError::Read {
            attr: "block/md127/md/array_state".into(),
            errno: Errno::ENODEV,
        };
        assert!(HeldAttr::is_gone_error(&gone));
        let enoent = SysfsError::Read {
            attr: "block/md127/md/array_state".into(),
            errno: Errno::ENOENT,
        };
        assert!(!HeldAttr::is_gone_error(&enoent));
    }

    #[test]
    fn held_errors_name_attribute_value_and_errno() {
        let (d, s) = fake();
        let p = d.path().join("block/md127/md/degraded");
        let w = HeldAttr::open(&s, &p).expect("open");
        assert_eq!(w.read_fresh().expect("r"), "0");
        let e = w.parse::<ArrayState>().expect_err("not a state");
        assert!(e.to_string().contains("block/md127/md/degraded"), "{e}");
        let h = HeldMd::open(&s.md("md127"), &[]).expect("hold");
        std::fs::remove_file(d.path().join("block/md127/md/bitmap/can_clear")).expect("rm");
        // Still held: a write goes to the open file, whatever the path.
        h.set_can_clear(true).expect("held write");
        let e = s
            .md("md127")
            .set_can_clear(false)
            .expect_err("by path: gone");
        let m = e.to_string();
        assert!(
            m.contains("bitmap/can_clear") && m.contains("'false'") && m.contains("ENOENT"),
            "{m}"
        );
    }

    #[test]
    fn poll_times_out_on_quiet_file() {
        let (d, s) = fake();
        // Regular files always report readable, never POLLPRI; a bounded wait
        // returns without a wake.
        let w = HeldAttr::open(&s, &d.path().join("block/md127/md/array_state")).expect("open");
        assert_eq!(w.read_fresh().expect("read"), "clean");
        let woke = poll_watches(&[&w], Some(Duration::from_millis(10))).expect("poll");
        assert!(woke.is_empty(), "{woke:?}");
    }
}
