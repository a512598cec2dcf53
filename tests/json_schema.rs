//! Every key that `detail`, `status`, `examine` and `examine-bitmap` print
//! with `--json` is documented in mdextctl(8), JSON OUTPUT, and no value is
//! a number spelled as a string.

use mdext::md::{ArrayState, SyncAction, SyncCompleted};
use mdext::status::{ArrayStatus, KernelState};
use mdext::units::Sectors;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const MDEXTCTL: &str = env!("CARGO_BIN_EXE_mdextctl");

fn json_section() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/mdextctl.8");
    let page = std::fs::read_to_string(&p).expect("man/mdextctl.8");
    let start = page.find(".SH JSON OUTPUT").expect("a JSON OUTPUT section");
    let rest = &page[start + 1..];
    let end = rest.find("\n.SH ").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// Every object key in `v`, with its path (for the message).
fn keys(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push((k.clone(), format!("{path}.{k}")));
                keys(x, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for x in a {
                keys(x, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// A string value that is a number in disguise.
fn numeric_strings(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::String(s) if !s.is_empty() && s.parse::<f64>().is_ok() => {
            out.push(format!("{path} = {s:?}"))
        }
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| numeric_strings(x, &format!("{path}.{k}"), out)),
        Value::Array(a) => a.iter().for_each(|x| numeric_strings(x, path, out)),
        _ => {}
    }
}

fn documented(word: &str, section: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    section.match_indices(word).any(|(i, _)| {
        let before = section[..i].chars().next_back().is_none_or(|c| !ident(c));
        let after = section[i + word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !ident(c));
        before && after
    })
}

fn check(what: &str, v: &Value) {
    let section = json_section();
    let mut k = Vec::new();
    keys(v, what, &mut k);
    assert!(!k.is_empty(), "{what}: no keys in {v}");
    let missing: Vec<&String> = k
        .iter()
        .filter(|(key, _)| !documented(key, &section))
        .map(|(_, path)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "not documented in mdextctl(8) JSON OUTPUT: {missing:?}"
    );
    let mut bad = Vec::new();
    numeric_strings(v, what, &mut bad);
    assert!(bad.is_empty(), "numbers printed as strings: {bad:?}");
}

fn image(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .expect("create")
        .set_len(64 << 20)
        .expect("set_len");
    p.to_str().expect("utf-8").to_string()
}

fn mdextctl(args: &[&str]) -> Value {
    let o = Command::new(MDEXTCTL)
        .args(args)
        .output()
        .expect("mdextctl");
    assert!(o.status.success(), "mdextctl {args:?}: {o:?}");
    serde_json::from_slice(&o.stdout).expect("JSON")
}

#[test]
fn every_json_key_is_documented() {
    let d = tempfile::tempdir().expect("tmp");
    let (a, b) = (image(d.path(), "a.img"), image(d.path(), "b.img"));
    let o = Command::new(MDEXTCTL)
        .args([
            "create",
            "-l",
            "1",
            "-n",
            "2",
            "--bitmap-chunk",
            "1M",
            &a,
            &b,
        ])
        .output()
        .expect("create");
    assert!(o.status.success(), "{o:?}");
    check("examine", &mdextctl(&["examine", "--json", &a, &b]));
    check(
        "examine-bitmap",
        &mdextctl(&["examine-bitmap", "--json", &a]),
    );
    // detail and status print ArrayStatus; every optional value set, so
    // that every key (nested ones too) shows.
    let meta = mdext::device::read_superblock(Path::new(&a))
        .expect("read")
        .superblock
        .array;
    let mut s = ArrayStatus::new(
        "md127",
        &meta,
        &[(0, "loop0")],
        &KernelState {
            array_state: Some(ArrayState::Active),
            degraded: Some(0),
            sync_action: Some(SyncAction::Resync),
            sync_completed: Some(SyncCompleted::Progress {
                done: Sectors(8),
                total: Sectors(16),
            }),
            can_clear: Some(false),
        },
    );
    s.managed = true;
    s.mdextmon_pid = Some(1);
    check("detail", &serde_json::to_value(&s).expect("ser"));
}
