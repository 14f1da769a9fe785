//! Streaming exact and near-duplicate removal.
//!
//! Exact: a 128-bit hash of the text after NFKC, lowercasing and whitespace collapse, so
//! copies that differ only in case, spacing or Unicode normalization form are caught.
//! Near: MinHash over 5-character shingles of the text further reduced to lowercase letters
//! and digits separated by single spaces (punctuation changes do not count), LSH banding to
//! find candidates, and a check of the full-signature Jaccard estimate against the threshold
//! (default 0.8). Only hashes and signatures of kept documents are held, never documents: about
//! `4·num_perm + 20·bands` bytes per kept document (≈ 1.7 KB with the defaults) plus 16 bytes per
//! document seen. The first occurrence of a document is kept.

use std::collections::{HashMap, HashSet};

use burn::config::Config;
use serde::{Deserialize, Serialize};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

use crate::DataError;
use crate::hash::{BuildPreHashed, hash64};
use crate::limits::{NUM_PERM, SHINGLE};
use crate::minhash::{LshBands, MinHasher, agreement};

/// Which duplicates to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DedupMode {
    /// Keep everything.
    None,
    /// Exact duplicates (modulo case, whitespace and Unicode normalization form).
    Exact,
    /// Exact and near duplicates (MinHash + LSH).
    Near,
}

impl std::str::FromStr for DedupMode {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "none" => Ok(Self::None),
            "exact" => Ok(Self::Exact),
            "near" => Ok(Self::Near),
            other => Err(DataError::InvalidConfig(format!(
                "dedup mode {other:?}: expected exact, near or none"
            ))),
        }
    }
}

/// Deduplication settings.
#[derive(Config, Debug, PartialEq)]
pub struct DedupConfig {
    /// What to remove.
    #[config(default = "DedupMode::Near")]
    pub mode: DedupMode,
    /// Documents whose estimated Jaccard similarity with a kept document reaches this are near
    /// duplicates.
    #[config(default = 0.8)]
    pub jaccard_threshold: f64,
    /// MinHash signature length; the standard error of the estimate is `sqrt(J(1-J)/num_perm)`:
    /// 0.025 at J = 0.8 with 256, so a pair at J = 0.87 is missed about once in 1,500 (with 128
    /// slots, once in 80). At least [`DedupConfig::min_num_perm`] (84 at the default threshold)
    /// and at most [`crate::limits::NUM_PERM`].
    #[config(default = 256)]
    pub num_perm: usize,
    /// Characters per shingle, at most [`crate::limits::SHINGLE`].
    #[config(default = 5)]
    pub shingle_chars: usize,
    /// LSH bands; `None` picks them from the threshold ([`LshBands::for_threshold`]).
    pub bands: Option<usize>,
    /// Seed of the MinHash functions.
    #[config(default = 0x6b69_6c6e)]
    pub seed: u64,
}

impl DedupConfig {
    /// The fewest MinHash slots that judge similarity soundly at `jaccard_threshold` `t`.
    ///
    /// The estimate of a pair's similarity `J` is the fraction of agreeing slots, binomial with
    /// variance `J(1-J)/n` for `n` slots (the bands only pick candidates; the full signature
    /// decides). A pair clearly below the threshold, at `J = t - 0.1`, must not be judged a
    /// duplicate more than about 2.3% of the time, so the threshold must lie two standard
    /// errors above it: `n ≥ 4·J(1-J)/0.1²`. That is 84 slots at the default `t = 0.8`, 100 at
    /// most (`J = 0.5`), and 1 only for thresholds at or below 0.1. With `num_perm = 1` every
    /// pair sharing its one minimum is a duplicate: on 400 distinct documents, 387 were
    /// removed.
    pub fn min_num_perm(&self) -> usize {
        const MARGIN: f64 = 0.1;
        const Z: f64 = 2.0;
        let j = (self.jaccard_threshold - MARGIN).clamp(0.0, 1.0);
        ((Z * Z * j * (1.0 - j) / (MARGIN * MARGIN)).ceil() as usize).max(1)
    }
}

/// Counts of what deduplication saw and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupStats {
    /// Documents checked.
    pub documents_in: usize,
    /// Removed as exact duplicates.
    pub exact_duplicates: usize,
    /// Removed as near duplicates.
    pub near_duplicates: usize,
    /// Kept.
    pub documents_out: usize,
    /// LSH candidates verified against the full signature.
    pub candidates_checked: usize,
}

