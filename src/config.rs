//! `/etc/mdext.conf`: what mdadm.conf does that mdext needs. Pure parser
//! ([`parse`]) and the lookups built on it; reading the file is
//! [`Config::load`]. The format is documented in mdext.conf(5).
//!
//! ```text
//! # comments run to the end of the line
//! AUTO yes                      # assemble arrays not listed here: yes (default) or no
//! ARRAY root md=md127           # array name (or uuid=UUID) -> md device
//! ARRAY uuid=5d0c3f8e-2b1a-4c5d-9e8f-0a1b2c3d4e5f md=md126 auto=no
//! PROGRAM /usr/local/sbin/mdext-event
//! ```
//!
//! Keywords are case-insensitive; values are not. A missing file is the
//! defaults; a line that cannot be understood is an error naming the file
//! and line ([`ConfigError`]), and nothing of the file is used.

use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The default configuration file.
pub const DEFAULT_PATH: &str = "/etc/mdext.conf";

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A line that cannot be understood.
    #[error("{file}:{line}: {why}")]
    Line {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// The file exists but cannot be read.
    #[error("{file}: {why}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        why: String,
    },
}

/// How an `ARRAY` line names its array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArrayId {
    /// By the name recorded in its metadata.
    Name(String),
    /// By its UUID.
    Uuid(Uuid),
}

/// One `ARRAY` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayLine {
    /// Which array.
    pub id: ArrayId,
    /// The md device to run it as (`md127`), if given.
    pub md: Option<String>,
    /// Whether it is assembled automatically (`auto=`); `None`: the
    /// `AUTO` line decides.
    pub auto: Option<bool>,
    /// `spare-group=`: arrays of one group managed by one mdextmon share
    /// their spares (mdadm's spare-group).
    pub spare_group: Option<String>,
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `ARRAY` lines, in file order.
    pub arrays: Vec<ArrayLine>,
    /// `AUTO`: assemble arrays automatically unless told otherwise
    /// (default yes).
    pub auto: bool,
    /// `PROGRAM`: run for every event mdextmon reports.
    pub program: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            arrays: Vec::new(),
            auto: true,
            program: None,
        }
    }
}

/// Whether `s` is an md device name md accepts for an array: `md` and
/// digits, or `md_` and a name (`/dev/` in front is allowed by [`parse`]).
fn valid_md(s: &str) -> bool {
    if let Some(d) = s.strip_prefix("md_") {
        return !d.is_empty()
            && d.len() <= 32
            && d.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    }
    s.strip_prefix("md")
        .is_some_and(|d| !d.is_empty() && d.len() <= 9 && d.chars().all(|c| c.is_ascii_digit()))
}

fn yes_no(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" => Some(true),
        "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// Parse the text of a configuration file; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let mut c = Config::default();
    let mut seen_auto = false;
    for (n, raw) in text.lines().enumerate() {
        let err = |why: String| ConfigError::Line {
            file: file.to_string(),
            line: n + 1,
            why,
        };
        let line = raw.split('#').next().unwrap_or_default().trim();
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        let rest: Vec<&str> = words.collect();
        match key.to_ascii_uppercase().as_str() {
            "ARRAY" => c.arrays.push(parse_array(&rest).map_err(err)?),
            "AUTO" => {
                if seen_auto {
                    return Err(err("AUTO given twice".into()));
                }
                seen_auto = true;
                c.auto = match rest.as_slice() {
                    [v] => {
                        yes_no(v).ok_or_else(|| err(format!("AUTO takes yes or no, not '{v}'")))?
                    }
                    _ => return Err(err("AUTO takes one value: yes or no".into())),
                };
            }
            "PROGRAM" => {
                if c.program.is_some() {
                    return Err(err("PROGRAM given twice".into()));
                }
                let p = match rest.as_slice() {
                    [p] => PathBuf::from(p),
                    _ => return Err(err("PROGRAM takes one absolute path".into())),
                };
                if !p.is_absolute() {
                    return Err(err(format!(
                        "PROGRAM must be an absolute path, not '{}'",
                        p.display()
                    )));
                }
                c.program = Some(p);
            }
            other => {
                return Err(err(format!(
                    "unknown keyword '{other}' (ARRAY, AUTO or PROGRAM)"
                )))
            }
        }
    }
    // Two lines for one array, or two arrays on one md device, cannot
    // both be obeyed.
    for (i, a) in c.arrays.iter().enumerate() {
        for b in &c.arrays[..i] {
            let clash = if a.id == b.id {
                Some("the same array is listed twice".to_string())
            } else if a.md.is_some() && a.md == b.md {
                Some(format!(
                    "md device {} is given to two arrays",
                    a.md.as_deref().unwrap_or_default()
                ))
            } else {
                None
            };
            if let Some(why) = clash {
                let line = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| {
                        l.split('#')
                            .next()
                            .and_then(|l| l.split_whitespace().next())
                            .is_some_and(|k| k.eq_ignore_ascii_case("ARRAY"))
                    })
                    .nth(i)
                    .map_or(0, |(n, _)| n + 1);
                return Err(ConfigError::Line {
                    file: file.to_string(),
                    line,
                    why,
                });
            }
        }
    }
    Ok(c)
}

