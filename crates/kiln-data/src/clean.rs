//! Text cleaning as a configurable pipeline: Unicode NFKC, control and invisible characters,
//! whitespace, optional lowercasing, length limits, repeated-line and repeated-character
//! filters, boilerplate lines, and optional stop-word removal. Everything removed is counted
//! in a [`CleanReport`].
//!
//! The filter thresholds follow the Gopher rules (Rae et al. 2021, appendix A) and C4
//! (Raffel et al. 2020): documents with more than 30% duplicated lines are dropped, and lines
//! naming cookie/privacy/terms boilerplate are removed. Gopher's lower length limit (50 words)
//! is meant for web pages; the default here keeps any non-empty document, so short documents
//! are only dropped when asked for.

use std::collections::HashSet;

use burn::config::Config;
use serde::{Deserialize, Serialize};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

use crate::DataError;
use crate::hash::BuildPreHashed;
use crate::limits::MAX_WORDS;

/// What the [`Cleaner`] does.
#[derive(Config, Debug, PartialEq)]
pub struct CleanConfig {
    /// Unicode NFKC normalization (compatibility forms such as `ﬁ` → `fi`, full-width → ASCII).
    #[config(default = true)]
    pub nfkc: bool,
    /// Remove control characters (except newline and tab) and invisible format characters
    /// (zero-width spaces and joiners, byte-order marks, soft hyphens, bidi controls).
    #[config(default = true)]
    pub remove_control: bool,
    /// Collapse runs of horizontal whitespace to one space, trim lines, and keep at most one
    /// blank line between paragraphs.
    #[config(default = true)]
    pub collapse_whitespace: bool,
    /// Lowercase everything.
    #[config(default = false)]
    pub lowercase: bool,
    /// Drop documents with fewer words than this (after cleaning).
    #[config(default = 1)]
    pub min_words: usize,
    /// Drop documents with more words than this (Gopher: 100,000); at most
    /// [`crate::limits::MAX_WORDS`].
    #[config(default = 100_000)]
    pub max_words: usize,
    /// Drop documents whose fraction of duplicated non-empty lines exceeds this (Gopher: 0.3).
    #[config(default = 0.3)]
    pub max_duplicate_line_fraction: f64,
    /// A run of at least this many identical non-space characters counts as repetition.
    #[config(default = 10)]
    pub char_run_length: usize,
    /// Drop documents with more than this fraction of their characters in such runs.
    #[config(default = 0.2)]
    pub max_char_run_fraction: f64,
    /// Remove boilerplate lines (see [`CleanConfig::boilerplate_phrases`]) and drop documents
    /// containing placeholder text (`lorem ipsum`), as C4 does.
    #[config(default = true)]
    pub boilerplate_filter: bool,
    /// Lowercase ASCII phrases that mark a short line (at most
    /// [`CleanConfig::boilerplate_max_words`] words) as boilerplate.
    #[config(default = "default_boilerplate_phrases()")]
    pub boilerplate_phrases: Vec<String>,
    /// Lines longer than this are content, whatever phrases they contain.
    #[config(default = 12)]
    pub boilerplate_max_words: usize,
    /// Remove stop words (classic bag-of-words NLP; never for language-model pretraining).
    #[config(default = false)]
    pub remove_stop_words: bool,
    /// The stop words, lowercase (a short English list by default).
    #[config(default = "default_stop_words()")]
    pub stop_words: Vec<String>,
}

/// C4-style boilerplate markers.
pub fn default_boilerplate_phrases() -> Vec<String> {
    [
        "cookie policy",
        "use cookies",
        "uses cookies",
        "accept cookies",
        "privacy policy",
        "terms of use",
        "terms of service",
        "all rights reserved",
        "enable javascript",
        "javascript is disabled",
        "click here to",
        "subscribe to our newsletter",
        "sign up for our newsletter",
    ]
    .map(String::from)
    .to_vec()
}

