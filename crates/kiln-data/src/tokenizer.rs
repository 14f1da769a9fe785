//! One [`Tokenizer`] type for kiln's training code, whatever the vocabulary: HuggingFace's
//! `tokenizers` (a loaded `tokenizer.json`, or byte-level BPE / WordPiece trained here on a
//! corpus) or the [`CharTokenizer`].
//!
//! Byte-level BPE (GPT-2, Radford et al. 2019) has the 256 bytes in its base vocabulary, so
//! every string encodes and `decode(encode(x)) == x`. WordPiece (BERT, Devlin et al. 2019)
//! lowercases (optionally), splits on whitespace and punctuation, and marks word-internal
//! pieces with `##`.
//!
//! Training is deterministic: the same texts always give the same vocabulary and ids, in one
//! process or across runs (HuggingFace's WordPiece trainer alone does not promise that; the
//! private `SortedPieceTrainer` below says where hash order leaked and how it is kept out).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer, WordPieceTrainerBuilder};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::{BertNormalizer, NormalizerWrapper};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Trainer};

use crate::limits::VOCAB;
use crate::{CharTokenizer, DataError};

/// GPT-2's end-of-text token, the document separator of byte-level BPE vocabularies trained
/// here.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// The special tokens of WordPiece vocabularies trained here, with ids 0 to 4 in this order.
pub const BERT_SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A tokenizer: HuggingFace's or character-level.
#[derive(Clone, Debug)]
pub enum Tokenizer {
    /// A HuggingFace `tokenizers` pipeline (BPE, WordPiece, Unigram, ... as in `tokenizer.json`).
    Hf(Box<tokenizers::Tokenizer>),
    /// One id per character.
    Char(CharTokenizer),
}

/// The ids of BERT's special tokens in a vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BertSpecialTokens {
    /// `[PAD]`.
    pub pad: u32,
    /// `[UNK]`.
    pub unk: u32,
    /// `[CLS]`.
    pub cls: u32,
    /// `[SEP]`.
    pub sep: u32,
    /// `[MASK]`.
    pub mask: u32,
}

impl BertSpecialTokens {
    /// All five ids.
    pub fn ids(&self) -> [u32; 5] {
        [self.pad, self.unk, self.cls, self.sep, self.mask]
    }
}

