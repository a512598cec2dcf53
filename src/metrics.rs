//! `mdextctl metrics`: every running mdext array in Prometheus' text
//! exposition format, for node_exporter's textfile collector. [`render`]
//! is pure; [`gather`] reads sysfs, the members and asks mdextmon.
//! The metric names are documented in mdextctl(8), METRICS.

use crate::status::{ArrayStatus, EntryState, Health};
use std::fmt::Write as _;

/// What is exported of one array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayMetrics {
    /// Its status (record and kernel).
    pub status: ArrayStatus,
    /// Dirty chunks in the bitmap of a present member (`None`: unread).
    pub dirty_chunks: Option<u64>,
    /// The kernel's `bitmap/time_base` (differs from the record's during
    /// the start hold).
    pub kernel_time_base: Option<u32>,
}

/// The can_clear protocol's state: `clearing` (the kernel may clear bits),
/// `held` (`can_clear` false: bits kept for a member's return),
/// `start-hold` (the start hold: `time_base` not yet the recorded value),
/// `unknown`.
pub fn protocol_state(m: &ArrayMetrics) -> &'static str {
    if m.kernel_time_base
        .is_some_and(|t| t != m.status.bitmap.time_base)
    {
        return "start-hold";
    }
    match m.status.can_clear {
        Some(true) => "clearing",
        Some(false) => "held",
        None => "unknown",
    }
}

const PROTOCOL_STATES: [&str; 4] = ["clearing", "held", "start-hold", "unknown"];
const HEALTHS: [Health; 4] = [
    Health::Whole,
    Health::Degraded,
    Health::Unusable,
    Health::Unknown,
];
const ENTRY_STATES: [EntryState; 6] = [
    EntryState::InSync,
    EntryState::Rebuilding,
    EntryState::Failed,
    EntryState::Spare,
    EntryState::Missing,
    EntryState::Empty,
];

/// A label value, escaped as the format wants (`\\`, `\"`, `\n`).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(String, u64)>,
}

