//! Fuzz targets for everything kiln-data reads from files it did not write: shard folders
//! (`meta.json`), tokenizer files, raw JSONL/text corpora and classification JSONL/CSV. Each
//! feeds mutations of a committed seed corpus (`tests/fuzz_corpus/<what>/`) to the loader and
//! fails on a panic; refusals are typed errors. `KILN_FUZZ_CASES` sets the number of inputs.

use std::path::{Path, PathBuf};

use kiln_base::fuzz;
use kiln_data::classification::ClassificationData;
use kiln_data::input::DocumentReader;
use kiln_data::{DataError, PackedLmDataset, ShardCheck, TokenShards, Tokenizer};

fn corpus(what: &str) -> Vec<Vec<u8>> {
    fuzz::corpus(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz_corpus")
            .join(what),
    )
}

/// Writes `bytes` to `path` (the loaders under test read files).
fn put(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).expect("a writable temporary folder");
    path.to_path_buf()
}

/// The shard files the `meta.json` seeds describe (their checksums are in the seeds): ids
/// `(i·a + b) mod 50` as little-endian `u16`.
fn shard_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, n, a, b) in [
        ("train-00000.bin", 40u16, 7, 3),
        ("train-00001.bin", 25, 11, 1),
        ("val-00000.bin", 12, 13, 0),
    ] {
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| ((i * a + b) % 50).to_le_bytes())
            .collect();
        put(&dir.path().join(name), &bytes);
    }
    dir
}

#[test]
fn fuzz_shards() {
    let dir = shard_folder();
    // The seeds' checksums match these files: the unmutated seed opens fully.
    std::fs::write(dir.path().join("meta.json"), &corpus("shards")[3]).unwrap();
    assert_eq!(TokenShards::open(dir.path(), "train").unwrap().0.len(), 65);
    fuzz::run("shards", fuzz::mutated(corpus("shards")), |bytes| {
        put(&dir.path().join("meta.json"), &bytes);
        let mut opened = 0;
        for check in [ShardCheck::Full, ShardCheck::Fast] {
            for split in ["train", "val"] {
                if let Ok(ds) = PackedLmDataset::open_split_with(dir.path(), split, 3, check) {
                    for i in 0..burn::data::dataset::Dataset::len(&ds) {
                        ds.window(i)?;
                    }
                    opened += 1;
                }
            }
        }
        if opened > 0 {
            Ok(opened)
        } else {
            Err(DataError::EmptyCorpus)
        }
    });
}

#[test]
fn fuzz_tokenizer() {
    fuzz::run("tokenizer", fuzz::mutated(corpus("tokenizer")), |bytes| {
        let json = String::from_utf8(bytes).map_err(|_| DataError::EmptyCorpus)?;
        let mut tokenizer = Tokenizer::from_json(&json)?;
        let ids = tokenizer.encode("hello world, café")?;
        tokenizer.decode(&ids)?;
        tokenizer.encode_with_special_tokens("a b")?;
        tokenizer.ensure_document_separator()?;
        Ok::<_, DataError>(tokenizer.vocab_size())
    });
}

#[test]
fn fuzz_documents() {
    let dir = tempfile::tempdir().unwrap();
    fuzz::run("documents", fuzz::mutated(corpus("documents")), |bytes| {
        let mut documents = 0;
        // By extension, and by content (an extension that says nothing).
        for name in ["in.jsonl", "in.txt", "in.data"] {
            let path = put(&dir.path().join(name), &bytes);
            for strict in [false, true] {
                let mut reader = DocumentReader::new([&path], strict);
                documents += reader.by_ref().filter(Result::is_ok).count();
                let _ = reader.report();
            }
        }
        Ok::<_, DataError>(documents)
    });
}

#[test]
fn fuzz_classification() {
    let dir = tempfile::tempdir().unwrap();
    fuzz::run(
        "classification",
        fuzz::mutated(corpus("classification")),
        |bytes| {
            let mut examples = None;
            for name in ["in.jsonl", "in.csv", "in.data"] {
                let path = put(&dir.path().join(name), &bytes);
                for strict in [false, true] {
                    if let Ok(data) = ClassificationData::load(&path, strict) {
                        assert!(data.examples.iter().all(|e| e.label < data.num_classes()));
                        examples = Some(data.examples.len());
                    }
                }
            }
            examples.ok_or(DataError::EmptyCorpus)
        },
    );
}
