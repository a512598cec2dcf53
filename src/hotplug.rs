//! `mdextctl incremental`: the I/O around [`crate::incremental`]'s
//! decisions. Read the device's superblock, take the pending map's lock
//! ([`crate::pending::Store`]), record the device, decide, and start the
//! array by `assemble`'s own path (which hands it to mdextmon), re-add a
//! returning member through mdextmon, or record a vanished member failed.

use crate::assembly::Candidate;
use crate::control::{self, ErrorKind, Request};
use crate::ctl::{self, AssembleOptions, AssembleReport, CtlError};
use crate::device::{Access, Device, DeviceError};
use crate::format::ReadError;
use crate::incremental::{decide, decide_start, Decision, PendingArray, Running, SeenDevice};
use crate::managed::running_arrays;
use crate::pending::{PendingError, Store};
use crate::sysfs::{DevNum, Sysfs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// Errors of incremental assembly. [`HotplugError::exit_code`] tells the
/// caller (udev) apart "not ours" (1) from "ours, and it failed" (2).
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The device holds no mdext metadata (or is no block device): nothing
    /// was done.
    #[error("{0}: {1}")]
    NotMember(PathBuf, String),
    /// The device or array is not known to incremental assembly (nothing
    /// pending, not in a running array).
    #[error("{0}")]
    Unknown(String),
    /// The array cannot start, or the device cannot join it.
    #[error("{0}")]
    Failed(String),
    /// Starting the array failed.
    #[error(transparent)]
    Ctl(#[from] CtlError),
    /// The pending map.
    #[error(transparent)]
    Pending(#[from] PendingError),
}

impl HotplugError {
    /// 1: not an mdext member / not known (nothing was changed); 2: an
    /// mdext member that could not be added, or an array that could not
    /// start.
    pub fn exit_code(&self) -> u8 {
        match self {
            HotplugError::NotMember(..) | HotplugError::Unknown(_) => 1,
            _ => 2,
        }
    }
}

/// Options of `mdextctl incremental`.
#[derive(Clone, Debug)]
pub struct IncrementalOptions {
    /// Start degraded when expected members are missing (`--run`).
    pub run: bool,
    /// The daemon's run directory (also holds the pending map).
    pub run_dir: PathBuf,
    /// The mdextmon binary, started when none runs.
    pub mdextmon: PathBuf,
}

impl IncrementalOptions {
    fn assemble(&self) -> AssembleOptions {
        AssembleOptions {
            run: true,
            run_dir: self.run_dir.clone(),
            mdextmon: self.mdextmon.clone(),
            ..AssembleOptions::default()
        }
    }
}

/// What an incremental call did for one array.
#[derive(Debug)]
pub enum Outcome {
    /// Recorded; the array waits for more members.
    Waiting {
        /// Array UUID.
        uuid: Uuid,
        /// Array name.
        name: String,
        /// Members present.
        present: usize,
        /// Slots expected and missing.
        missing: Vec<u32>,
        /// Whether `--run` would start it now.
        runnable: bool,
    },
    /// The array was started.
    Started {
        /// What assemble did.
        report: AssembleReport,
        /// Returning members re-added after the start, and the outcome.
        readded: Vec<(PathBuf, Result<(), String>)>,
    },
    /// The device was re-added to its running array.
    ReAdded {
        /// Array UUID.
        uuid: Uuid,
        /// Array name.
        name: String,
        /// md device.
        md: String,
    },
    /// The device is already a member of its running array.
    AlreadyIn {
        /// Array UUID.
        uuid: Uuid,
        /// Array name.
        name: String,
        /// md device.
        md: String,
    },
    /// The array was already running (`--run` of a pending array).
    AlreadyRunning {
        /// Array UUID.
        uuid: Uuid,
        /// Array name.
        name: String,
        /// md device.
        md: String,
    },
    /// The device is a spare of a running array; not added.
    Spare {
        /// Array UUID.
        uuid: Uuid,
        /// Array name.
        name: String,
    },
    /// A vanished member was recorded failed and removed from its array.
    Removed {
        /// The device.
        device: PathBuf,
        /// md device.
        md: String,
    },
    /// A vanished device was dropped from an array's pending set.
    Forgotten {
        /// The device.
        device: PathBuf,
        /// Array UUID.
        uuid: Uuid,
    },
}

impl Outcome {
    /// The array's UUID, when the outcome names one.
    pub fn uuid(&self) -> Option<Uuid> {
        match self {
            Outcome::Waiting { uuid, .. }
            | Outcome::ReAdded { uuid, .. }
            | Outcome::AlreadyIn { uuid, .. }
            | Outcome::AlreadyRunning { uuid, .. }
            | Outcome::Spare { uuid, .. }
            | Outcome::Forgotten { uuid, .. } => Some(*uuid),
            Outcome::Started { report, .. } => Uuid::parse_str(&report.uuid).ok(),
            Outcome::Removed { .. } => None,
        }
    }

    /// The md device, when the array runs.
    pub fn md(&self) -> Option<&str> {
        match self {
            Outcome::ReAdded { md, .. }
            | Outcome::AlreadyIn { md, .. }
            | Outcome::AlreadyRunning { md, .. }
            | Outcome::Removed { md, .. } => Some(md),
            Outcome::Started { report, .. } => Some(&report.md),
            _ => None,
        }
    }

    /// One word for `--export` (`MDEXT_INCREMENTAL`).
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Waiting { .. } => "waiting",
            Outcome::Started { .. } => "started",
            Outcome::ReAdded { .. } => "readded",
            Outcome::AlreadyIn { .. } => "member",
            Outcome::AlreadyRunning { .. } => "running",
            Outcome::Spare { .. } => "spare",
            Outcome::Removed { .. } => "removed",
            Outcome::Forgotten { .. } => "forgotten",
        }
    }
}

