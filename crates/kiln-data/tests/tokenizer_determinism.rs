//! Training a tokenizer twice on the same text gives the same vocabulary and ids, within one
//! process and across processes (HuggingFace's trainer iterates hash maps whose order changes
//! with every map and every run; kiln makes the result independent of that order).

use kiln_data::Tokenizer;
use kiln_data::tokenizer::END_OF_TEXT;

const CORPUS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog while the dogs sleep.",
    "Welcome to the tokenizers library: tokenization splits words into pieces.",
    "Sleeping foxes, jumping dogs and quickly running rabbits share the meadow.",
    "Pieces of words become tokens; tokens become ids; ids become embeddings.",
    "Ünïcödé letters, emoji 🦀 and numbers 12345 67890 appear here as well.",
    "Deterministic training means the same corpus always yields the same vocabulary.",
    "Hash maps iterate in an order that changes from one run to the next.",
    "Ties between equally frequent pairs must be broken the same way every time.",
];

/// Several passes over [`CORPUS`], so that pairs occur often enough to merge.
fn texts() -> impl Iterator<Item = &'static str> + Send {
    CORPUS.iter().copied().cycle().take(CORPUS.len() * 3)
}

fn wordpiece_json() -> String {
    Tokenizer::train_wordpiece(texts(), 250, true)
        .unwrap()
        .to_json()
        .unwrap()
}

fn bpe_json() -> String {
    Tokenizer::train_byte_level_bpe(texts(), 400, &[END_OF_TEXT])
        .unwrap()
        .to_json()
        .unwrap()
}

/// Set in a child process: the file it writes both vocabularies to.
const CHILD_OUTPUT: &str = "KILN_TOKENIZER_DETERMINISM_OUT";

#[test]
fn wordpiece_training_is_deterministic_within_a_process() {
    let first = wordpiece_json();
    for run in 1..8 {
        assert!(wordpiece_json() == first, "WordPiece run {run} differs");
    }
}

#[test]
fn byte_level_bpe_training_is_deterministic_within_a_process() {
    let first = bpe_json();
    for run in 1..8 {
        assert!(bpe_json() == first, "byte-level BPE run {run} differs");
    }
}

#[test]
fn training_is_deterministic_across_processes() {
    let both = || format!("{}\n{}", wordpiece_json(), bpe_json());
    if let Some(out) = std::env::var_os(CHILD_OUTPUT) {
        std::fs::write(out, both()).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mine = both();
    for child in 0..3 {
        let out = dir.path().join(format!("child{child}.json"));
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "training_is_deterministic_across_processes"])
            .env(CHILD_OUTPUT, &out)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(
            std::fs::read_to_string(&out).unwrap() == mine,
            "child process {child} trained a different vocabulary"
        );
    }
}

#[test]
fn larger_vocabularies_are_deterministic_too() {
    use kiln_data::synthetic::{SyntheticConfig, planted_corpus};
    let corpus = planted_corpus(&SyntheticConfig {
        unique_docs: 300,
        vocabulary: 2000,
        ..SyntheticConfig::default()
    });
    let train = || {
        let docs = corpus.documents.iter();
        let wordpiece = Tokenizer::train_wordpiece(docs.clone(), 1500, true).unwrap();
        let bpe = Tokenizer::train_byte_level_bpe(docs, 1500, &[END_OF_TEXT]).unwrap();
        (wordpiece.to_json().unwrap(), bpe.to_json().unwrap())
    };
    let first = train();
    for run in 1..3 {
        let again = train();
        assert!(again.0 == first.0, "WordPiece run {run} differs");
        assert!(again.1 == first.1, "byte-level BPE run {run} differs");
    }
}
