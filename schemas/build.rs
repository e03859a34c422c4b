//! Embeds every `avro/<topic>/<Event>.v<N>.avsc` into the crate, so a binary carries the exact
//! schema versions it was built with (its writer schemas and its reader schemas).
//!
//! The checkout is read from `CARGO_MANIFEST_DIR` when the script *runs*, never baked in when it
//! is compiled: a target directory shared by several checkouts may run a build script compiled
//! in another one. No schema found fails the build rather than embedding an empty catalog.

use std::{env, fs, path::Path};

fn main() {
    let manifest = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for build scripts");
    let root = Path::new(&manifest).join("avro");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut entries = Vec::new();
    for topic in sorted_dir(&root) {
        if !topic.is_dir() {
            continue;
        }
        println!("cargo:rerun-if-changed={}", topic.display());
        for file in sorted_dir(&topic) {
            if file.extension().is_some_and(|e| e == "avsc") {
                println!("cargo:rerun-if-changed={}", file.display());
                entries.push((topic.file_name().unwrap().to_string_lossy().into_owned(), file));
            }
        }
    }
    assert!(
        !entries.is_empty(),
        "no schema (<topic>/<Event>.v<N>.avsc) under {}: refusing to build a binary with an empty catalog",
        root.display()
    );
    let mut out = String::from("pub(crate) static EMBEDDED: &[(&str, &str, &str)] = &[\n");
    for (topic, file) in entries {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        out.push_str(&format!("    ({topic:?}, {name:?}, include_str!({:?})),\n", file.display().to_string()));
    }
    out.push_str("];\n");
    let dest = Path::new(&env::var("OUT_DIR").unwrap()).join("embedded_schemas.rs");
    fs::write(dest, out).unwrap();
}

fn sorted_dir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> =
        fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    paths.sort();
    paths
}