/// The exposition text for these arrays.
pub fn render(arrays: &[ArrayMetrics]) -> String {
    let mut fams: Vec<Family> = Vec::new();
    let mut add = |name: &'static str, help: &'static str, labels: String, v: u64| match fams
        .iter_mut()
        .find(|f| f.name == name)
    {
        Some(f) => f.samples.push((labels, v)),
        None => fams.push(Family {
            name,
            help,
            samples: vec![(labels, v)],
        }),
    };
    for a in arrays {
        let s = &a.status;
        let md = format!("md=\"{}\"", esc(&s.md));
        add(
            "mdext_array_info",
            "A running mdext array (value 1), with its name, UUID and level.",
            format!(
                "{md},name=\"{}\",uuid=\"{}\",level=\"{}\"",
                esc(&s.name),
                s.uuid,
                s.level
            ),
            1,
        );
        add(
            "mdext_array_raid_disks",
            "Slots of the array.",
            md.clone(),
            u64::from(s.raid_disks),
        );
        if let Some(d) = s.degraded {
            add(
                "mdext_array_degraded",
                "The kernel's count of slots without an in-sync member.",
                md.clone(),
                u64::from(d),
            );
        }
        for h in HEALTHS {
            add(
                "mdext_array_health",
                "1 for the array's health (whole, degraded, unusable, unknown), 0 for the others.",
                format!("{md},health=\"{}\"", h.as_str()),
                u64::from(s.health == h),
            );
        }
        for st in ENTRY_STATES {
            let n = s.members.iter().filter(|m| m.entry.state == st).count();
            add(
                "mdext_array_members",
                "Member table entries in each recorded state.",
                format!("{md},state=\"{}\"", st.as_str()),
                n as u64,
            );
        }
        add(
            "mdext_array_bitmap_chunks",
            "Chunks the write-intent bitmap covers.",
            md.clone(),
            s.bitmap.chunks,
        );
        if let Some(d) = a.dirty_chunks {
            add(
                "mdext_array_bitmap_dirty_chunks",
                "Dirty chunks in the write-intent bitmap (what a returning member's rebuild copies).",
                md.clone(),
                d,
            );
        }
        if let Some(c) = s.can_clear {
            add(
                "mdext_array_can_clear",
                "bitmap/can_clear: 1 the kernel may clear bits, 0 they are kept.",
                md.clone(),
                u64::from(c),
            );
        }
        let ps = protocol_state(a);
        for p in PROTOCOL_STATES {
            add(
                "mdext_array_protocol_state",
                "1 for the can_clear protocol's state (clearing, held, start-hold, unknown), 0 for the others.",
                format!("{md},state=\"{p}\""),
                u64::from(p == ps),
            );
        }
        if let Some(act) = s.sync_action {
            add(
                "mdext_array_sync_action",
                "The kernel's sync_action (value 1).",
                format!("{md},action=\"{act}\""),
                1,
            );
        }
        let (done, total) = s
            .sync_completed
            .map_or((0, 0), |p| (p.done_sectors, p.total_sectors));
        add(
            "mdext_array_sync_done_sectors",
            "Sectors done of the running resync, rebuild or scrub (0 when none runs).",
            md.clone(),
            done,
        );
        add(
            "mdext_array_sync_total_sectors",
            "Sectors in all of the running resync, rebuild or scrub (0 when none runs).",
            md.clone(),
            total,
        );
        add(
            "mdext_array_events",
            "The metadata's event count.",
            md.clone(),
            s.events,
        );
        add(
            "mdext_array_events_cleared",
            "The event count at which the kernel was last allowed to clear bits.",
            md.clone(),
            s.bitmap.events_cleared,
        );
        add(
            "mdext_array_clean",
            "1 when the metadata records the array clean.",
            md.clone(),
            u64::from(s.clean),
        );
        add(
            "mdext_array_managed",
            "1 when mdextmon manages the array (writes hang otherwise).",
            md,
            u64::from(s.managed),
        );
    }
    let mut out = String::new();
    let _ = writeln!(out, "# HELP mdext_arrays Running mdext arrays.");
    let _ = writeln!(out, "# TYPE mdext_arrays gauge");
    let _ = writeln!(out, "mdext_arrays {}", arrays.len());
    for f in fams {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} gauge", f.name);
        for (l, v) in f.samples {
            let _ = writeln!(out, "{}{{{l}}} {v}", f.name);
        }
    }
    out
}

/// Read every running array's metrics (status through mdextmon when it
/// runs, the bitmap of its first present member).
pub fn gather(
    sysfs: &crate::sysfs::Sysfs,
    run_dir: &std::path::Path,
) -> Result<Vec<ArrayMetrics>, crate::ctl::CtlError> {
    let mut v = Vec::new();
    for status in crate::ctl::status(sysfs, run_dir)? {
        let md = sysfs.md(&status.md);
        let dirty_chunks =
            crate::managed::Record::read(sysfs, &status.md, crate::device::Access::Read)
                .ok()
                .and_then(|r| {
                    let (_, dev, _, _) = r.devices.first()?;
                    let bits = dev.read_mode_bits(&r.meta).ok()?;
                    Some(crate::bitmap::count_dirty(&bits, r.meta.bitmap_chunks()))
                });
        v.push(ArrayMetrics {
            kernel_time_base: md.bitmap_time_base().ok().flatten(),
            dirty_chunks,
            status,
        });
    }
    Ok(v)
}

