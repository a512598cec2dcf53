//! mdext: a userspace manager for Linux md RAID arrays whose metadata, and
//! whose write-intent bitmap metadata, are owned by userspace
//! (`metadata_version=external:...`, `bitmap/metadata=external`).
//!
//! Modules, one per concept:
//! - [`units`]: `Bytes`, `Sectors`, `KiB` newtypes (md's sysfs mixes all three).
//! - [`sysfs`]: typed access to `/sys/block/mdX/md/...`, errno mapping, POLLPRI waits.
//! - [`meta`]: the logical metadata (what an array and its members are).
//! - [`format`]: the on-disk metadata format (bytes <-> typed values, nothing else).

pub mod meta;
pub mod monitor;
pub mod sysfs;
pub mod units;