fn parse_array(words: &[&str]) -> Result<ArrayLine, String> {
    let mut id = None;
    let mut md = None;
    let mut auto = None;
    let mut spare_group = None;
    for w in words {
        let set_id = |id: &mut Option<ArrayId>, v: ArrayId| {
            if id.is_some() {
                return Err("an ARRAY line names one array (a name or uuid=)".to_string());
            }
            *id = Some(v);
            Ok(())
        };
        match w.split_once('=') {
            Some((k, v)) => match k.to_ascii_lowercase().as_str() {
                "uuid" => {
                    let u = Uuid::parse_str(v).map_err(|_| format!("'{v}' is not a UUID"))?;
                    set_id(&mut id, ArrayId::Uuid(u))?;
                }
                "name" => set_id(&mut id, ArrayId::Name(check_name(v)?))?,
                "md" => {
                    let m = v.strip_prefix("/dev/").unwrap_or(v);
                    if !valid_md(m) {
                        return Err(format!(
                            "md={v}: an md device is md and digits (md127) or md_ and a name"
                        ));
                    }
                    if md.replace(m.to_string()).is_some() {
                        return Err("md= given twice".into());
                    }
                }
                "auto" => {
                    let a = yes_no(v).ok_or_else(|| format!("auto takes yes or no, not '{v}'"))?;
                    if auto.replace(a).is_some() {
                        return Err("auto= given twice".into());
                    }
                }
                "spare-group" => {
                    let g = check_name(v).map_err(|_| {
                        format!("spare-group={v}: a group name is 1-32 of A-Z a-z 0-9 . _ : -")
                    })?;
                    if spare_group.replace(g).is_some() {
                        return Err("spare-group= given twice".into());
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown ARRAY setting '{k}=' (uuid, name, md, auto, spare-group)"
                    ))
                }
            },
            None => set_id(&mut id, ArrayId::Name(check_name(w)?))?,
        }
    }
    let id = id.ok_or("ARRAY needs the array's name or uuid=")?;
    Ok(ArrayLine {
        id,
        md,
        auto,
        spare_group,
    })
}

fn check_name(n: &str) -> Result<String, String> {
    let ok = !n.is_empty()
        && n.len() <= crate::meta::MAX_NAME_LEN
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
    if ok {
        Ok(n.to_string())
    } else {
        Err(format!(
            "'{n}' is not an array name (1-32 of A-Z a-z 0-9 . _ : -)"
        ))
    }
}

/// Read a file without updating its access time where the caller may
/// (its owner, or CAP_FOWNER): mdextmon re-reads the file on SIGHUP, and
/// an access-time update on a root filesystem held by an array the daemon
/// serves would wait on the daemon itself.
fn read_noatime(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
    };
    let mut f = match open(nix::libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => open(0)?,
        r => r?,
    };
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