/// Write `text` to `path` atomically (a temporary file in the same
/// directory, synced, then renamed over it), as the textfile collector
/// needs: it never reads a half-written file.
pub fn write_atomic(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::md::{ArrayState, Level, SyncAction, SyncCompleted};
    use crate::meta::{ArrayMeta, BitmapInfo, Geometry, MemberEntry, MemberState};
    use crate::status::KernelState;
    use crate::units::{Bytes, Sectors};

    fn status() -> ArrayStatus {
        let meta = ArrayMeta {
            version: crate::format::VERSION,
            uuid: uuid::Uuid::from_u128(1),
            name: "we\"b".into(),
            ctime: 0,
            utime: 0,
            forced_start: None,
            write_mostly: Vec::new(),
            geometry: Geometry {
                level: Level::Raid1,
                layout: 0,
                chunk_size: Bytes(0),
                raid_disks: 2,
                component_size: Sectors(2048),
            },
            events: 12,
            clean: false,
            resync: crate::md::Checkpoint::None,
            bitmap: BitmapInfo {
                offset: Sectors(16),
                size: Bytes(4096),
                chunk: Bytes(64 << 10),
                time_base: 5,
                events_cleared: 9,
                mode: crate::meta::BitmapMode::External,
            },
            members: vec![
                MemberEntry {
                    uuid: uuid::Uuid::from_u128(2),
                    state: MemberState::InSync,
                    events: 12,
                },
                MemberEntry {
                    uuid: uuid::Uuid::from_u128(3),
                    state: MemberState::Failed,
                    events: 11,
                },
            ],
        };
        ArrayStatus::new(
            "md127",
            &meta,
            &[(0, "loop0")],
            &KernelState {
                array_state: Some(ArrayState::Active),
                degraded: Some(1),
                sync_action: Some(SyncAction::Idle),
                sync_completed: Some(SyncCompleted::None),
                can_clear: Some(false),
            },
        )
    }

    /// Parse `name{labels} value` lines; every sample line must parse and
    /// every family must have HELP and TYPE before its samples.
    fn parse(text: &str) -> Vec<(String, String, u64)> {
        let mut typed = Vec::new();
        let mut v = Vec::new();
        for l in text.lines() {
            if let Some(r) = l.strip_prefix("# TYPE ") {
                typed.push(r.split_whitespace().next().expect("name").to_string());
                continue;
            }
            if l.starts_with("# HELP ") {
                continue;
            }
            let (head, val) = l.rsplit_once(' ').expect("sample");
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}').expect("}")),
                None => (head, ""),
            };
            assert!(typed.iter().any(|t| t == name), "{name} untyped");
            v.push((
                name.to_string(),
                labels.to_string(),
                val.parse().expect("value"),
            ));
        }
        v
    }

    #[test]
    fn renders_a_degraded_array() {
        let m = ArrayMetrics {
            status: status(),
            dirty_chunks: Some(5),
            kernel_time_base: Some(5),
        };
        let t = render(std::slice::from_ref(&m));
        let s = parse(&t);
        let get = |name: &str, extra: &str| {
            s.iter()
                .find(|(n, l, _)| n == name && l.contains(extra))
                .map(|x| x.2)
        };
        assert_eq!(get("mdext_arrays", ""), Some(1));
        assert_eq!(
            get("mdext_array_bitmap_dirty_chunks", "md=\"md127\""),
            Some(5)
        );
        assert_eq!(get("mdext_array_can_clear", ""), Some(0));
        assert_eq!(get("mdext_array_degraded", ""), Some(1));
        assert_eq!(get("mdext_array_health", "health=\"degraded\""), Some(1));
        assert_eq!(get("mdext_array_health", "health=\"whole\""), Some(0));
        assert_eq!(get("mdext_array_members", "state=\"failed\""), Some(1));
        assert_eq!(get("mdext_array_members", "state=\"in-sync\""), Some(1));
        assert_eq!(get("mdext_array_protocol_state", "state=\"held\""), Some(1));
        assert_eq!(get("mdext_array_events", ""), Some(12));
        assert_eq!(get("mdext_array_events_cleared", ""), Some(9));
        assert_eq!(get("mdext_array_bitmap_chunks", ""), Some(16));
        assert!(t.contains("name=\"we\\\"b\""), "{t}");
        // The start hold shows as such.
        let hold = ArrayMetrics {
            kernel_time_base: Some(crate::monitor::HOLD_TIME_BASE),
            ..m
        };
        assert_eq!(protocol_state(&hold), "start-hold");
        // No arrays: still a valid file.
        assert_eq!(
            parse(&render(&[])),
            vec![("mdext_arrays".into(), String::new(), 0)]
        );
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("mdext.prom");
        write_atomic(&f, "a 1\n").expect("write");
        write_atomic(&f, "a 2\n").expect("write");
        assert_eq!(std::fs::read_to_string(&f).expect("read"), "a 2\n");
        assert_eq!(std::fs::read_dir(d.path()).expect("ls").count(), 1);
        assert!(write_atomic(&d.path().join("nodir/x"), "").is_err());
    }
}