/// A short English stop-word list (articles, pronouns, auxiliaries, common prepositions).
pub fn default_stop_words() -> Vec<String> {
    "a an the and or but if of at by for with about to from in on is are was were be been being \
     am do does did have has had i me my we our you your he him his she her it its they them \
     their this that these those as so than too very can will just not no nor"
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Counts of what cleaning saw and removed. Reports of parallel workers add up with
/// [`CleanReport::merge`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanReport {
    /// Documents given to the cleaner.
    pub documents_in: usize,
    /// Documents that came out.
    pub documents_out: usize,
    /// Documents empty after cleaning.
    pub dropped_empty: usize,
    /// Documents under `min_words`.
    pub dropped_too_short: usize,
    /// Documents over `max_words`.
    pub dropped_too_long: usize,
    /// Documents over `max_duplicate_line_fraction`.
    pub dropped_repeated_lines: usize,
    /// Documents over `max_char_run_fraction`.
    pub dropped_repeated_chars: usize,
    /// Documents with placeholder text.
    pub dropped_boilerplate: usize,
    /// Boilerplate lines removed from kept documents.
    pub boilerplate_lines_removed: usize,
    /// Documents that NFKC changed.
    pub nfkc_changed: usize,
    /// Control characters removed.
    pub control_chars_removed: usize,
    /// Invisible format characters removed.
    pub invisible_chars_removed: usize,
    /// Stop words removed.
    pub stop_words_removed: usize,
    /// UTF-8 bytes in.
    pub bytes_in: usize,
    /// UTF-8 bytes out (of the kept documents).
    pub bytes_out: usize,
}

impl CleanReport {
    /// Adds another report's counts to this one.
    pub fn merge(&mut self, other: &CleanReport) {
        self.documents_in += other.documents_in;
        self.documents_out += other.documents_out;
        self.dropped_empty += other.dropped_empty;
        self.dropped_too_short += other.dropped_too_short;
        self.dropped_too_long += other.dropped_too_long;
        self.dropped_repeated_lines += other.dropped_repeated_lines;
        self.dropped_repeated_chars += other.dropped_repeated_chars;
        self.dropped_boilerplate += other.dropped_boilerplate;
        self.boilerplate_lines_removed += other.boilerplate_lines_removed;
        self.nfkc_changed += other.nfkc_changed;
        self.control_chars_removed += other.control_chars_removed;
        self.invisible_chars_removed += other.invisible_chars_removed;
        self.stop_words_removed += other.stop_words_removed;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }

    /// Documents dropped for any reason.
    pub fn dropped(&self) -> usize {
        self.documents_in - self.documents_out
    }
}

/// A validated [`CleanConfig`], ready to clean documents from several threads at once.
#[derive(Clone, Debug)]
pub struct Cleaner {
    config: CleanConfig,
    stop_words: HashSet<String>,
    phrases: Vec<String>,
}

/// Whether `c` is an invisible format character that carries no text: zero-width spaces and
/// joiners, bidi controls, word joiners, the byte-order mark, soft hyphens.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

