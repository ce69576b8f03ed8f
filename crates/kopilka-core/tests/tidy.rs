//! Checks that are tests: the house rules a reviewer would otherwise have to remember.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn workspace_sources() -> Vec<PathBuf> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 10, "found the workspace's sources");
    files
}

#[test]
fn every_module_opens_with_a_doc_comment_saying_what_it_holds() {
    let missing: Vec<_> = workspace_sources()
        .into_iter()
        .filter(|path| !std::fs::read_to_string(path).unwrap().trim_start().starts_with("//!"))
        .collect();
    assert!(missing.is_empty(), "modules without a //! doc comment: {missing:#?}");
}

#[test]
fn the_core_does_no_io_and_never_reads_the_clock() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // Randomness, like time, comes in from the caller: a generator may be passed in (`impl Rng`),
    // never drawn from the system here.
    let forbidden = [
        "Timestamp::now",
        "SystemTime",
        "Instant::now",
        "std::fs",
        "std::net",
        "tokio",
        "std::thread",
        "thread_rng",
        "OsRng",
        "rand::random",
        "from_entropy",
    ];
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for word in forbidden {
            assert!(!text.contains(word), "{} uses {word}: the core is pure", path.display());
        }
    }
}
