//! mdext: a userspace manager for Linux md RAID arrays whose metadata, and
//! whose write-intent bitmap metadata, are owned by userspace
//! (`metadata_version=external:...`, `bitmap/metadata=external`).
//!
//! Modules, one per concept:
//! - [`units`]: `Bytes`, `Sectors`, `KiB` newtypes (md's sysfs mixes all three).
//! - [`md`]: md's vocabulary and level rules (pure).
//! - [`sysfs`]: typed access to `/sys/block/mdX/md/...`, errno mapping, POLLPRI waits.
//! - [`assembly`]: the activation sequence (sysfs writes in the kernel's order).
//! - [`control`]: the control socket protocol (JSON lines, root only): typed
//!   requests and replies, and the daemon's non-blocking connection handling.
//! - [`status`]: one typed status of a running array (socket, `detail`, `status`).
//! - [`meta`]: the logical metadata (what an array and its members are).
//! - [`format`]: the on-disk metadata format (bytes <-> typed values, nothing else).
//! - [`bitmap`]: pure helpers over the external bitmap area's bytes.
//! - [`kmode`]: the bitmap modes' pure rules (probe decision, md's bitmap
//!   superblock for the kernel-managed mode, the bit merge between regions).
//! - [`device`]: member I/O (O_DIRECT, exclusive open); [`probe`]: foreign signatures.
//! - [`ctl`]: mdextctl's assemble/stop/detail/status.
//! - [`incremental`]: incremental assembly's decisions (pure); [`pending`]: its
//!   map under `/run/mdext`; [`hotplug`]: `mdextctl incremental` (the I/O).
//! - [`cli`]: what both binaries share as command-line programs (error lines, log lines, EPIPE).
//! - [`monitor`]: the monitor's pure state machine (events in, actions out).
//! - [`daemon`]: mdextmon's I/O loop; [`managed`]: one managed array;
//!   [`writers`]: the shared pool that writes members' records in parallel.
//! - [`events`]: what mdextmon reports (pure, from state transitions);
//!   [`report`]: to the journal ([`journal`]), stderr and the PROGRAM.
//! - [`wait`]: `mdextctl wait`; [`metrics`]: `mdextctl metrics`.
//! - [`config`]: the configuration file, mdext.conf(5).
//! - [`service`]: mdextmon under systemd (sd_notify readiness, status, watchdog).

pub mod assembly;
pub mod bitmap;
pub mod cli;
pub mod config;
pub mod control;
pub mod convert;
pub mod create;
pub mod ctl;
pub mod daemon;
pub mod device;
pub mod events;
pub mod failpoint;
pub mod format;
pub mod hotplug;
pub mod incremental;
pub mod journal;
pub mod kmode;
pub mod logsink;
pub mod managed;
pub mod md;
pub mod meta;
pub mod metrics;
pub mod monitor;
pub mod pending;
pub mod probe;
pub mod report;
pub mod service;
pub mod status;
pub mod sysfs;
pub mod units;
pub mod wait;
pub mod waitset;
pub mod writers;
