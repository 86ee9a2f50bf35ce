//! Replays every file of every fuzz corpus (`fuzz/corpus/<target>/`) through
//! its target's check, on stable and in plain `cargo test`: a crash the
//! fuzzer found once, kept in the corpus, stays fixed.

use std::{panic, path::PathBuf};

#[test]
fn every_corpus_file_passes_its_check() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut failures = Vec::new();
    for &(target, check) in fuzz_checks::TARGETS {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if panic::catch_unwind(|| check(&data)).is_err() {
                failures.push(path.display().to_string());
            }
            replayed += 1;
        }
        assert!(
            replayed > 0,
            "{target}: no corpus files in {}",
            dir.display()
        );
    }
    assert!(failures.is_empty(), "failed checks: {failures:#?}");
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    for &(target, _) in fuzz_checks::TARGETS {
        let file = dir.join(format!("{target}.rs"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains("fuzz_checks::"),
            "{} does not call its check",
            file.display()
        );
    }
}
