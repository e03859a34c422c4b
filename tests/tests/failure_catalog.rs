//! `docs/failure-catalog.md` stays true: every section of the two seeds it catalogs has a row per
//! point, every row names a test that exists or gives a `reason:`, and every named test
//! (`path::name`, Rust `fn` or Python `def`) is in the file it names.

use std::path::{Path, PathBuf};

/// Each section's heading prefix and how many points the seed lists there.
const SECTIONS: [(&str, usize); 14] = [
    ("## §1 ", 7),
    ("## §2 ", 8),
    ("## §3 ", 8),
    ("## §4 ", 8),
    ("## §5 ", 8),
    ("## §6 ", 10),
    ("## §7 ", 8),
    // Ten failure points and the seven defences it says a system needs.
    ("## §8 ", 17),
    ("## §9 ", 9),
    ("## §10 ", 6),
    ("## §11 ", 7),
    ("## §12 ", 6),
    ("## Infrastructure", 9),
    ("## Seed 003", 12),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The table rows under each `## ` heading.
fn sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("## ") {
            out.push((line.to_string(), Vec::new()));
        } else if line.starts_with("| ")
            && !line.starts_with("| failure point")
            && !line.starts_with("| rule ")
            && let Some((_, rows)) = out.last_mut()
        {
            rows.push(line.to_string());
        }
    }
    out
}

/// The `path::name` references in a row.
fn references(row: &str) -> Vec<(String, String)> {
    row.split('`')
        .filter_map(|token| token.split_once("::"))
        .filter(|(path, name)| {
            (path.ends_with(".rs") || path.ends_with(".py"))
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(path, name)| (path.to_string(), name.to_string()))
        .collect()
}

#[test]
fn every_point_has_a_test_that_exists_or_a_reason() {
    let text = std::fs::read_to_string(root().join("docs/failure-catalog.md")).expect("docs/failure-catalog.md");
    let found = sections(&text);
    let mut problems = Vec::new();
    for (prefix, points) in SECTIONS {
        match found.iter().find(|(heading, _)| heading.starts_with(prefix)) {
            None => problems.push(format!("no section {prefix:?}")),
            Some((heading, rows)) if rows.len() != points => {
                problems.push(format!("{heading}: {} rows for the seed's {points} points", rows.len()))
            }
            Some(_) => {}
        }
    }
    for (heading, rows) in &found {
        for row in rows {
            let point = row.split('|').nth(1).unwrap_or_default().trim();
            let refs = references(row);
            let reasoned = row.split('|').any(|cell| cell.trim().starts_with("reason:"));
            if refs.is_empty() && !reasoned {
                problems.push(format!("{heading} / {point}: neither a test nor a reason"));
            }
            for (path, name) in refs {
                let file = root().join(&path);
                let Ok(source) = std::fs::read_to_string(&file) else {
                    problems.push(format!("{point}: {path} does not exist"));
                    continue;
                };
                let defined = [format!("fn {name}("), format!("def {name}(")].iter().any(|d| source.contains(d));
                if !defined {
                    problems.push(format!("{point}: {path} has no test {name}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "docs/failure-catalog.md:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_notices_a_missing_test_and_a_row_without_evidence() {
    let row = "| x | y | `tests/tests/faults.rs::no_such_test` |";
    assert_eq!(references(row), vec![("tests/tests/faults.rs".to_string(), "no_such_test".to_string())]);
    let source = std::fs::read_to_string(root().join("tests/tests/faults.rs")).unwrap();
    assert!(!source.contains("fn no_such_test("));
    assert!(references("| x | reason: none needed |").is_empty());
    let parsed = sections("## §1 A\n| failure point | a | b |\n|---|---|---|\n| p | q | r |\n");
    assert_eq!(parsed, vec![("## §1 A".to_string(), vec!["| p | q | r |".to_string()])]);
}