/// What [`Deduplicator::insert`] decided about a document.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// First of its kind: keep it.
    Unique,
    /// Same normalized text as document number `of` (counting every document checked, from 0).
    ExactDuplicate {
        /// The earlier document.
        of: usize,
    },
    /// Estimated Jaccard similarity `jaccard` with kept document number `of`.
    NearDuplicate {
        /// The earlier, kept document.
        of: usize,
        /// The MinHash estimate.
        jaccard: f64,
    },
}

impl Verdict {
    /// Whether the document should be kept.
    pub fn is_unique(&self) -> bool {
        matches!(self, Verdict::Unique)
    }
}

/// What [`Deduplicator::fingerprint`] computes from a document: pure, so many threads can
/// fingerprint while one thread inserts in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Fingerprint {
    /// 128-bit hash of the exact-match normalization.
    pub exact: u128,
    /// MinHash signature of the near-match normalization (`Near` mode only).
    pub signature: Option<Vec<u32>>,
}

/// A streaming deduplicator.
#[derive(Clone, Debug)]
pub struct Deduplicator {
    config: DedupConfig,
    hasher: MinHasher,
    lsh: LshBands,
    /// Exact hash of every document seen → its number.
    exact: HashMap<u128, usize, BuildPreHashed>,
    /// Signatures of kept documents, flat, `num_perm` each.
    signatures: Vec<u32>,
    /// Document number of each kept signature.
    kept_numbers: Vec<usize>,
    /// Per band: band hash → first kept signature index; `chain` links the rest.
    buckets: Vec<HashMap<u64, u32, BuildPreHashed>>,
    chain: Vec<u32>,
    stats: DedupStats,
}

const END: u32 = u32::MAX;

