//! The seams hold: the broker core never names a provider (a provider is its folder under
//! providers/ plus one line in the catalog), and nothing outside broker/src/store names a
//! table or a raw key (typed record access only).

use credbroker_providers::CATALOG;
use credbroker_tests::{files_with_extension, repo_root};

/// The code of a file without its unit tests (a `#[cfg(test)]` module, which ends the file)
/// and without comments. Other `#[cfg(test)]` items stay in: cutting at the first one would
/// hide every line after a test-only helper high in a file.
fn production_code(text: &str) -> String {
    let test_module = text.match_indices("#[cfg(test)]").find(|(i, attr)| {
        text[i + attr.len()..]
            .trim_start()
            .strip_prefix("mod ")
            .is_some()
    });
    let body = match test_module {
        Some((i, _)) => &text[..i],
        None => text,
    };
    body.lines()
        .map(strip_comment)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `f` is a module's unit tests in a file of their own: `tests.rs`, or a file under a
/// `tests/` directory, declared only as `#[cfg(test)] mod tests;` (checked: a file so named
/// that its parent declares otherwise is production code, and is read).
fn is_test_module_file(f: &std::path::Path) -> bool {
    let in_tests = f.file_name().is_some_and(|n| n == "tests.rs")
        || f.parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "tests");
    if !in_tests {
        return false;
    }
    // The parent module's file: `x/tests.rs` is declared in `x.rs` or `x/mod.rs`.
    let module_dir = if f.file_name().is_some_and(|n| n == "tests.rs") {
        f.parent()
    } else {
        f.parent().and_then(|p| p.parent())
    };
    let Some(dir) = module_dir else {
        return false;
    };
    let declared = |parent: std::path::PathBuf| {
        std::fs::read_to_string(parent).is_ok_and(|t| t.contains("#[cfg(test)]\nmod tests;"))
    };
    declared(dir.with_extension("rs")) || declared(dir.join("mod.rs"))
}

/// The line up to its `//` comment; a `//` inside a string literal (a URL) is kept.
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

#[test]
fn no_provider_id_appears_in_the_broker_core() {
    let files = files_with_extension(&repo_root().join("broker/src"), "rs");
    assert!(files.len() > 20, "broker/src not found");
    let mut found = Vec::new();
    for f in &files {
        // A module's unit tests kept in a file of their own (`#[cfg(test)] mod tests;`).
        if is_test_module_file(f) {
            continue;
        }
        let code = production_code(&std::fs::read_to_string(f).unwrap());
        for d in CATALOG {
            for (n, line) in code.lines().enumerate() {
                if line.contains(d.id) {
                    found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "provider ids in broker/src (name them through the providers crate's catalog):\n{}",
        found.join("\n")
    );
}

/// Whether `line` names the path `item` (not as the tail of a longer name: `AdminOp::`).
fn names(line: &str, item: &str) -> bool {
    line.match_indices(item).any(|(i, _)| {
        line[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

#[test]
fn no_table_or_raw_key_outside_the_store_module() {
    let files = files_with_extension(&repo_root().join("broker/src"), "rs");
    assert!(files.len() > 20, "broker/src not found");
    let store_dir = repo_root().join("broker/src/store");
    let mut found = Vec::new();
    for f in files.iter().filter(|f| !f.starts_with(&store_dir)) {
        let code = production_code(&std::fs::read_to_string(f).unwrap());
        for (n, line) in code.lines().enumerate() {
            if names(line, "Table::") || names(line, "Op::") {
                found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "raw store access outside broker/src/store (add a typed method to store::records):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_raw_access_check_tells_names_apart() {
    assert!(names("batch.push(Op::Put(Table::Tenants, k, v))", "Op::"));
    assert!(names("store::Table::Tenants", "Table::"));
    assert!(!names("AdminOp::List(c)", "Op::"));
}

#[test]
fn the_check_itself_sees_an_id() {
    // The scan must not be blind: a line naming a provider outside a comment is found.
    let id = CATALOG[0].id;
    let code = production_code(&format!(
        "fn f() {{ let p = \"{id}\"; }} // {id}\n#[cfg(test)]\nmod tests {{ \"{id}\" }}"
    ));
    assert_eq!(code.matches(id).count(), 1, "{code}");
    // A test-only item above production code does not hide what follows it.
    let code = production_code(&format!(
        "#[cfg(test)]\nimpl X {{ }}\nfn f() {{ let p = \"{id}\"; }}\n#[cfg(test)]\nmod tests {{ \"{id}\" }}"
    ));
    assert_eq!(code.matches(id).count(), 1, "{code}");
}
