//! Replays the fuzz corpus on stable: every file under `fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/` through the same check the cargo-fuzz
//! target runs (`fuzz_checks::check`).
//!
//! `FUZZ_WRITE_SEEDS=1 cargo test -p fuzz-checks --test fuzz_corpus` writes
//! the seeds (`fuzz_checks::seeds`) into the corpus.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut replayed = 0;
    for target in fuzz_checks::TARGETS {
        for file in files(&fuzz_dir().join(kind).join(target)) {
            let data = std::fs::read(&file).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| fuzz_checks::check(target, &data));
            assert!(
                outcome.is_ok(),
                "{target}: {} fails its check",
                file.display()
            );
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn the_corpus_passes_every_check() {
    let replayed = replay("corpus");
    assert!(replayed >= 3 * 20, "only {replayed} corpus files");
}

#[test]
fn every_fixed_crash_stays_fixed() {
    replay("regressions");
}

#[test]
fn the_corpus_holds_the_seeds() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some_and(|v| v == "1");
    for (target, name, data) in fuzz_checks::seeds::all() {
        let path = fuzz_dir()
            .join("corpus")
            .join(target)
            .join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(&path, &data).expect("write a seed");
        } else {
            let stored = std::fs::read(&path).unwrap_or_default();
            assert!(
                stored == data,
                "{} is missing or stale: FUZZ_WRITE_SEEDS=1 cargo test -p fuzz-checks --test fuzz_corpus",
                path.display()
            );
        }
    }
}