impl Cleaner {
    /// Checks the configuration.
    pub fn new(config: CleanConfig) -> Result<Self, DataError> {
        let fraction_ok = |x: f64| (0.0..=1.0).contains(&x);
        if !fraction_ok(config.max_duplicate_line_fraction)
            || !fraction_ok(config.max_char_run_fraction)
        {
            return Err(DataError::InvalidConfig(
                "max_duplicate_line_fraction and max_char_run_fraction must be in [0, 1]".into(),
            ));
        }
        MAX_WORDS.check("max_words", config.max_words as u64)?;
        if config.min_words > config.max_words {
            return Err(DataError::InvalidConfig(format!(
                "min_words {} > max_words {}",
                config.min_words, config.max_words
            )));
        }
        if config.char_run_length < 2 {
            return Err(DataError::InvalidConfig(
                "char_run_length must be at least 2".into(),
            ));
        }
        let stop_words = config.stop_words.iter().map(|w| w.to_lowercase()).collect();
        let phrases = config
            .boilerplate_phrases
            .iter()
            .map(|p| p.to_lowercase())
            .collect();
        Ok(Self {
            config,
            stop_words,
            phrases,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CleanConfig {
        &self.config
    }

    /// Cleans one document: `None` if it was dropped. Counts go to `report`.
    pub fn clean(&self, text: &str, report: &mut CleanReport) -> Option<String> {
        let cfg = &self.config;
        report.documents_in += 1;
        report.bytes_in += text.len();

        let normalized;
        let mut text = text;
        if cfg.nfkc && !text.is_ascii() && is_nfkc_quick(text.chars()) != IsNormalized::Yes {
            normalized = text.nfkc().collect::<String>();
            if normalized != text {
                report.nfkc_changed += 1;
            }
            text = &normalized;
        }

        let chars = self.clean_chars(text, report);
        let kept = self.filter_lines(&chars, report)?;
        let kept = if cfg.remove_stop_words {
            self.remove_stop_words(&kept, report)
        } else {
            kept
        };

        let words = kept.split_whitespace().count();
        if words == 0 {
            report.dropped_empty += 1;
            return None;
        }
        if words < cfg.min_words {
            report.dropped_too_short += 1;
            return None;
        }
        if words > cfg.max_words {
            report.dropped_too_long += 1;
            return None;
        }
        report.documents_out += 1;
        report.bytes_out += kept.len();
        Some(kept)
    }

    /// One pass over the characters: control/invisible removal, lowercasing, whitespace.
    fn clean_chars(&self, text: &str, report: &mut CleanReport) -> String {
        let cfg = &self.config;
        if cfg.collapse_whitespace && text.is_ascii() {
            return self.clean_ascii(text.as_bytes(), report);
        }
        let mut out = String::with_capacity(text.len());
        // Whitespace state: a pending space, and newlines seen since the last visible char.
        let mut pending_space = false;
        let mut newlines = 0usize;
        for c in text.chars() {
            if cfg.remove_control {
                if c.is_control() && c != '\n' && c != '\t' {
                    report.control_chars_removed += 1;
                    continue;
                }
                if is_invisible(c) {
                    report.invisible_chars_removed += 1;
                    continue;
                }
            }
            if !cfg.collapse_whitespace {
                push_case(&mut out, c, cfg.lowercase);
                continue;
            }
            if c == '\n' {
                newlines += 1;
                pending_space = false;
            } else if c.is_whitespace() {
                pending_space = true;
            } else {
                if !out.is_empty() {
                    if newlines > 0 {
                        out.push_str(if newlines > 1 { "\n\n" } else { "\n" });
                    } else if pending_space {
                        out.push(' ');
                    }
                }
                newlines = 0;
                pending_space = false;
                push_case(&mut out, c, cfg.lowercase);
            }
        }
        out
    }

    /// [`Cleaner::clean_chars`] for ASCII text with whitespace collapse on: the same rules on
    /// bytes (most of a typical corpus), several times faster than decoding characters.
    fn clean_ascii(&self, text: &[u8], report: &mut CleanReport) -> String {
        let cfg = &self.config;
        let mut out: Vec<u8> = Vec::with_capacity(text.len());
        let (mut pending_space, mut newlines) = (false, 0usize);
        for &b in text {
            let control = b < 0x20 && b != b'\n' && b != b'\t' || b == 0x7f;
            if control && cfg.remove_control {
                report.control_chars_removed += 1;
                continue;
            }
            if b == b'\n' {
                newlines += 1;
                pending_space = false;
            } else if b.is_ascii_whitespace() || b == 0x0b {
                pending_space = true;
            } else {
                if !out.is_empty() {
                    if newlines > 0 {
                        out.extend_from_slice(if newlines > 1 { b"\n\n" } else { b"\n" });
                    } else if pending_space {
                        out.push(b' ');
                    }
                }
                newlines = 0;
                pending_space = false;
                out.push(if cfg.lowercase {
                    b.to_ascii_lowercase()
                } else {
                    b
                });
            }
        }
        String::from_utf8(out).expect("ASCII in, ASCII out")
    }

    /// Boilerplate lines, duplicate-line and character-run filters. `None` if dropped.
    fn filter_lines(&self, text: &str, report: &mut CleanReport) -> Option<String> {
        let cfg = &self.config;
        let mut seen: HashSet<&str, BuildPreHashed> = HashSet::default();
        let (mut lines, mut duplicate_lines) = (0usize, 0usize);
        let mut out = String::with_capacity(text.len());
        let mut removed = 0usize;
        let boilerplate = cfg.boilerplate_filter && !self.phrases.is_empty();
        // One ASCII-lowercased copy (same byte offsets) serves every case-insensitive search.
        let lower = if boilerplate {
            text.to_ascii_lowercase()
        } else {
            String::new()
        };
        if boilerplate && lower.contains("lorem ipsum") {
            report.dropped_boilerplate += 1;
            return None;
        }
        let mut offset = 0;
        for line in text.split('\n') {
            let start = offset;
            offset += line.len() + 1;
            let trimmed = line.trim();
            if !trimmed.is_empty() {
                lines += 1;
                if !seen.insert(trimmed) {
                    duplicate_lines += 1;
                }
                let max = cfg.boilerplate_max_words;
                if boilerplate
                    && trimmed.split_whitespace().take(max + 1).count() <= max
                    && self.phrases.iter().any(|p| {
                        let lower_line = &lower[start..start + line.len()];
                        if p.is_ascii() {
                            lower_line.contains(p.as_str())
                        } else {
                            trimmed.to_lowercase().contains(p.as_str())
                        }
                    })
                {
                    removed += 1;
                    continue;
                }
            }
            if !out.is_empty() || !trimmed.is_empty() {
                out.push_str(line);
                out.push('\n');
            }
        }
        while out.ends_with('\n') {
            out.pop();
        }
        if lines > 0 && duplicate_lines as f64 / lines as f64 > cfg.max_duplicate_line_fraction {
            report.dropped_repeated_lines += 1;
            return None;
        }
        if char_run_fraction(&out, cfg.char_run_length) > cfg.max_char_run_fraction {
            report.dropped_repeated_chars += 1;
            return None;
        }
        report.boilerplate_lines_removed += removed;
        Some(out)
    }

    fn remove_stop_words(&self, text: &str, report: &mut CleanReport) -> String {
        let mut out = String::with_capacity(text.len());
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let mut first = true;
            for word in line.split_whitespace() {
                let bare = word
                    .trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase();
                if self.stop_words.contains(&bare) {
                    report.stop_words_removed += 1;
                    continue;
                }
                if !first {
                    out.push(' ');
                }
                out.push_str(word);
                first = false;
            }
        }
        out
    }
}

#[inline]
fn push_case(out: &mut String, c: char, lowercase: bool) {
    if lowercase {
        out.extend(c.to_lowercase());
    } else {
        out.push(c);
    }
}

/// The fraction of characters that sit in runs of at least `run` identical non-whitespace
/// characters (`!!!!!!!!!!`, `==========`).
pub fn char_run_fraction(text: &str, run: usize) -> f64 {
    if text.is_ascii() {
        return run_fraction(text.bytes(), run);
    }
    run_fraction(text.chars(), run)
}

fn run_fraction<T: PartialEq + Copy + Blank>(items: impl Iterator<Item = T>, run: usize) -> f64 {
    let (mut total, mut in_runs, mut current, mut len) = (0usize, 0usize, None, 0usize);
    for c in items {
        total += 1;
        if Some(c) == current && !c.blank() {
            len += 1;
        } else {
            if len >= run {
                in_runs += len;
            }
            current = Some(c);
            len = 1;
        }
    }
    if len >= run {
        in_runs += len;
    }
    if total == 0 {
        0.0
    } else {
        in_runs as f64 / total as f64
    }
}

trait Blank {
    fn blank(self) -> bool;
}

impl Blank for u8 {
    fn blank(self) -> bool {
        self.is_ascii_whitespace() || self == 0x0b
    }
}

impl Blank for char {
    fn blank(self) -> bool {
        self.is_whitespace()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(config: CleanConfig, text: &str) -> (Option<String>, CleanReport) {
        let mut report = CleanReport::default();
        let out = Cleaner::new(config).unwrap().clean(text, &mut report);
        (out, report)
    }

    #[test]
    fn normalizes_and_removes_invisible_characters() {
        let (out, report) = clean(
            CleanConfig::new(),
            "  Ｆｕｌｌ\u{200B}width   ﬁne\u{0007}\ttext  \r\n\n\n\nnext\u{FEFF} para ",
        );
        assert_eq!(out.as_deref(), Some("Fullwidth fine text\n\nnext para"));
        assert_eq!(report.nfkc_changed, 1);
        assert_eq!(report.invisible_chars_removed, 2);
        assert_eq!(report.control_chars_removed, 2); // BEL and CR
        assert_eq!(report.documents_out, 1);
    }

    #[test]
    fn lowercases_and_removes_stop_words_when_asked() {
        let config = CleanConfig::new()
            .with_lowercase(true)
            .with_remove_stop_words(true);
        let (out, report) = clean(config, "The Cat sat ON the mat.");
        assert_eq!(out.as_deref(), Some("cat sat mat."));
        assert_eq!(report.stop_words_removed, 3);
    }

    #[test]
    fn filters_count_every_drop() {
        let cleaner = Cleaner::new(CleanConfig::new().with_min_words(3)).unwrap();
        let mut report = CleanReport::default();
        let docs = [
            "too short",
            "same line here\nsame line here\nsame line here\nother line",
            "ok words !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            "Lorem ipsum dolor sit amet, consectetur.",
            "\u{200B}\u{200B}   ",
            "A real document that stays.\nWe use cookies. Accept cookies?\nMore real text here.",
        ];
        let kept: Vec<_> = docs
            .iter()
            .filter_map(|d| cleaner.clean(d, &mut report))
            .collect();
        assert_eq!(
            kept,
            vec!["A real document that stays.\nMore real text here."]
        );
        assert_eq!(report.documents_in, 6);
        assert_eq!(report.dropped_too_short, 1);
        assert_eq!(report.dropped_repeated_lines, 1);
        assert_eq!(report.dropped_repeated_chars, 1);
        assert_eq!(report.dropped_boilerplate, 1);
        assert_eq!(report.dropped_empty, 1);
        assert_eq!(report.boilerplate_lines_removed, 1);
        assert_eq!(report.dropped(), 5);
    }

    #[test]
    fn everything_off_keeps_the_text() {
        let config = CleanConfig::new()
            .with_nfkc(false)
            .with_remove_control(false)
            .with_collapse_whitespace(false)
            .with_boilerplate_filter(false);
        let text = "ﬁ  a\u{200B}b\n\n\n\nc";
        assert_eq!(clean(config, text).0.as_deref(), Some(text));
    }

    #[test]
    fn bad_config_is_an_error() {
        assert!(Cleaner::new(CleanConfig::new().with_max_char_run_fraction(1.5)).is_err());
        assert!(Cleaner::new(CleanConfig::new().with_min_words(5).with_max_words(2)).is_err());
    }

    /// Issue 14: `--max-words 1e8` let a 50 MB one-line document through to the tokenizer,
    /// which took 13 GB for it.
    #[test]
    fn max_words_of_1e8_is_a_limit_error() {
        let err = Cleaner::new(CleanConfig::new().with_max_words(100_000_000)).unwrap_err();
        assert!(matches!(err, DataError::Limit(_)), "{err}");
        assert!(Cleaner::new(CleanConfig::new().with_max_words(1_000_000)).is_ok());
    }
}
