//! Where the source tree and the binaries are, found at run time.
//!
//! Not `env!("CARGO_MANIFEST_DIR")` and `env!("CARGO_BIN_EXE_...")`: those
//! are the paths of the tree that *compiled* this binary. A copy of the tree
//! whose `target/` came along runs the same binary (cargo finds nothing to
//! rebuild), which then wrote its console logs into the original tree's
//! `target/guest-logs` and booted the original's scripts and binaries.
//!
//! Also compiled into the host test `tests/guest_paths.rs` (the guest
//! binary has its own `main`, so `#[test]` functions here would never run).

use std::path::{Path, PathBuf};

/// The source tree and the binaries under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The tree: holds `Cargo.toml` and `scripts/guest`.
    pub root: PathBuf,
    pub mdextctl: PathBuf,
    pub mdextmon: PathBuf,
}

/// What the resolution looks at (the process's, or a test's).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `CARGO_MANIFEST_DIR` at run time: cargo sets it for the tree it runs
    /// in.
    pub manifest_dir: Option<PathBuf>,
    /// The working directory: cargo runs tests from the package root.
    pub cwd: Option<PathBuf>,
    /// This executable (`target/debug/deps/guest-HASH`).
    pub exe: Option<PathBuf>,
    /// `CARGO_BIN_EXE_mdextctl` and `..._mdextmon` at run time.
    pub bin_mdextctl: Option<PathBuf>,
    pub bin_mdextmon: Option<PathBuf>,
}

impl Env {
    /// This process's.
    pub fn current() -> Env {
        Env {
            manifest_dir: std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
            cwd: std::env::current_dir().ok(),
            exe: std::env::current_exe().ok(),
            bin_mdextctl: std::env::var_os("CARGO_BIN_EXE_mdextctl").map(PathBuf::from),
            bin_mdextmon: std::env::var_os("CARGO_BIN_EXE_mdextmon").map(PathBuf::from),
        }
    }
}

fn is_tree(d: &Path) -> bool {
    d.join("Cargo.toml").is_file() && d.join("scripts/guest").is_file()
}

/// The tree: `CARGO_MANIFEST_DIR`, else the working directory, else the
/// nearest ancestor of the executable, whichever first holds `Cargo.toml`
/// and `scripts/guest`.
fn find_root(e: &Env) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    let from_exe = e
        .exe
        .iter()
        .flat_map(|x| x.ancestors().skip(1))
        .map(Path::to_path_buf);
    for d in e
        .manifest_dir
        .iter()
        .chain(e.cwd.iter())
        .cloned()
        .chain(from_exe)
    {
        if is_tree(&d) {
            return Ok(d);
        }
        tried.push(d.display().to_string());
    }
    Err(format!(
        "cannot find the mdext source tree (a directory holding Cargo.toml and scripts/guest) \
         in CARGO_MANIFEST_DIR, the working directory or above the executable (tried {}); \
         run `cargo test --test guest` in the tree",
        if tried.is_empty() {
            "nothing".to_string()
        } else {
            tried.join(", ")
        }
    ))
}

/// A binary built with this one: next to `deps/` (cargo puts test
/// executables in `target/<profile>/deps/` and binaries in
/// `target/<profile>/`), else where cargo's run-time `CARGO_BIN_EXE_<name>`
/// says.
fn find_bin(e: &Env, name: &str, from_cargo: Option<&PathBuf>) -> Result<PathBuf, String> {
    let beside = e.exe.as_ref().and_then(|x| x.parent()).map(|d| {
        if d.file_name().is_some_and(|n| n == "deps") {
            d.parent().unwrap_or(d).join(name)
        } else {
            d.join(name)
        }
    });
    let mut tried = Vec::new();
    for p in beside.iter().chain(from_cargo) {
        if p.is_file() {
            return Ok(p.clone());
        }
        tried.push(p.display().to_string());
    }
    Err(format!(
        "cannot find the {name} binary built with this test (tried {}); \
         run `cargo test --test guest`, which builds it",
        if tried.is_empty() {
            "nothing".to_string()
        } else {
            tried.join(", ")
        }
    ))
}

impl Paths {
    /// Resolve from `e`.
    pub fn resolve(e: &Env) -> Result<Paths, String> {
        Ok(Paths {
            root: find_root(e)?,
            mdextctl: find_bin(e, "mdextctl", e.bin_mdextctl.as_ref())?,
            mdextmon: find_bin(e, "mdextmon", e.bin_mdextmon.as_ref())?,
        })
    }
}
