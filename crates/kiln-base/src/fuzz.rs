//! A stable-toolchain fuzz harness: proptest over arbitrary and mutated bytes, with every panic
//! caught and reported as a failing input.
//!
//! cargo-fuzz needs a nightly toolchain; kiln's fuzz targets are ordinary tests instead
//! (`tests/fuzz.rs` in the crate that owns each loader), so CI runs them on stable. Each target
//! feeds [`run`] a strategy (usually [`mutated`] over a committed seed corpus of valid files) and
//! a closure that loads one input and says whether it was accepted (`Ok`) or refused with a typed
//! error (`Err`). A panic fails the test with the input that caused it. The number of inputs is
//! `KILN_FUZZ_CASES` (default [`DEFAULT_CASES`], small enough for CI).

use std::cell::Cell;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Inputs per target when `KILN_FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 2000;

/// Inputs per target: `KILN_FUZZ_CASES`, else [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    std::env::var("KILN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Runs `target` on [`cases`] inputs drawn from `strategy`. `target` returns `Ok` when the input
/// was accepted and `Err` (any typed error) when it was refused; a panic fails the run, naming
/// the (shrunk) input. Prints `fuzz_<name>: N inputs, A accepted, R refused, P panicked` to
/// stderr (a failing run counts the shrinking steps too).
///
/// # Panics
/// When `target` panicked on some input: that is the bug this harness exists to find.
pub fn run<S, T, E>(name: &str, strategy: S, target: impl Fn(S::Value) -> Result<T, E>)
where
    S: Strategy,
    S::Value: Clone + std::fmt::Debug,
{
    let cases = cases();
    let (accepted, refused, panicked) = (Cell::new(0u64), Cell::new(0u64), Cell::new(0u64));
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&strategy, |input| {
        match catch_unwind(AssertUnwindSafe(|| target(input))) {
            Ok(Ok(_)) => accepted.set(accepted.get() + 1),
            Ok(Err(_)) => refused.set(refused.get() + 1),
            Err(panic) => {
                panicked.set(panicked.get() + 1);
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                return Err(TestCaseError::fail(format!("panicked: {message}")));
            }
        }
        Ok(())
    });
    let (a, r, p) = (accepted.get(), refused.get(), panicked.get());
    let _ = writeln!(
        std::io::stderr(),
        "fuzz_{name}: {} inputs, {a} accepted, {r} refused, {p} panicked",
        a + r + p
    );
    if let Err(failure) = outcome {
        panic!("fuzz_{name}: {failure}");
    }
}

/// Bytes drawn from `seeds` (valid files) and mutated: a few bytes flipped, a cut, a splice of
/// random bytes, a region repeated, or wholly random bytes. Mutations of valid inputs reach the
/// deep paths of a parser, where random bytes alone are refused at the first check.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "a fuzz corpus needs at least one seed");
    let seed = proptest::sample::select(seeds);
    prop_oneof![
        // Bytes flipped at random places.
        (
            seed.clone(),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
        )
            .prop_map(|(mut bytes, flips)| {
                if !bytes.is_empty() {
                    for (at, byte) in flips {
                        let i = at.index(bytes.len());
                        bytes[i] ^= byte.max(1);
                    }
                }
                bytes
            }),
        // Cut short.
        (seed.clone(), any::<prop::sample::Index>()).prop_map(|(mut bytes, at)| {
            let len = at.index(bytes.len() + 1);
            bytes.truncate(len);
            bytes
        }),
        // Random bytes spliced in.
        (
            seed.clone(),
            any::<prop::sample::Index>(),
            proptest::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(|(mut bytes, at, insert)| {
                let i = at.index(bytes.len() + 1);
                bytes.splice(i..i, insert);
                bytes
            }),
        // A region repeated (grows counts and nesting).
        (
            seed,
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>()
        )
            .prop_map(|(mut bytes, a, b)| {
                let (a, b) = (a.index(bytes.len() + 1), b.index(bytes.len() + 1));
                let (lo, hi) = (a.min(b), a.max(b));
                let region = bytes[lo..hi].to_vec();
                bytes.splice(hi..hi, region);
                bytes
            }),
        // Anything at all.
        proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

/// The seed corpus in `dir`: every file's bytes, in name order (so runs are reproducible).
///
/// # Panics
/// When the folder cannot be read or is empty: a fuzz target without its corpus is a broken test.
pub fn corpus(dir: impl AsRef<std::path::Path>) -> Vec<Vec<u8>> {
    let dir = dir.as_ref();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "fuzz corpus {} is empty", dir.display());
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("a corpus file"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_target_fails_the_run_and_a_refusing_one_does_not() {
        let seeds = || vec![b"{\"n\": 1}".to_vec()];
        run("refusing", mutated(seeds()), |bytes| {
            std::str::from_utf8(&bytes).map(str::len)
        });
        let panicked = catch_unwind(|| {
            run("panicking", mutated(seeds()), |bytes| {
                assert!(bytes.len() < 4, "long input");
                Ok::<_, ()>(())
            })
        });
        assert!(panicked.is_err(), "the harness must report a panic");
    }
}
