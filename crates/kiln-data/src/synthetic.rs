//! Synthetic corpora with planted exact and near duplicates, for tests and benchmarks: the
//! ground truth of every document is known, so recall and false removals can be measured.

use crate::hash::SplitMix64;

/// What a generated document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planted {
    /// An original document.
    Unique,
    /// The original number `0` (index into the documents) with only case, whitespace or
    /// Unicode-form changes.
    ExactCopyOf(usize),
    /// The original with a few words replaced, inserted or deleted and punctuation or case
    /// changed.
    NearCopyOf(usize),
}

/// Sizes and seeds of a [`planted_corpus`].
#[derive(Clone, Debug)]
pub struct SyntheticConfig {
    /// Original documents.
    pub unique_docs: usize,
    /// Exact copies planted (of random originals).
    pub exact_copies: usize,
    /// Near copies planted.
    pub near_copies: usize,
    /// Shortest document, in words.
    pub min_words: usize,
    /// Longest document, in words.
    pub max_words: usize,
    /// Fraction of words a near copy changes (at least one edit is always made).
    pub edit_fraction: f64,
    /// Distinct words to draw from (Zipf-like frequencies).
    pub vocabulary: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            unique_docs: 1000,
            exact_copies: 100,
            near_copies: 100,
            min_words: 60,
            max_words: 300,
            edit_fraction: 0.03,
            vocabulary: 5000,
            seed: 42,
        }
    }
}

/// A generated corpus and the truth about each document.
#[derive(Clone, Debug)]
pub struct SyntheticCorpus {
    /// The documents; every copy comes after its original. Documents contain no blank lines.
    pub documents: Vec<String>,
    /// What each document is.
    pub truth: Vec<Planted>,
}

/// Generates a corpus with planted duplicates.
pub fn planted_corpus(config: &SyntheticConfig) -> SyntheticCorpus {
    let mut rng = SplitMix64::new(config.seed);
    let vocab = vocabulary(config.vocabulary.max(10), &mut rng);
    let originals: Vec<Vec<String>> = (0..config.unique_docs)
        .map(|_| {
            let span = config.max_words.saturating_sub(config.min_words) as u64 + 1;
            let n = config.min_words.max(1) + rng.below(span) as usize;
            (0..n)
                .map(|_| pick_word(&vocab, &mut rng).to_string())
                .collect()
        })
        .collect();

    // (sort key, text, truth with the original's position among originals)
    let mut items: Vec<(f64, String, Planted)> = originals
        .iter()
        .enumerate()
        .map(|(i, words)| (i as f64, render(words, &mut rng), Planted::Unique))
        .collect();
    let n = config.unique_docs;
    if n > 0 {
        for c in 0..config.exact_copies + config.near_copies {
            let src = rng.below(n as u64) as usize;
            let key = src as f64 + 0.5 + rng.unit() * (n - src) as f64;
            let (text, truth) = if c < config.exact_copies {
                (
                    exact_variant(&items[src].1, &mut rng),
                    Planted::ExactCopyOf(src),
                )
            } else {
                let words = near_words(&originals[src], &vocab, config.edit_fraction, &mut rng);
                (near_render(&words, &mut rng), Planted::NearCopyOf(src))
            };
            items.push((key, text, truth));
        }
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| items[a].0.total_cmp(&items[b].0).then(a.cmp(&b)));
    let mut new_index = vec![0; items.len()];
    for (pos, &i) in order.iter().enumerate() {
        new_index[i] = pos;
    }
    let mut documents = Vec::with_capacity(items.len());
    let mut truth = Vec::with_capacity(items.len());
    for &i in &order {
        documents.push(items[i].1.clone());
        truth.push(match items[i].2 {
            Planted::Unique => Planted::Unique,
            Planted::ExactCopyOf(s) => Planted::ExactCopyOf(new_index[s]),
            Planted::NearCopyOf(s) => Planted::NearCopyOf(new_index[s]),
        });
    }
    SyntheticCorpus { documents, truth }
}