impl Tokenizer {
    /// Loads a HuggingFace `tokenizer.json`, or a character vocabulary saved by
    /// [`Tokenizer::save`]; a file of more than `TEXT_FILE_BYTES` is refused before it is read
    /// whole (the largest real ones, Gemma's, are about 34 MB).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let bytes = kiln_base::limits::read_bounded(path, &kiln_base::limits::TEXT_FILE_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|e| DataError::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            DataError::Tokenizer(m) => DataError::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses what [`Tokenizer::to_json`] wrote, or a HuggingFace `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Self, DataError> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(DataError::tokenizer)?;
        if value.get("type").and_then(|t| t.as_str()) == Some("kiln-char") {
            let chars = value
                .get("chars")
                .and_then(|c| c.as_str())
                .ok_or_else(|| DataError::Tokenizer("kiln-char without \"chars\"".into()))?;
            return Ok(Self::Char(CharTokenizer::from_chars(chars.chars())?));
        }
        let hf: tokenizers::Tokenizer =
            serde_json::from_value(value).map_err(DataError::tokenizer)?;
        Ok(Self::Hf(Box::new(hf)))
    }

    /// The JSON form ([`Tokenizer::from_json`] reads it back); HuggingFace's format for `Hf`.
    pub fn to_json(&self) -> Result<String, DataError> {
        match self {
            Self::Hf(t) => t.to_string(false).map_err(DataError::tokenizer),
            Self::Char(c) => Ok(serde_json::json!({
                "type": "kiln-char",
                "chars": c.chars().iter().collect::<String>(),
            })
            .to_string()),
        }
    }

    /// The SHA-256 of [`Tokenizer::to_json`]: the same ids for the same text exactly when two
    /// fingerprints agree (for a checkpoint to recognise the tokenizer it was trained with).
    pub fn fingerprint(&self) -> Result<String, DataError> {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.to_json()?.as_bytes());
        Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Writes [`Tokenizer::to_json`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        let path = path.as_ref();
        Ok(kiln_base::store::write_atomic(
            path,
            self.to_json()?.as_bytes(),
        )?)
    }

    /// A character vocabulary of `corpus`.
    pub fn char_level(corpus: &str) -> Result<Self, DataError> {
        Ok(Self::Char(CharTokenizer::from_corpus(corpus)?))
    }

    /// Trains GPT-2-style byte-level BPE on `texts` up to `vocab_size` ids (the 256 byte
    /// symbols, then `special_tokens`, then merges; training stops early when no pair occurs
    /// twice). Pass [`END_OF_TEXT`] as a special token for a document separator.
    pub fn train_byte_level_bpe<I, S>(
        texts: I,
        vocab_size: usize,
        special_tokens: &[&str],
    ) -> Result<Self, DataError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        // HuggingFace's trainer reserves room for the whole vocabulary before it starts.
        VOCAB.check("the vocabulary size to train", vocab_size as u64)?;
        let base = ByteLevel::alphabet().len() + special_tokens.len();
        if vocab_size < base {
            return Err(DataError::InvalidConfig(format!(
                "byte-level BPE needs a vocabulary of at least {base} (256 bytes and the special \
                 tokens), got {vocab_size}"
            )));
        }
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(added_tokens(special_tokens))
            .build();
        // Deterministic as it stands: every symbol a word starts as is one of the 256 byte
        // characters, given ids in sorted order, and ties between merges go to the smaller ids.
        // No prefix space and no normalizer, so decoding gives back exactly the input.
        let byte_level = ByteLevel::new(false, true, true);
        let mut tk = tokenizers::Tokenizer::new(ModelWrapper::BPE(BPE::default()));
        tk.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
        tk.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
        tk.with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)));
        tk.train(&mut TrainerWrapper::BpeTrainer(trainer), texts)
            .map_err(DataError::tokenizer)?;
        Ok(Self::Hf(Box::new(tk)))
    }

    /// Trains a BERT-style WordPiece vocabulary of `vocab_size` ids on `texts`, with
    /// [`BERT_SPECIAL_TOKENS`] at ids 0-4, BERT's normalizer (optionally lowercasing) and
    /// pre-tokenizer, and a post-processor that adds `[CLS]`/`[SEP]` when encoding with special
    /// tokens.
    pub fn train_wordpiece<I, S>(
        texts: I,
        vocab_size: usize,
        lowercase: bool,
    ) -> Result<Self, DataError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        VOCAB.check("the vocabulary size to train", vocab_size as u64)?;
        if vocab_size <= BERT_SPECIAL_TOKENS.len() {
            return Err(DataError::InvalidConfig(format!(
                "WordPiece vocabulary of {vocab_size} leaves no room past the special tokens"
            )));
        }
        let trainer = WordPieceTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .build();
        let mut tk = tokenizers::Tokenizer::new(ModelWrapper::WordPiece(WordPiece::default()));
        tk.with_normalizer(Some(NormalizerWrapper::BertNormalizer(
            BertNormalizer::new(true, true, None, lowercase),
        )))
        .map_err(DataError::tokenizer)?;
        tk.with_pre_tokenizer(Some(PreTokenizerWrapper::BertPreTokenizer(
            BertPreTokenizer,
        )));
        tk.with_decoder(Some(DecoderWrapper::WordPiece(WordPieceDecoder::default())));
        tk.train(&mut SortedPieceTrainer(trainer), texts)
            .map_err(DataError::tokenizer)?;
        let id = |t: &str| {
            tk.token_to_id(t)
                .ok_or_else(|| DataError::UnknownToken(t.into()))
        };
        let processing = BertProcessing::new(
            ("[SEP]".into(), id("[SEP]")?),
            ("[CLS]".into(), id("[CLS]")?),
        );
        tk.with_post_processor(Some(PostProcessorWrapper::Bert(processing)));
        Ok(Self::Hf(Box::new(tk)))
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Self::Hf(t) => Ok(t
                .encode_fast(text, false)
                .map_err(DataError::tokenizer)?
                .get_ids()
                .to_vec()),
            Self::Char(c) => c.encode(text),
        }
    }

    /// Token ids of `text` with the tokenizer's special tokens (`[CLS] … [SEP]` for BERT
    /// vocabularies; the same as [`Tokenizer::encode`] when it has no post-processor).
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Self::Hf(t) => Ok(t
                .encode_fast(text, true)
                .map_err(DataError::tokenizer)?
                .get_ids()
                .to_vec()),
            Self::Char(_) => self.encode(text),
        }
    }

    /// [`Tokenizer::encode`] of many texts, in parallel.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> Result<Vec<Vec<u32>>, DataError> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// The text of `ids` (special tokens included).
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        match self {
            Self::Hf(t) => t.decode(ids, false).map_err(DataError::tokenizer),
            Self::Char(c) => c.decode(ids),
        }
    }

    /// Number of ids, special and added tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Hf(t) => t.get_vocab_size(true),
            Self::Char(c) => c.vocab_size(),
        }
    }

    /// The id of a token string (a character, for character vocabularies).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Hf(t) => t.token_to_id(token),
            Self::Char(c) => {
                let mut chars = token.chars();
                match (chars.next(), chars.next()) {
                    (Some(ch), None) => c.chars().binary_search(&ch).ok().map(|i| i as u32),
                    _ => None,
                }
            }
        }
    }

    /// The id that separates documents in packed language-modeling data: the first of
    /// `<|endoftext|>`, `</s>`, `<eos>`, `[SEP]` in the vocabulary.
    pub fn document_separator(&self) -> Option<u32> {
        [END_OF_TEXT, "</s>", "<eos>", "<|end_of_text|>", "[SEP]"]
            .iter()
            .find_map(|t| self.token_to_id(t))
    }

    /// [`Tokenizer::document_separator`], adding [`END_OF_TEXT`] as a special token to a
    /// HuggingFace vocabulary that has none. A character vocabulary has no room for one: error.
    pub fn ensure_document_separator(&mut self) -> Result<u32, DataError> {
        if let Some(id) = self.document_separator() {
            return Ok(id);
        }
        match self {
            Self::Hf(t) => {
                t.add_special_tokens(added_tokens(&[END_OF_TEXT]))
                    .map_err(DataError::tokenizer)?;
                t.token_to_id(END_OF_TEXT)
                    .ok_or_else(|| DataError::UnknownToken(END_OF_TEXT.into()))
            }
            Self::Char(_) => Err(DataError::UnknownToken(END_OF_TEXT.into())),
        }
    }

    /// The ids of `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]` and `[MASK]`; an error naming the first
    /// one missing.
    pub fn bert_special_tokens(&self) -> Result<BertSpecialTokens, DataError> {
        let id = |t: &str| {
            self.token_to_id(t)
                .ok_or_else(|| DataError::UnknownToken(t.into()))
        };
        Ok(BertSpecialTokens {
            pad: id("[PAD]")?,
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            mask: id("[MASK]")?,
        })
    }
}