impl Config {
    /// Read `path`. A missing file gives the defaults; any other problem
    /// is an error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match read_noatime(path) {
            Ok(t) => parse(&path.display().to_string(), &t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(ConfigError::Read {
                file: path.display().to_string(),
                why: e.to_string(),
            }),
        }
    }

    /// The `ARRAY` line for the array with this name and UUID (a UUID
    /// line wins over a name line).
    pub fn array(&self, name: &str, uuid: &Uuid) -> Option<&ArrayLine> {
        self.arrays
            .iter()
            .find(|a| a.id == ArrayId::Uuid(*uuid))
            .or_else(|| {
                self.arrays
                    .iter()
                    .find(|a| matches!(&a.id, ArrayId::Name(n) if n == name))
            })
    }

    /// The md device the configuration gives this array, if any.
    pub fn md_device(&self, name: &str, uuid: &Uuid) -> Option<&str> {
        self.array(name, uuid).and_then(|a| a.md.as_deref())
    }

    /// The spare group the configuration puts this array in, if any.
    pub fn spare_group(&self, name: &str, uuid: &Uuid) -> Option<&str> {
        self.array(name, uuid)
            .and_then(|a| a.spare_group.as_deref())
    }

    /// Whether this array may be assembled automatically (`--scan`,
    /// incremental): its own `auto=`, else `AUTO`.
    pub fn auto_assemble(&self, name: &str, uuid: &Uuid) -> bool {
        self.array(name, uuid)
            .and_then(|a| a.auto)
            .unwrap_or(self.auto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "5d0c3f8e-2b1a-4c5d-9e8f-0a1b2c3d4e5f";

    fn p(t: &str) -> Result<Config, ConfigError> {
        parse("/etc/mdext.conf", t)
    }

    fn line_err(t: &str) -> (usize, String) {
        match p(t) {
            Err(ConfigError::Line { line, why, .. }) => (line, why),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_comments_are_defaults() {
        assert_eq!(p("").expect("empty"), Config::default());
        assert_eq!(
            p("# nothing\n   \n\t# more\n").expect("comments"),
            Config::default()
        );
        assert!(Config::default().auto);
    }

    #[test]
    fn a_full_file() {
        let c = p(&format!(
            "# mdext\nauto no\nARRAY root md=md127   # the root\n\
             array uuid={U} md=/dev/md126 auto=yes\nPROGRAM /usr/sbin/ev\n\
             ARRAY name=data\n"
        ))
        .expect("parse");
        assert!(!c.auto);
        assert_eq!(c.program, Some(PathBuf::from("/usr/sbin/ev")));
        assert_eq!(
            c.arrays[0],
            ArrayLine {
                id: ArrayId::Name("root".into()),
                md: Some("md127".into()),
                auto: None,
                spare_group: None,
            }
        );
        let u = Uuid::parse_str(U).expect("uuid");
        assert_eq!(c.arrays[1].id, ArrayId::Uuid(u));
        assert_eq!(c.arrays[1].md.as_deref(), Some("md126"));
        assert_eq!(c.md_device("root", &Uuid::nil()), Some("md127"));
        // The UUID line wins whatever the name.
        assert_eq!(c.md_device("root", &u), Some("md126"));
        assert_eq!(c.md_device("other", &Uuid::nil()), None);
        assert!(!c.auto_assemble("root", &Uuid::nil()));
        assert!(c.auto_assemble("x", &u));
        assert!(!c.auto_assemble("data", &Uuid::nil()));
        assert!(!c.auto_assemble("unlisted", &Uuid::nil()));
    }

    #[test]
    fn spare_groups() {
        let c =
            p("ARRAY a spare-group=g1\nARRAY b spare-group=g1 md=md5\nARRAY c\n").expect("parse");
        assert_eq!(c.spare_group("a", &Uuid::nil()), Some("g1"));
        assert_eq!(c.spare_group("b", &Uuid::nil()), Some("g1"));
        assert_eq!(c.spare_group("c", &Uuid::nil()), None);
        assert_eq!(c.spare_group("d", &Uuid::nil()), None);
        let e = p("ARRAY a spare-group=x/y\n").expect_err("bad name");
        assert!(e.to_string().contains("spare-group=x/y"), "{e}");
        let e = p("ARRAY a spare-group=g spare-group=h\n").expect_err("twice");
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn md_names_md_accepts() {
        for ok in ["md0", "md127", "/dev/md5", "md_root", "md_a-b_c"] {
            assert!(p(&format!("ARRAY x md={ok}")).is_ok(), "{ok}");
        }
        for bad in ["md", "sda", "md12a", "/dev/md/root", "md_", "md_a/b", "mdX"] {
            let (l, why) = line_err(&format!("\nARRAY x md={bad}"));
            assert_eq!(l, 2, "{bad}");
            assert!(why.contains("md device"), "{bad}: {why}");
        }
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let e = p("AUTO yes\nMAILADDR root\n").expect_err("unknown keyword");
        assert_eq!(
            e.to_string(),
            "/etc/mdext.conf:2: unknown keyword 'MAILADDR' (ARRAY, AUTO or PROGRAM)"
        );
        assert_eq!(line_err("AUTO maybe").0, 1);
        assert_eq!(line_err("AUTO").0, 1);
        assert_eq!(line_err("AUTO yes\nAUTO no").0, 2);
        assert!(line_err("PROGRAM ev.sh").1.contains("absolute"));
        assert_eq!(line_err("PROGRAM /a\nPROGRAM /b").0, 2);
        assert_eq!(line_err("PROGRAM /a b").0, 1);
        assert!(line_err("ARRAY md=md1").1.contains("name or uuid"));
        assert!(line_err("ARRAY a b").1.contains("one array"));
        assert!(line_err("ARRAY uuid=nope").1.contains("not a UUID"));
        assert!(line_err("ARRAY a colour=red").1.contains("colour"));
        assert!(line_err("ARRAY a auto=perhaps").1.contains("auto"));
        assert!(line_err("ARRAY a md=md1 md=md2").1.contains("twice"));
        assert!(line_err("ARRAY a/b").1.contains("not an array name"));
        assert!(line_err(&format!("ARRAY {}", "n".repeat(33)))
            .1
            .contains("not an array name"));
    }

    #[test]
    fn clashes_are_refused_at_the_later_line() {
        assert_eq!(
            line_err("ARRAY a md=md1\n# x\nARRAY b md=md1"),
            (3, "md device md1 is given to two arrays".into())
        );
        assert_eq!(
            line_err("ARRAY a\nARRAY name=a md=md2"),
            (2, "the same array is listed twice".into())
        );
    }

    #[test]
    fn load_missing_file_is_defaults() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("mdext.conf");
        assert_eq!(Config::load(&f).expect("missing"), Config::default());
        std::fs::write(&f, "PROGRAM /bin/true\n").expect("write");
        assert_eq!(
            Config::load(&f).expect("load").program,
            Some(PathBuf::from("/bin/true"))
        );
        std::fs::write(&f, "PROGRAM\n").expect("write");
        let e = Config::load(&f).expect_err("bad");
        assert!(e.to_string().starts_with(&format!("{}:1: ", f.display())));
        // A directory is not a file: an error, not the defaults.
        assert!(matches!(
            Config::load(d.path()),
            Err(ConfigError::Read { .. })
        ));
    }
}
