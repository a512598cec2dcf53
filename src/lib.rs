//! mdext: a userspace manager for Linux md RAID arrays whose metadata, and
//! whose write-intent bitmap metadata, are owned by userspace
//! (`metadata_version=external:...`, `bitmap/metadata=external`).
//!
//! Modules, one per concept:
//! - [`units`]: `Bytes`, `Sectors`, `KiB` newtypes (md's sysfs mixes all three).
//! - [`sysfs`]: typed access to `/sys/block/mdX/md/...`, errno mapping, POLLPRI waits.
//! - [`meta`]: the logical metadata (what an array and its members are).
//! - [`format`]: the on-disk metadata format (bytes <-> typed values, nothing else).
//! - [`bitmap`]: pure helpers over the external bitmap area's bytes.

pub mod bitmap;
pub mod create;
pub mod device;
pub mod format;
pub mod meta;
pub mod probe;
pub mod sysfs;
pub mod units;