/// HuggingFace's WordPiece trainer, made deterministic.
///
/// The trainer gives each `##c` piece (character `c` inside a word) its id when it first meets
/// it while iterating a hash map of the corpus's words, so in an order that changes with every
/// map; and ids break ties between equally frequent merges, so the same corpus trained into
/// different vocabularies (HuggingFace `tokenizers` issue #1794). Here the `##c` pieces are
/// collected while the words are counted and handed to the trainer, sorted, as tokens to place
/// first (its "special tokens", right after the BERT ones): they are already in the vocabulary
/// when the trainer meets them, in an order that depends on the text alone. They stay ordinary
/// vocabulary entries: [`Trainer::train`] returns only [`BERT_SPECIAL_TOKENS`] as special.
struct SortedPieceTrainer(WordPieceTrainer);

impl Trainer for SortedPieceTrainer {
    type Model = ModelWrapper;

    fn should_show_progress(&self) -> bool {
        self.0.show_progress()
    }

    fn train(&self, model: &mut ModelWrapper) -> tokenizers::Result<Vec<AddedToken>> {
        let ModelWrapper::WordPiece(wordpiece) = model else {
            return Err("the WordPiece trainer needs a WordPiece model".into());
        };
        self.0.train(wordpiece)?;
        Ok(added_tokens(&BERT_SPECIAL_TOKENS))
    }

    fn feed<I, S, F>(&mut self, texts: I, words_of: F) -> tokenizers::Result<()>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
        F: Fn(&str) -> tokenizers::Result<Vec<String>> + Sync,
    {
        // The characters seen inside words (not first), whose `##` pieces the trainer adds.
        let inner = Mutex::new(BTreeSet::new());
        self.0.feed(texts, |text| {
            let words = words_of(text)?;
            let here: BTreeSet<char> = words.iter().flat_map(|w| w.chars().skip(1)).collect();
            inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(here);
            Ok(words)
        })?;
        let inner = inner
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut first = added_tokens(&BERT_SPECIAL_TOKENS);
        first.extend(
            inner
                .into_iter()
                .map(|c| AddedToken::from(format!("##{c}"), true)),
        );
        self.0.set_special_tokens(first);
        Ok(())
    }
}