fn vocabulary(size: usize, rng: &mut SplitMix64) -> Vec<String> {
    const ONSETS: [&str; 20] = [
        "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr",
        "br", "ch",
    ];
    const VOWELS: [&str; 8] = ["a", "e", "i", "o", "u", "ai", "ou", "ea"];
    const CODAS: [&str; 8] = ["", "", "n", "r", "s", "t", "nd", "ng"];
    let mut seen = std::collections::HashSet::new();
    let mut words = Vec::with_capacity(size);
    while words.len() < size {
        let syllables = 1 + rng.below(3) as usize;
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(ONSETS[rng.below(20) as usize]);
            w.push_str(VOWELS[rng.below(8) as usize]);
            w.push_str(CODAS[rng.below(8) as usize]);
        }
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

/// Zipf-like: low indices are much more frequent.
fn pick_word<'a>(vocab: &'a [String], rng: &mut SplitMix64) -> &'a str {
    let u = rng.unit();
    &vocab[((u * u * u) * vocab.len() as f64) as usize % vocab.len()]
}

/// Words into sentences of 5-16 words (capitalized, commas, full stops), 2-4 sentences a line.
fn render(words: &[String], rng: &mut SplitMix64) -> String {
    let mut out = String::new();
    let (mut in_sentence, mut sentence_len, mut sentences_on_line) = (0usize, 0usize, 0usize);
    for (i, w) in words.iter().enumerate() {
        if in_sentence == 0 {
            sentence_len = 5 + rng.below(12) as usize;
            let mut cs = w.chars();
            if let Some(f) = cs.next() {
                out.extend(f.to_uppercase());
                out.push_str(cs.as_str());
            }
        } else {
            out.push_str(w);
        }
        in_sentence += 1;
        let last = i + 1 == words.len();
        if in_sentence >= sentence_len || last {
            out.push('.');
            in_sentence = 0;
            sentences_on_line += 1;
            if !last {
                if sentences_on_line >= 2 + rng.below(3) as usize {
                    out.push('\n');
                    sentences_on_line = 0;
                } else {
                    out.push(' ');
                }
            }
        } else if rng.below(10) == 0 {
            out.push_str(", ");
        } else {
            out.push(' ');
        }
    }
    out
}

/// Case, whitespace and Unicode-form changes only.
fn exact_variant(text: &str, rng: &mut SplitMix64) -> String {
    match rng.below(4) {
        0 => text.to_uppercase(),
        1 => text.replace(' ', "  \t").replace('\n', " \n  "),
        2 => format!("  {}  ", text.to_lowercase()),
        // Full-width letters are NFKC-equivalent to ASCII.
        _ => text.replace('a', "\u{FF41}").replace('e', "\u{FF45}"),
    }
}

fn near_words(
    words: &[String],
    vocab: &[String],
    fraction: f64,
    rng: &mut SplitMix64,
) -> Vec<String> {
    let mut out = words.to_vec();
    let edits = ((words.len() as f64 * fraction).round() as usize).max(1);
    for _ in 0..edits {
        let at = rng.below(out.len() as u64) as usize;
        match rng.below(4) {
            0 if out.len() > 2 => {
                out.remove(at);
            }
            1 => out.insert(at, pick_word(vocab, rng).to_string()),
            _ => out[at] = pick_word(vocab, rng).to_string(),
        }
    }
    out
}

/// Renders with different sentence breaks and punctuation, sometimes a case change.
fn near_render(words: &[String], rng: &mut SplitMix64) -> String {
    let text = render(words, rng);
    match rng.below(3) {
        0 => text.replace('.', "!"),
        1 => text.to_lowercase(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_follow_their_originals_and_have_no_blank_lines() {
        let c = planted_corpus(&SyntheticConfig {
            unique_docs: 50,
            exact_copies: 10,
            near_copies: 10,
            ..Default::default()
        });
        assert_eq!(c.documents.len(), 70);
        for (i, t) in c.truth.iter().enumerate() {
            match *t {
                Planted::ExactCopyOf(s) | Planted::NearCopyOf(s) => {
                    assert!(s < i);
                    assert_eq!(c.truth[s], Planted::Unique);
                }
                Planted::Unique => {}
            }
            assert!(!c.documents[i].contains("\n\n"));
        }
        let again = planted_corpus(&SyntheticConfig {
            unique_docs: 50,
            exact_copies: 10,
            near_copies: 10,
            ..Default::default()
        });
        assert_eq!(c.documents, again.documents);
    }
}
