//! The guest harness finds the source tree and the binaries at run time
//! (tests/guest/paths.rs, compiled here because the guest binary has its own
//! main and runs no #[test]): a copy of the tree, target/ included, uses its
//! own files, not those of the tree that compiled it.

#[path = "guest/paths.rs"]
#[allow(dead_code)]
mod paths;

use paths::{Env, Paths};
use std::path::{Path, PathBuf};

/// A fake tree with a built guest test binary and the two binaries.
fn tree(at: &Path) -> PathBuf {
    std::fs::create_dir_all(at.join("scripts")).expect("mkdir");
    std::fs::create_dir_all(at.join("target/debug/deps")).expect("mkdir");
    for f in [
        "Cargo.toml",
        "scripts/guest",
        "target/debug/mdextctl",
        "target/debug/mdextmon",
        "target/debug/deps/guest-0123",
    ] {
        std::fs::write(at.join(f), "").expect("write");
    }
    at.to_path_buf()
}

fn expect(root: &Path) -> Paths {
    Paths {
        root: root.to_path_buf(),
        mdextctl: root.join("target/debug/mdextctl"),
        mdextmon: root.join("target/debug/mdextmon"),
    }
}

#[test]
fn a_copied_tree_uses_its_own_files() {
    let d = tempfile::tempdir().expect("tempdir");
    let original = tree(&d.path().join("original"));
    let copy = tree(&d.path().join("copy"));
    // cargo test --test guest in the copy: what cargo sets at run time
    // points into the copy, whatever was baked in at compile time.
    let e = Env {
        manifest_dir: Some(copy.clone()),
        cwd: Some(copy.clone()),
        exe: Some(copy.join("target/debug/deps/guest-0123")),
        bin_mdextctl: Some(copy.join("target/debug/mdextctl")),
        bin_mdextmon: Some(copy.join("target/debug/mdextmon")),
    };
    assert_eq!(Paths::resolve(&e), Ok(expect(&copy)));
    // The binaries come from beside the running executable even if the
    // environment names another tree's.
    let e = Env {
        bin_mdextctl: Some(original.join("target/debug/mdextctl")),
        bin_mdextmon: Some(original.join("target/debug/mdextmon")),
        ..e
    };
    assert_eq!(Paths::resolve(&e), Ok(expect(&copy)));
}

#[test]
fn without_cargo_the_tree_is_found_from_the_working_directory_or_the_executable() {
    let d = tempfile::tempdir().expect("tempdir");
    let t = tree(&d.path().join("t"));
    let exe = Some(t.join("target/debug/deps/guest-0123"));
    let e = Env {
        cwd: Some(t.clone()),
        exe: exe.clone(),
        ..Env::default()
    };
    assert_eq!(Paths::resolve(&e), Ok(expect(&t)));
    // Run from elsewhere: the executable's ancestors.
    let e = Env {
        cwd: Some(d.path().to_path_buf()),
        exe,
        ..Env::default()
    };
    assert_eq!(Paths::resolve(&e), Ok(expect(&t)));
    // A CARGO_MANIFEST_DIR that is not a tree (no scripts/guest) is passed over.
    let e = Env {
        manifest_dir: Some(t.join("target")),
        ..e
    };
    assert_eq!(Paths::resolve(&e), Ok(expect(&t)));
}

#[test]
fn nothing_found_is_one_line_naming_what_was_tried() {
    let d = tempfile::tempdir().expect("tempdir");
    let e = Env {
        cwd: Some(d.path().to_path_buf()),
        ..Env::default()
    };
    let err = Paths::resolve(&e).expect_err("no tree");
    assert!(!err.contains('\n'), "{err}");
    assert!(err.contains(&d.path().display().to_string()), "{err}");
    // A tree, but the binaries were not built.
    let t = tree(&d.path().join("t"));
    std::fs::remove_file(t.join("target/debug/mdextmon")).expect("rm");
    let e = Env {
        cwd: Some(t.clone()),
        exe: Some(t.join("target/debug/deps/guest-0123")),
        ..Env::default()
    };
    let err = Paths::resolve(&e).expect_err("no mdextmon");
    assert!(err.starts_with("cannot find the mdextmon binary"), "{err}");
}

#[test]
fn under_cargo_test_this_tree_is_found() {
    let p = Paths::resolve(&Env::current()).expect("resolve");
    let here = std::env::current_dir().expect("cwd");
    assert_eq!(p.root, here);
    assert!(p.mdextctl.is_file() && p.mdextmon.is_file(), "{p:?}");
}