/// Read `path` as a candidate member: quietly "not a member" for a device
/// without mdext metadata (udev calls this for every disk).
fn read_device(path: &Path) -> Result<Candidate, HotplugError> {
    let dev = DevNum::of_block_device(path).map_err(|e| {
        HotplugError::NotMember(
            path.into(),
            if e.kind() == std::io::ErrorKind::InvalidInput {
                "not a block device".into()
            } else {
                e.to_string()
            },
        )
    })?;
    let d = Device::open(path, Access::Read).map_err(|e| match e {
        DeviceError::NotFound(_) => HotplugError::NotMember(path.into(), "no such device".into()),
        e => HotplugError::Failed(e.to_string()),
    })?;
    let sb = match d.read_superblock() {
        Ok(r) => r.superblock,
        Err(DeviceError::Metadata {
            source: ReadError::NoMetadata,
            ..
        }) => {
            return Err(HotplugError::NotMember(
                path.into(),
                "no mdext metadata".into(),
            ))
        }
        Err(e) => return Err(HotplugError::Failed(e.to_string())),
    };
    Ok(Candidate {
        path: path.to_path_buf(),
        dev,
        sb,
        size: d.size(),
    })
}

fn seen(c: &Candidate) -> SeenDevice {
    SeenDevice {
        path: c.path.clone(),
        dev: c.dev,
        member_uuid: c.sb.device.uuid,
        events: c.sb.array.events,
    }
}

/// The devices of a pending set that are still what was recorded (same
/// device number, same array, same member), read again; the others are
/// dropped from `p`. Devices md holds now (in some array) are dropped too.
fn revalidate(sysfs: &Sysfs, p: &mut PendingArray) -> Vec<Candidate> {
    let mut out = Vec::new();
    p.devices.retain(|s| {
        let Ok(c) = read_device(&s.path) else {
            return false;
        };
        let same = c.dev == s.dev
            && c.sb.array.uuid == p.uuid
            && c.sb.device.uuid == s.member_uuid
            && ctl::holder_of(sysfs, c.dev).is_none();
        if same {
            out.push(c);
        }
        same
    });
    out
}

