//! tokenizer.json files written by HuggingFace's Python `tokenizers` (fixtures from
//! `scripts/make_tokenizer_fixtures.py`) load into kiln's `Tokenizer` and give the ids and
//! decodings Python gave.

use kiln_data::Tokenizer;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cases() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer_cases.json")).unwrap())
        .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn byte_level_bpe_matches_python() {
    let tok = Tokenizer::from_file(fixture("bpe_tokenizer.json")).unwrap();
    assert_eq!(tok.document_separator(), tok.token_to_id("<|endoftext|>"));
    for case in cases()["bpe"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, ids(&case["ids"]), "{text:?}");
        assert_eq!(tok.decode(&got).unwrap(), case["decoded"].as_str().unwrap());
        assert_eq!(tok.decode(&got).unwrap(), text, "byte-level BPE round trip");
    }
}

#[test]
fn wordpiece_matches_python() {
    let tok = Tokenizer::from_file(fixture("wordpiece_tokenizer.json")).unwrap();
    let special = tok.bert_special_tokens().unwrap();
    assert_eq!(special.ids(), [0, 1, 2, 3, 4]);
    for case in cases()["wordpiece"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, ids(&case["ids"]), "{text:?}");
        assert_eq!(
            tok.encode_with_special_tokens(text).unwrap(),
            ids(&case["ids_with_special_tokens"]),
            "{text:?}"
        );
        assert_eq!(tok.decode(&got).unwrap(), case["decoded"].as_str().unwrap());
    }
}
