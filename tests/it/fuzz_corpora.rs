//! The fuzz targets' corpora, replayed on stable in the normal test run (issue 15).
//!
//! Every target (`spate::fuzzing::TARGETS`) runs over every file of its committed corpus,
//! `tests/fuzz/corpus/<target>/`, and of its crash regressions,
//! `tests/fuzz/regressions/<target>/`, and over its seeds. A corpus that is missing or
//! empty fails the test, so a renamed target cannot pass by reading nothing. The fuzzing
//! itself runs on nightly (`tests/fuzz/README.md`, `.ci/fuzz`).

use std::path::{Path, PathBuf};

use spate::fuzzing::{TARGETS, seeds};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on `input`, naming the input if it panics.
fn replay(name: &str, target: fn(&[u8]), input: &[u8], what: &dyn std::fmt::Display) {
    let outcome = std::panic::catch_unwind(|| target(input));
    assert!(outcome.is_ok(), "fuzz target {name} panicked on {what}");
}

#[test]
fn every_corpus_and_regression_replays_without_a_panic() {
    let mut replayed = 0;
    for &(name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "the corpus of fuzz target {name} (tests/fuzz/corpus/{name}) is missing or empty"
        );
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let input = std::fs::read(path).expect("a corpus file");
            replay(name, target, &input, &path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}

#[test]
fn the_seeds_replay_without_a_panic() {
    for &(name, target) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "fuzz target {name} has no seeds");
        for (index, seed) in seeds.iter().enumerate() {
            replay(name, target, seed, &format_args!("seed {index}"));
        }
    }
}

/// Writes the seeds into the corpora (`cargo test --test it write_fuzz_seeds --
/// --ignored`), to start a corpus afresh; `cargo fuzz cmin` keeps what adds coverage.
#[test]
#[ignore = "writes into tests/fuzz/corpus; run by hand"]
fn write_fuzz_seeds() {
    for &(name, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        std::fs::create_dir_all(&dir).expect("the corpus directory");
        for (index, seed) in seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{index}")), seed).expect("a seed");
        }
    }
}