/// `mdextctl incremental DEV`: record the device and act.
pub fn add(sysfs: &Sysfs, o: &IncrementalOptions, path: &Path) -> Result<Outcome, HotplugError> {
    // Read before taking any lock or touching /run: a disk that is not
    // ours costs one read and changes nothing.
    let c = read_device(path)?;
    let uuid = c.sb.array.uuid;
    let name = c.sb.array.name.clone();
    let store = Store::lock(&o.run_dir)?;
    let running = ctl::running_md(sysfs, &uuid);
    let holder = ctl::holder_of(sysfs, c.dev);
    if let Some(h) = &holder {
        if running.as_deref() != Some(h.as_str()) {
            return Err(HotplugError::Failed(format!(
                "{}: already in use by {h}",
                path.display()
            )));
        }
    }
    if let Some(md) = running {
        // The array runs: whatever was pending for it is moot.
        store.remove(&uuid)?;
        let r = Running {
            md: md.clone(),
            holds_device: holder.is_some(),
        };
        return match decide(&c, &[], Some(&r), o.run) {
            Decision::AlreadyIn { md } => Ok(Outcome::AlreadyIn { uuid, name, md }),
            Decision::Spare => Ok(Outcome::Spare { uuid, name }),
            _ => {
                readd(o, &md, path).map_err(|e| {
                    HotplugError::Failed(format!(
                        "{}: could not be re-added to /dev/{md}: {e}",
                        path.display()
                    ))
                })?;
                Ok(Outcome::ReAdded { uuid, name, md })
            }
        };
    }
    let mut p = store
        .load(&uuid)?
        .unwrap_or_else(|| PendingArray::new(uuid, &name));
    p.name = name;
    p.devices
        .retain(|s| s.dev != c.dev && s.member_uuid != c.sb.device.uuid);
    let mut cands = revalidate(sysfs, &mut p);
    p.record(seen(&c));
    cands.push(c);
    act(sysfs, o, &store, p, &cands, o.run)
}

/// Decide for a pending array not running, and act: start it, or record
/// it as waiting. The map is written either way before returning.
fn act(
    sysfs: &Sysfs,
    o: &IncrementalOptions,
    store: &Store,
    p: PendingArray,
    cands: &[Candidate],
    run: bool,
) -> Result<Outcome, HotplugError> {
    match decide_start(cands, run) {
        Decision::Wait {
            present,
            missing,
            runnable,
        } => {
            store.save(&p)?;
            Ok(Outcome::Waiting {
                uuid: p.uuid,
                name: p.name,
                present,
                missing,
                runnable,
            })
        }
        Decision::Start { readd: back, .. } => {
            let report = match ctl::assemble_devices(sysfs, &o.assemble(), cands.to_vec()) {
                Ok(r) => r,
                Err(e) => {
                    store.save(&p)?;
                    return Err(e.into());
                }
            };
            store.remove(&p.uuid)?;
            let readded = back
                .into_iter()
                .map(|d| {
                    let r = readd(o, &report.md, &d);
                    (d, r)
                })
                .collect();
            Ok(Outcome::Started { report, readded })
        }
        Decision::CannotStart(why) => {
            store.save(&p)?;
            Err(HotplugError::Failed(format!(
                "array {} ({}) cannot start: {why}",
                p.name, p.uuid
            )))
        }
        // decide_start answers only the above.
        d => Err(HotplugError::Failed(format!("unexpected decision {d:?}"))),
    }
}

/// Ask mdextmon to add `dev` back to `md` (it decides bitmap or full
/// rebuild from the device's own record).
fn readd(o: &IncrementalOptions, md: &str, dev: &Path) -> Result<(), String> {
    ctl::ensure_daemon(&o.run_dir, &o.mdextmon).map_err(|e| e.to_string())?;
    let req = Request::Add {
        md: md.to_string(),
        device: dev.to_string_lossy().into_owned(),
        write_mostly: false,
        spare: false,
    };
    control::act(&o.run_dir, &req, Duration::from_secs(60)).map_err(|e| e.to_string())
}

