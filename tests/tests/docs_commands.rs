//! Every `credbroker …` command shown in a fenced block of any Markdown file of the repository
//! (README.md, runbooks/, the templates' READMEs, tests/bench-history.md) exists and parses
//! with the flags it is shown with. A runbook command that does not exist is a bug.

use std::path::Path;

use credbroker_tests::{files_with_extension, repo_root};

/// Splits a shell line into words (single/double quotes, backslash line continuations
/// already joined); stops at a pipe, redirect, `&&`, `;` or comment.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut has = false;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    has = true;
                }
                ' ' | '\t' => {
                    if has || !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                        has = false;
                    }
                }
                '|' | '>' | '<' | ';' | '&' | '#' => break,
                c => cur.push(c),
            },
        }
    }
    if has || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn commands_in(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut in_code = false;
    let mut pending = String::new();
    let mut start = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let line = line.trim();
        let line = line.strip_prefix("$ ").unwrap_or(line);
        if pending.is_empty() {
            start = n + 1;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        // `cargo run -p credbroker -- ARGS` runs the same CLI.
        let cmd = full
            .strip_prefix("cargo run -p credbroker -- ")
            .map(|rest| format!("credbroker {rest}"))
            .unwrap_or(full);
        if cmd.starts_with("credbroker ") {
            out.push((start, cmd));
        }
    }
    out
}

#[test]
fn documented_commands_parse() {
    let root = repo_root();
    let files = files_with_extension(&root, "md");
    assert!(files.contains(&root.join("README.md")), "{files:?}");
    assert!(
        files.contains(&root.join("runbooks/kek-rotation.md")),
        "{files:?}"
    );
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &files {
        for (line, cmd) in commands_in(file) {
            let args = words(&cmd);
            if let Err(e) = credbroker::cli::check_args(&args[1..]) {
                failures.push(format!("{}:{line}: `{cmd}`\n{e}", file.display()));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "documented commands that do not parse:\n{}",
        failures.join("\n")
    );
    assert!(checked >= 15, "only {checked} documented commands found");
}

#[test]
fn the_checker_rejects_commands_that_do_not_exist() {
    assert!(credbroker::cli::check_args(["tenant", "list"]).is_ok());
    assert!(credbroker::cli::check_args(["tenant", "frobnicate"]).is_err());
    assert!(credbroker::cli::check_args(["keys", "rotate-kek", "--nope"]).is_err());
    assert_eq!(
        words("credbroker secret set b1 --from-stdin < fields.json"),
        vec!["credbroker", "secret", "set", "b1", "--from-stdin"]
    );
    assert_eq!(
        words("credbroker binding add b --config '{\"a\": 1}'"),
        vec![
            "credbroker",
            "binding",
            "add",
            "b",
            "--config",
            "{\"a\": 1}"
        ]
    );
}

#[test]
fn the_file_walk_skips_build_output_and_never_follows_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["runbooks", "target", "node_modules/x", ".git", "deep/er"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for f in [
        "README.md",
        "runbooks/a.md",
        "deep/er/b.md",
        "target/c.md",
        "node_modules/x/d.md",
        ".git/e.md",
        "runbooks/f.txt",
    ] {
        std::fs::write(root.join(f), "x").unwrap();
    }
    // A link back to the root (an endless walk if followed) and one to a Markdown file.
    std::os::unix::fs::symlink(root, root.join("deep/loop")).unwrap();
    std::os::unix::fs::symlink(root.join("README.md"), root.join("linked.md")).unwrap();
    assert_eq!(
        files_with_extension(root, "md"),
        vec![
            root.join("README.md"),
            root.join("deep/er/b.md"),
            root.join("runbooks/a.md"),
        ]
    );
}
