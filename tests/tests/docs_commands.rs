//! Every `credbroker …` command shown in a fenced block of any Markdown file of the repository
//! (README.md, runbooks/, the templates' READMEs, tests/bench-history.md) exists and parses
//! with the flags it is shown with. A runbook command that does not exist is a bug.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

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

/// Every Markdown file of the repository (README, runbooks, the templates' and policies'
/// READMEs, tests/bench-history.md), skipping build output, installed packages and dot
/// directories.
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

#[test]
fn documented_commands_parse() {
    let root = repo_root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
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