fn added_tokens(tokens: &[&str]) -> Vec<AddedToken> {
    tokens
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    const CORPUS: &str = "The quick brown fox jumps over the lazy dog. \
        Byte-level BPE learns merges from pairs of bytes; WordPiece learns word pieces. \
        Ünïcödé text, emoji 🦀 and numbers 12345 all appear in this corpus, twice: \
        The quick brown fox jumps over the lazy dog.";

    fn bpe() -> &'static Tokenizer {
        static BPE_TOK: OnceLock<Tokenizer> = OnceLock::new();
        BPE_TOK.get_or_init(|| {
            let texts = CORPUS.split(". ").map(String::from).collect::<Vec<_>>();
            Tokenizer::train_byte_level_bpe(
                texts.into_iter().cycle().take(200),
                400,
                &[END_OF_TEXT],
            )
            .unwrap()
        })
    }

    #[test]
    fn bpe_learns_merges_and_saves() {
        let tok = bpe();
        assert!(
            tok.vocab_size() > 257 && tok.vocab_size() <= 400,
            "{}",
            tok.vocab_size()
        );
        let ids = tok.encode("The quick brown fox").unwrap();
        assert!(
            ids.len() < "The quick brown fox".len(),
            "no merges learned: {ids:?}"
        );
        assert_eq!(tok.document_separator(), tok.token_to_id(END_OF_TEXT));
        let texts = ["aa bb aa bb cc", "aa bb cc dd"];
        let mut plain = Tokenizer::train_byte_level_bpe(texts.iter(), 300, &[]).unwrap();
        assert_eq!(plain.document_separator(), None);
        let sep = plain.ensure_document_separator().unwrap();
        assert_eq!(plain.document_separator(), Some(sep));
        assert_eq!(plain.decode(&[sep]).unwrap(), END_OF_TEXT);
        let again = Tokenizer::from_json(&tok.to_json().unwrap()).unwrap();
        assert_eq!(
            again.encode("lazy dog 🦀").unwrap(),
            tok.encode("lazy dog 🦀").unwrap()
        );
    }

    #[test]
    fn wordpiece_has_bert_specials_and_adds_them() {
        let texts = CORPUS.split(". ").map(String::from).collect::<Vec<_>>();
        let tok =
            Tokenizer::train_wordpiece(texts.into_iter().cycle().take(100), 300, true).unwrap();
        let s = tok.bert_special_tokens().unwrap();
        assert_eq!(s.ids(), [0, 1, 2, 3, 4]);
        // The `##` pieces placed first for determinism are ordinary tokens, not special ones.
        assert!(tok.token_to_id("##o").is_some());
        let json: serde_json::Value = serde_json::from_str(&tok.to_json().unwrap()).unwrap();
        let added: Vec<&str> = json["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["content"].as_str().unwrap())
            .collect();
        assert_eq!(added, BERT_SPECIAL_TOKENS);
        let ids = tok.encode_with_special_tokens("the quick fox").unwrap();
        assert_eq!((ids[0], *ids.last().unwrap()), (s.cls, s.sep));
        assert_eq!(
            tok.decode(&tok.encode("the quick fox").unwrap()).unwrap(),
            "the quick fox"
        );
    }

    #[test]
    fn char_level_round_trips_and_saves() {
        let tok = Tokenizer::char_level("abc\n").unwrap();
        let ids = tok.encode("cab\n").unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), "cab\n");
        assert_eq!(tok.token_to_id("\n"), Some(0));
        let again = Tokenizer::from_json(&tok.to_json().unwrap()).unwrap();
        assert_eq!(again.encode("cab").unwrap(), tok.encode("cab").unwrap());
        assert!(matches!(tok.encode("z"), Err(DataError::UnknownChar('z'))));
        assert!(tok.bert_special_tokens().is_err());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Tokenizer::from_json("{not json").is_err());
        assert!(Tokenizer::from_file("/nonexistent/tokenizer.json").is_err());
        assert!(Tokenizer::train_byte_level_bpe(["a"].into_iter(), 100, &[]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn byte_level_bpe_decode_inverts_encode(text in any::<String>()) {
            let tok = bpe();
            let ids = tok.encode(&text).unwrap();
            prop_assert_eq!(tok.decode(&ids).unwrap(), text);
        }

        #[test]
        fn byte_level_bpe_round_trips_wordy_text(text in "[a-zA-Z .,!?'\n\t]{0,200}") {
            let tok = bpe();
            prop_assert_eq!(tok.decode(&tok.encode(&text).unwrap()).unwrap(), text);
        }
    }
}
