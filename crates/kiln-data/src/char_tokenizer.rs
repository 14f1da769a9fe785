//! A character-level tokenizer: one id per distinct character of the corpus it was built on.

use std::collections::BTreeSet;

use crate::DataError;

/// Maps each distinct character of a corpus to an id, in sorted character order (so the same
/// corpus always gives the same ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
}

impl CharTokenizer {
    /// The vocabulary of every character in `corpus`.
    pub fn from_corpus(corpus: &str) -> Result<Self, DataError> {
        let chars: Vec<char> = corpus
            .chars()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if chars.is_empty() {
            return Err(DataError::EmptyCorpus);
        }
        Ok(Self { chars })
    }

    /// A vocabulary of exactly these characters (sorted and deduplicated here), as saved by
    /// [`CharTokenizer::chars`].
    pub fn from_chars(chars: impl IntoIterator<Item = char>) -> Result<Self, DataError> {
        let chars: Vec<char> = chars
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if chars.is_empty() {
            return Err(DataError::EmptyCorpus);
        }
        Ok(Self { chars })
    }

    /// The vocabulary: the character of id `i` is `chars()[i]`.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Number of distinct characters.
    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    /// The ids of `text`; errors on a character outside the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        text.chars()
            .map(|c| {
                self.chars
                    .binary_search(&c)
                    .map(|i| i as u32)
                    .map_err(|_| DataError::UnknownChar(c))
            })
            .collect()
    }

    /// The text of `ids`; errors on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        ids.iter()
            .map(|&id| {
                self.chars
                    .get(id as usize)
                    .copied()
                    .ok_or(DataError::UnknownId(id as usize))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_corpus_and_sorts_the_vocabulary() {
        let text = "hello, wörld\n";
        let tok = CharTokenizer::from_corpus(text).unwrap();
        assert_eq!(tok.vocab_size(), 11); // h e l o , space w ö r d newline
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
        assert_eq!(tok.encode("\n").unwrap(), vec![0]);
    }

    #[test]
    fn unknown_input_is_an_error() {
        let tok = CharTokenizer::from_corpus("ab").unwrap();
        assert_eq!(tok.encode("abc"), Err(DataError::UnknownChar('c')));
        assert_eq!(tok.decode(&[0, 2]), Err(DataError::UnknownId(2)));
        assert_eq!(CharTokenizer::from_corpus(""), Err(DataError::EmptyCorpus));
    }
}