impl Deduplicator {
    /// Checks the configuration.
    pub fn new(config: DedupConfig) -> Result<Self, DataError> {
        if !(config.jaccard_threshold > 0.0 && config.jaccard_threshold <= 1.0) {
            return Err(DataError::InvalidConfig(format!(
                "jaccard_threshold {} must be in (0, 1]",
                config.jaccard_threshold
            )));
        }
        if config.num_perm == 0 || config.shingle_chars == 0 {
            return Err(DataError::InvalidConfig(
                "num_perm and shingle_chars must be positive".into(),
            ));
        }
        NUM_PERM.check("num_perm (MinHash slots)", config.num_perm as u64)?;
        SHINGLE.check(
            "shingle_chars (characters per shingle)",
            config.shingle_chars as u64,
        )?;
        if config.mode == DedupMode::Near && config.num_perm < config.min_num_perm() {
            return Err(DataError::InvalidConfig(format!(
                "num_perm {} is too few MinHash slots to judge similarity at the threshold {}: \
                 at least {} are needed (the estimate's standard error must keep pairs 0.1 \
                 below the threshold from being judged duplicates)",
                config.num_perm,
                config.jaccard_threshold,
                config.min_num_perm()
            )));
        }
        let lsh = match config.bands {
            Some(bands) if bands == 0 || bands > config.num_perm => {
                return Err(DataError::InvalidConfig(format!(
                    "bands {bands} must be in 1..={}",
                    config.num_perm
                )));
            }
            Some(bands) => LshBands {
                bands,
                rows: config.num_perm / bands,
            },
            None => LshBands::for_threshold(config.num_perm, config.jaccard_threshold, 0.99),
        };
        Ok(Self {
            hasher: MinHasher::new(config.num_perm, config.shingle_chars, config.seed),
            buckets: vec![HashMap::default(); lsh.bands],
            lsh,
            config,
            exact: HashMap::default(),
            signatures: Vec::new(),
            kept_numbers: Vec::new(),
            chain: Vec::new(),
            stats: DedupStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DedupConfig {
        &self.config
    }

    /// The LSH banding in use.
    pub fn bands(&self) -> LshBands {
        self.lsh
    }

    /// The counts so far.
    pub fn stats(&self) -> &DedupStats {
        &self.stats
    }

    /// Hashes and, in `Near` mode, the MinHash signature of `text` (nothing in `None` mode).
    pub fn fingerprint(&self, text: &str) -> Fingerprint {
        if self.config.mode == DedupMode::None {
            // Nothing will be compared: skip the normalization and hashing.
            return Fingerprint {
                exact: 0,
                signature: None,
            };
        }
        let (exact_text, near_text) = normalize_for_dedup(text);
        let bytes = exact_text.as_bytes();
        let exact = ((hash64(bytes, 1) as u128) << 64) | hash64(bytes, 2) as u128;
        let signature =
            (self.config.mode == DedupMode::Near).then(|| self.hasher.signature(&near_text));
        Fingerprint { exact, signature }
    }

    /// Decides about the next document and remembers it.
    pub fn insert(&mut self, fp: Fingerprint) -> Verdict {
        let number = self.stats.documents_in;
        self.stats.documents_in += 1;
        if self.config.mode == DedupMode::None {
            self.stats.documents_out += 1;
            return Verdict::Unique;
        }
        if let Some(&of) = self.exact.get(&fp.exact) {
            self.stats.exact_duplicates += 1;
            return Verdict::ExactDuplicate { of };
        }
        self.exact.insert(fp.exact, number);
        if let Some(sig) = fp.signature.filter(|_| self.config.mode == DedupMode::Near) {
            if let Some((of, jaccard)) = self.best_match(&sig) {
                self.stats.near_duplicates += 1;
                return Verdict::NearDuplicate { of, jaccard };
            }
            self.remember(sig, number);
        }
        self.stats.documents_out += 1;
        Verdict::Unique
    }

    /// `fingerprint` then `insert`.
    pub fn check(&mut self, text: &str) -> Verdict {
        let fp = self.fingerprint(text);
        self.insert(fp)
    }

    fn best_match(&mut self, sig: &[u32]) -> Option<(usize, f64)> {
        let n = self.config.num_perm;
        let mut seen: HashSet<u32, BuildPreHashed> = HashSet::default();
        let mut best: Option<(usize, f64)> = None;
        for (band, h) in self.lsh.band_hashes(sig).enumerate() {
            let mut next = self.buckets[band].get(&h).copied().unwrap_or(END);
            while next != END {
                let idx = next as usize;
                next = self.chain[idx * self.lsh.bands + band];
                if !seen.insert(idx as u32) {
                    continue;
                }
                self.stats.candidates_checked += 1;
                let j = agreement(sig, &self.signatures[idx * n..(idx + 1) * n]);
                if j >= self.config.jaccard_threshold && best.is_none_or(|(_, b)| j > b) {
                    best = Some((self.kept_numbers[idx], j));
                }
            }
        }
        best
    }

    fn remember(&mut self, sig: Vec<u32>, number: usize) {
        let idx = self.kept_numbers.len() as u32;
        for (band, h) in self.lsh.band_hashes(&sig).enumerate() {
            let head = self.buckets[band].insert(h, idx).unwrap_or(END);
            self.chain.push(head);
        }
        self.signatures.extend_from_slice(&sig);
        self.kept_numbers.push(number);
    }
}

/// The two normalizations duplicates are judged on: for exact matching, NFKC + lowercase with
/// every whitespace run collapsed to one space; for near matching, additionally only letters
/// and digits, every other run of characters becoming one space.
pub fn normalize_for_dedup(text: &str) -> (String, String) {
    if text.is_ascii() {
        return normalize_ascii(text.as_bytes());
    }
    let nfkc;
    let text = if is_nfkc_quick(text.chars()) == IsNormalized::Yes {
        text
    } else {
        nfkc = text.nfkc().collect::<String>();
        &nfkc
    };
    let mut exact = String::with_capacity(text.len());
    let mut near = String::with_capacity(text.len());
    let (mut exact_gap, mut near_gap) = (false, false);
    for c in text.chars() {
        if c.is_whitespace() {
            exact_gap = !exact.is_empty();
            near_gap = !near.is_empty();
            continue;
        }
        if exact_gap {
            exact.push(' ');
            exact_gap = false;
        }
        let alnum = c.is_alphanumeric();
        if !alnum {
            near_gap = !near.is_empty();
        } else if near_gap {
            near.push(' ');
            near_gap = false;
        }
        if c.is_ascii() {
            let l = c.to_ascii_lowercase();
            exact.push(l);
            if alnum {
                near.push(l);
            }
        } else {
            for l in c.to_lowercase() {
                exact.push(l);
                if alnum {
                    near.push(l);
                }
            }
        }
    }
    (exact, near)
}

/// [`normalize_for_dedup`] on bytes, for ASCII text (already NFKC).
fn normalize_ascii(text: &[u8]) -> (String, String) {
    let mut exact = Vec::with_capacity(text.len());
    let mut near = Vec::with_capacity(text.len());
    let (mut exact_gap, mut near_gap) = (false, false);
    for &b in text {
        if b.is_ascii_whitespace() || b == 0x0b {
            exact_gap = !exact.is_empty();
            near_gap = !near.is_empty();
            continue;
        }
        if exact_gap {
            exact.push(b' ');
            exact_gap = false;
        }
        let l = b.to_ascii_lowercase();
        exact.push(l);
        if b.is_ascii_alphanumeric() {
            if near_gap {
                near.push(b' ');
                near_gap = false;
            }
            near.push(l);
        } else {
            near_gap = !near.is_empty();
        }
    }
    let ascii = |v: Vec<u8>| String::from_utf8(v).expect("ASCII in, ASCII out");
    (ascii(exact), ascii(near))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_ignores_case_space_and_form() {
        let (e1, n1) = normalize_for_dedup("Ｈello,\t  WORLD!\n");
        let (e2, n2) = normalize_for_dedup("hello, world!");
        assert_eq!(e1, e2);
        assert_eq!(e1, "hello, world!");
        assert_eq!(n1, "hello world");
        assert_eq!(n2, "hello world");
        // The ASCII fast path agrees with the general path.
        let ascii = "  Mixed\tCASE, punctuation!!  and\n\x0bspaces ";
        let (e, n) = normalize_for_dedup(ascii);
        let (e2, n2) = normalize_for_dedup(&format!("{ascii}\u{e9}"));
        assert_eq!((format!("{e} \u{e9}"), format!("{n} \u{e9}")), (e2, n2));
        // Composed and decomposed é.
        assert_eq!(
            normalize_for_dedup("caf\u{e9}").0,
            normalize_for_dedup("cafe\u{301}").0
        );
    }

    #[test]
    fn exact_and_near_duplicates_are_counted() {
        let mut d = Deduplicator::new(DedupConfig::new()).unwrap();
        let base = "The quick brown fox jumps over the lazy dog while the farmer watches from \
                    the porch, drinking coffee and reading yesterday's newspaper in the sun.";
        assert_eq!(d.check(base), Verdict::Unique);
        assert_eq!(
            d.check(&base.to_uppercase()),
            Verdict::ExactDuplicate { of: 0 }
        );
        let near = base.replace("coffee", "tea").replace(',', ";");
        assert!(matches!(
            d.check(&near),
            Verdict::NearDuplicate { of: 0, .. }
        ));
        assert_eq!(
            d.check("Something else entirely, about ships and the sea."),
            Verdict::Unique
        );
        let s = d.stats();
        assert_eq!(
            (
                s.documents_in,
                s.exact_duplicates,
                s.near_duplicates,
                s.documents_out
            ),
            (4, 1, 1, 2)
        );
    }

    #[test]
    fn exact_mode_keeps_near_duplicates_and_none_keeps_all() {
        let mut d = Deduplicator::new(DedupConfig::new().with_mode(DedupMode::Exact)).unwrap();
        assert!(d.check("one two three four five six").is_unique());
        assert!(d.check("one two three four five seven").is_unique());
        assert!(!d.check("ONE two three four five six").is_unique());
        let mut d = Deduplicator::new(DedupConfig::new().with_mode(DedupMode::None)).unwrap();
        assert!(d.check("a").is_unique() && d.check("a").is_unique());
    }

    /// Issue 14: `--num-perm 1` removed 387 of 400 distinct documents as near duplicates.
    #[test]
    fn num_perm_1_is_refused() {
        let err = Deduplicator::new(DedupConfig::new().with_num_perm(1)).unwrap_err();
        assert!(err.to_string().contains("at least 84"), "{err}");
        assert_eq!(DedupConfig::new().min_num_perm(), 84);
        assert!(Deduplicator::new(DedupConfig::new().with_num_perm(84)).is_ok());
        assert!(Deduplicator::new(DedupConfig::new().with_num_perm(83)).is_err());
        // The minimum follows the threshold, and other modes compute no signatures.
        let t = |t: f64| DedupConfig::new().with_jaccard_threshold(t).min_num_perm();
        assert_eq!((t(0.6), t(1.0), t(0.05)), (100, 36, 1));
        let exact = DedupConfig::new()
            .with_mode(DedupMode::Exact)
            .with_num_perm(1);
        assert!(Deduplicator::new(exact).is_ok());
    }

    /// Issue 14: `--num-perm 1e8` and `--shingle 1e10` failed to allocate (an abort).
    #[test]
    fn absurd_num_perm_and_shingle_are_limit_errors() {
        for config in [
            DedupConfig::new().with_num_perm(100_000_000),
            DedupConfig::new().with_shingle_chars(10_000_000_000),
        ] {
            let err = Deduplicator::new(config).unwrap_err();
            assert!(matches!(err, DataError::Limit(_)), "{err}");
        }
    }

    #[test]
    fn bad_config_is_an_error() {
        assert!(Deduplicator::new(DedupConfig::new().with_jaccard_threshold(0.0)).is_err());
        assert!(Deduplicator::new(DedupConfig::new().with_bands(Some(0))).is_err());
        assert!("fuzzy".parse::<DedupMode>().is_err());
    }
}
