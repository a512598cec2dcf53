//! The man pages and the bash completion must keep up with the CLI.
//!
//! - every page in `man/` is clean under `mandoc -Tlint -W warning`
//!   (mandoc is required: `scripts/deps` installs it, so a missing mandoc is
//!   a failure, not a skip);
//! - every subcommand `mdextctl --help` lists has its own `.SS` section in
//!   `man/mdextctl.8`, every long option of `mdextctl SUB --help` appears in
//!   that section, and no section documents a subcommand the CLI lacks;
//! - every long option of `mdextmon --help` appears in `man/mdextmon.8`;
//! - `contrib/completions/mdextctl.bash` names every subcommand and option.

use std::path::{Path, PathBuf};
use std::process::Command;

const MDEXTCTL: &str = env!("CARGO_BIN_EXE_mdextctl");
const MDEXTMON: &str = env!("CARGO_BIN_EXE_mdextmon");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn help(bin: &str, args: &[&str]) -> String {
    let o = Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    assert!(o.status.success(), "{bin} {args:?} --help failed: {o:?}");
    String::from_utf8(o.stdout).expect("utf-8 help")
}

/// Subcommands from the `Commands:` block of clap's help, without `help`.
fn subcommands() -> Vec<String> {
    let h = help(MDEXTCTL, &[]);
    let v: Vec<String> = h
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(
        v.len() >= 6,
        "could not parse the subcommands of mdextctl --help:\n{h}"
    );
    v
}

/// Long options (`--name`) on the option lines of clap's help, without
/// `--help` and `--version`.
fn long_options(h: &str) -> Vec<String> {
    let mut v = Vec::new();
    for l in h.lines() {
        // Option lines are indented by two spaces (`  -l, --level`) or six
        // (`      --json`, no short form); descriptions by ten or more.
        let rest = l.trim_start();
        let indent = l.len() - rest.len();
        if !(indent == 2 || indent == 6) || !rest.starts_with('-') {
            continue;
        }
        for tok in rest.split([' ', ',']) {
            if let Some(name) = tok.strip_prefix("--") {
                if !name.is_empty() && name != "help" && name != "version" {
                    v.push(format!("--{name}"));
                }
            }
        }
    }
    v
}

/// The roff source between `.SS name` and the next `.SS` or `.SH`.
fn subsection<'a>(page: &'a str, name: &str) -> Option<&'a str> {
    let head = format!(".SS {name}\n");
    let start = page.find(&head)? + head.len();
    let rest = &page[start..];
    let end = rest
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| rest[i..].starts_with(".SS ") || rest[i..].starts_with(".SH "))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// A section (`.SH NAME`) up to the next `.SH`.
fn section<'a>(page: &'a str, name: &str) -> &'a str {
    let head = format!(".SH {name}\n");
    let start = page
        .find(&head)
        .unwrap_or_else(|| panic!("no {head:?} in the page"))
        + head.len();
    let rest = &page[start..];
    let end = rest.find("\n.SH ").map(|i| i + 1).unwrap_or(rest.len());
    &rest[..end]
}

/// Whether roff `text` mentions the option `--opt` as a whole word
/// (`\-\-md` does not count as a mention of `\-\-md` inside `\-\-mdx`).
fn mentions(text: &str, opt: &str) -> bool {
    let roff = opt.replace('-', "\\-");
    text.match_indices(&roff).any(|(i, _)| {
        let after = &text[i + roff.len()..];
        !(after.starts_with("\\-") || after.starts_with(|c: char| c.is_ascii_alphanumeric()))
    })
}

#[test]
fn every_man_page_is_mandoc_lint_clean() {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("man"))
        .expect("man/")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.len() == 1 && e.as_bytes()[0].is_ascii_digit())
        })
        .collect();
    pages.sort();
    for want in ["mdext.5", "mdextctl.8", "mdextmon.8"] {
        assert!(
            pages.iter().any(|p| p.ends_with(want)),
            "man/{want} is missing (found {pages:?})"
        );
    }
    for p in &pages {
        let o = Command::new("mandoc")
            .args(["-Tlint", "-W", "warning"])
            .arg(p)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run mandoc ({e}); it is required for this test: \
                     scripts/deps installs it (apt-get install mandoc)"
                )
            });
        assert!(
            o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
            "mandoc -Tlint -W warning {} failed ({}):\n{}{}",
            p.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn mdextctl_page_documents_every_subcommand_and_option() {
    let page = read("man/mdextctl.8");
    let subs = subcommands();
    let mut problems = Vec::new();
    for s in &subs {
        let Some(text) = subsection(&page, s) else {
            problems.push(format!("no `.SS {s}` section"));
            continue;
        };
        for opt in long_options(&help(MDEXTCTL, &[s])) {
            if !mentions(text, &opt) {
                problems.push(format!("section {s} does not mention {opt}"));
            }
        }
    }
    // Nothing documented that the CLI does not have (planned subcommands
    // stay out of the page until they exist).
    for l in section(&page, "COMMANDS").lines() {
        if let Some(name) = l.strip_prefix(".SS ") {
            if !subs.iter().any(|s| s == name) {
                problems.push(format!(
                    "section `.SS {name}` documents a subcommand mdextctl does not have"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "man/mdextctl.8 is behind the CLI:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn mdextmon_page_documents_every_option() {
    let page = read("man/mdextmon.8");
    let opts = section(&page, "OPTIONS");
    let missing: Vec<String> = long_options(&help(MDEXTMON, &[]))
        .into_iter()
        .filter(|o| !mentions(opts, o))
        .collect();
    assert!(
        missing.is_empty(),
        "man/mdextmon.8 OPTIONS does not mention {missing:?}"
    );
}

#[test]
fn bash_completion_covers_every_subcommand_and_option() {
    let script = read("contrib/completions/mdextctl.bash");
    let words: Vec<&str> = script
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .collect();
    let mut missing = Vec::new();
    for s in subcommands() {
        if !words.contains(&s.as_str()) {
            missing.push(s.clone());
        }
        for opt in long_options(&help(MDEXTCTL, &[&s])) {
            if !words.contains(&opt.as_str()) {
                missing.push(format!("{s} {opt}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "contrib/completions/mdextctl.bash lacks {missing:?}"
    );
}

#[test]
fn help_parsing_finds_known_options() {
    // Guards the parser above: if clap's help layout changes so that no
    // option is found, the coverage tests would pass vacuously.
    let create = long_options(&help(MDEXTCTL, &["create"]));
    for o in [
        "--level",
        "--raid-devices",
        "--bitmap-chunk",
        "--assume-clean",
        "--force",
    ] {
        assert!(create.iter().any(|x| x == o), "{o} not in {create:?}");
    }
    let mon = long_options(&help(MDEXTMON, &[]));
    assert!(mon.iter().any(|x| x == "--run-dir"), "{mon:?}");
    assert!(subcommands().iter().any(|s| s == "assemble"));
    assert!(mentions("x \\-\\-md y", "--md"));
    assert!(!mentions("x \\-\\-mdx y", "--md"));
    assert!(!mentions("x \\-\\-md\\-dev y", "--md"));
}
