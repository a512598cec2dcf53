//! Shell completions: the scripts in `contrib/completions/` are what
//! `mdextctl completions SHELL` generates from the clap definition (so they
//! cannot drift from the CLI), and they complete what a user expects in
//! bash and fish, and parse in zsh. bash, zsh and fish are required
//! (`scripts/deps` installs them): a missing shell is a failure, not a skip.

use std::path::PathBuf;
use std::process::Command;

const MDEXTCTL: &str = env!("CARGO_BIN_EXE_mdextctl");

/// The source tree, found at run time (cargo runs tests from the package
/// root and sets CARGO_MANIFEST_DIR in their environment).
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .expect("the source tree")
}

const SCRIPTS: [(&str, &str); 3] = [
    ("bash", "contrib/completions/mdextctl.bash"),
    ("zsh", "contrib/completions/_mdextctl"),
    ("fish", "contrib/completions/mdextctl.fish"),
];

fn generated(shell: &str) -> String {
    let o = Command::new(MDEXTCTL)
        .args(["completions", shell])
        .output()
        .expect("run mdextctl completions");
    assert!(
        o.status.success(),
        "mdextctl completions {shell}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("utf-8 script")
}

#[test]
fn checked_in_scripts_are_what_mdextctl_generates() {
    let mut stale = Vec::new();
    for (shell, rel) in SCRIPTS {
        let path = root().join(rel);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != generated(shell) {
            stale.push(format!(
                "{rel} (regenerate: cargo run -q --bin mdextctl -- completions {shell} > {rel})"
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "completion scripts differ from the CLI:\n  {}",
        stale.join("\n  ")
    );
}

fn run_shell(shell: &str, args: &[&str]) -> String {
    let o = Command::new(shell).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {shell} ({e}); scripts/deps installs it (apt-get install {shell})")
    });
    assert!(
        o.status.success(),
        "{shell} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Candidates bash offers for `line` (completing its last word), with the
/// running arrays stubbed as md127 and md126.
fn bash_complete(line: &str) -> Vec<String> {
    let script = root().join(SCRIPTS[0].1);
    let prog = r#"
source "$1" || exit 1
_mdextctl_arrays() { printf '%s\n' md127 md126; }
read -ra COMP_WORDS <<< "$2"
[[ $2 == *' ' ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE=$2
COMP_POINT=${#2}
cur=${COMP_WORDS[COMP_CWORD]}
prev=${COMP_WORDS[COMP_CWORD-1]}
_mdextctl_with_arrays mdextctl "$cur" "$prev"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let script = script.to_str().expect("utf-8 path");
    run_shell("bash", &["-c", prog, "bash", script, line])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Candidates fish offers for `line`, arrays stubbed likewise.
fn fish_complete(line: &str) -> Vec<String> {
    let script = root().join(SCRIPTS[2].1);
    let prog = format!(
        "source {}; function __mdextctl_arrays; printf '%s\\n' md127 md126; end; \
         complete -C {}",
        shell_quote(script.to_str().expect("utf-8 path")),
        shell_quote(line)
    );
    run_shell("fish", &["--no-config", "-c", &prog])
        .lines()
        // "candidate<TAB>description"
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn has(v: &[String], want: &[&str]) -> bool {
    want.iter().all(|w| v.iter().any(|c| c == w))
}

#[test]
fn bash_completes_subcommands_options_and_arrays() {
    let c = bash_complete("mdextctl ");
    assert!(
        has(&c, &["create", "assemble", "stop", "examine-bitmap"]),
        "{c:?}"
    );
    assert!(!c.iter().any(|w| w == "completions"), "hidden: {c:?}");
    let c = bash_complete("mdextctl sto");
    assert_eq!(c, ["stop"]);
    // The array operand: the running mdext arrays.
    for line in [
        "mdextctl stop ",
        "mdextctl detail --json ",
        "mdextctl fail ",
        "mdextctl add --run-dir /tmp/x ",
    ] {
        assert_eq!(bash_complete(line), ["md127", "md126"], "{line:?}");
    }
    assert_eq!(bash_complete("mdextctl stop md12"), ["md127", "md126"]);
    // The device after the array is not an array (files, by -o default).
    assert!(!bash_complete("mdextctl fail md127 ").contains(&"md127".to_string()));
    assert!(bash_complete("mdextctl create ")
        .iter()
        .all(|w| !w.starts_with("md12")));
    let c = bash_complete("mdextctl create --level ");
    assert!(has(&c, &["1", "10", "5", "6"]), "{c:?}");
    let c = bash_complete("mdextctl assemble --");
    assert!(
        has(&c, &["--scan", "--run", "--readonly", "--md", "--json"]),
        "{c:?}"
    );
    assert!(!c.iter().any(|w| w == "--run-dir"), "hidden: {c:?}");
}

#[test]
fn fish_completes_subcommands_options_and_arrays() {
    let c = fish_complete("mdextctl ");
    assert!(
        has(&c, &["create", "assemble", "stop", "examine-bitmap"]),
        "{c:?}"
    );
    assert!(!c.iter().any(|w| w == "completions"), "hidden: {c:?}");
    for line in [
        "mdextctl stop ",
        "mdextctl detail --json ",
        "mdextctl remove ",
        "mdextctl add --run-dir /tmp/x ",
    ] {
        // fish sorts the candidates.
        assert_eq!(fish_complete(line), ["md126", "md127"], "{line:?}");
    }
    assert!(!fish_complete("mdextctl fail md127 ").contains(&"md127".to_string()));
    let c = fish_complete("mdextctl examine --");
    assert!(has(&c, &["--json", "--export"]), "{c:?}");
}

#[test]
fn zsh_script_parses_and_completes_arrays_with_the_hook() {
    let script = root().join(SCRIPTS[1].1);
    let text = std::fs::read_to_string(&script).expect("read the zsh script");
    assert!(text.starts_with("#compdef mdextctl\n"));
    for sub in ["stop", "detail", "fail", "remove", "add"] {
        let case = text
            .split(&format!("\n({sub})\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no ({sub}) case"));
        let case = case.split("\n;;").next().unwrap_or("");
        assert!(case.contains(":_mdextctl_arrays' \\"), "{sub}: {case}");
    }
    run_shell("zsh", &["-n", script.to_str().expect("utf-8 path")]);
    // Defined and callable: outside completion, compadd fails, but the
    // function must exist after the script is sourced the way compinit
    // autoloads it.
    let out = run_shell(
        "zsh",
        &[
            "-fc",
            "source \"$1\" 2>/dev/null; (( $+functions[_mdextctl_arrays] )) && echo defined",
            "zsh",
            script.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(out, "defined\n");
}