/// `mdextctl incremental --run --scan` (`which` = `None`) or `--run
/// NAME|UUID`: start pending arrays with the members present, degraded if
/// the level allows. Each array on its own: one that cannot start does not
/// stop the others.
pub fn run_pending(
    sysfs: &Sysfs,
    o: &IncrementalOptions,
    which: Option<&str>,
) -> Result<Vec<Result<Outcome, HotplugError>>, HotplugError> {
    let store = Store::lock(&o.run_dir)?;
    let want = which.map(|w| (w, Uuid::parse_str(w).ok()));
    let all = store.all()?;
    let picked: Vec<PendingArray> = all
        .into_iter()
        .filter(|a| match want {
            None => true,
            Some((w, u)) => a.name == w || Some(a.uuid) == u,
        })
        .collect();
    if picked.is_empty() {
        if let Some((w, u)) = want {
            // Started meanwhile (by the last member, or assemble): done.
            if let Some(md) = u.and_then(|u| ctl::running_md(sysfs, &u)) {
                return Ok(vec![Ok(Outcome::AlreadyRunning {
                    uuid: u.unwrap_or_default(),
                    name: String::new(),
                    md,
                })]);
            }
            return Err(HotplugError::Unknown(format!(
                "no devices of array '{w}' are pending"
            )));
        }
    }
    let mut out = Vec::new();
    for mut p in picked {
        if let Some(md) = ctl::running_md(sysfs, &p.uuid) {
            store.remove(&p.uuid)?;
            out.push(Ok(Outcome::AlreadyRunning {
                uuid: p.uuid,
                name: p.name,
                md,
            }));
            continue;
        }
        let cands = revalidate(sysfs, &mut p);
        if cands.is_empty() {
            store.remove(&p.uuid)?;
            out.push(Err(HotplugError::Failed(format!(
                "array {} ({}): none of its recorded devices is present any more",
                p.name, p.uuid
            ))));
            continue;
        }
        out.push(act(sysfs, o, &store, p, &cands, true));
    }
    Ok(out)
}

/// `mdextctl incremental --remove DEV`: a device went away. If a running
/// mdext array holds it, mdextmon records it failed and removes it; it is
/// dropped from any pending set. The device node may be gone already: its
/// kernel name (the path's last component, or what a symlink names) is
/// what counts.
pub fn remove(
    sysfs: &Sysfs,
    o: &IncrementalOptions,
    path: &Path,
) -> Result<Vec<Outcome>, HotplugError> {
    let dev = DevNum::of_block_device(path).ok();
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let kname = dev
        .and_then(|d| sysfs.block_name(d).ok())
        .or_else(|| real.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or_else(|| HotplugError::Unknown(format!("{}: no device name", path.display())))?;
    let store = Store::lock(&o.run_dir)?;
    let mut out = Vec::new();
    for mut p in store.all()? {
        if p.forget(dev, Path::new(&kname)) {
            store.save(&p)?;
            out.push(Outcome::Forgotten {
                device: path.to_path_buf(),
                uuid: p.uuid,
            });
        }
    }
    for md in running_arrays(sysfs) {
        let member = sysfs
            .root()
            .join("block")
            .join(&md)
            .join("md")
            .join(format!("dev-{kname}"));
        if !member.exists() {
            continue;
        }
        let fail = Request::Fail {
            md: md.clone(),
            device: kname.clone(),
        };
        control::act(&o.run_dir, &fail, Duration::from_secs(60)).map_err(|e| {
            HotplugError::Failed(match e {
                control::ControlError::NotRunning(_)
                | control::ControlError::Daemon {
                    kind: ErrorKind::NotManaged,
                    ..
                } => format!(
                    "{}: /dev/{md} is not managed by mdextmon, so its loss cannot be recorded: start mdextmon (it adopts running arrays)",
                    path.display()
                ),
                e => format!("{}: recording it failed in /dev/{md}: {e}", path.display()),
            })
        })?;
        // mdextmon detaches a failed member by itself; a remove that finds
        // it gone already has nothing to do.
        let rm = Request::Remove {
            md: md.clone(),
            device: kname.clone(),
        };
        let _ = control::act(&o.run_dir, &rm, Duration::from_secs(60));
        out.push(Outcome::Removed {
            device: path.to_path_buf(),
            md,
        });
    }
    if out.is_empty() {
        return Err(HotplugError::Unknown(format!(
            "{}: not a member of a running or pending mdext array",
            path.display()
        )));
    }
    Ok(out)
}
