//! End-to-end preparation: files with planted duplicates and bad lines → shards → the
//! datasets and batchers that training uses.

use std::io::Write;
use std::path::PathBuf;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::Device;
use kiln_data::prepare::{PrepareConfig, PrepareStats, TokenizerSource, prepare_corpus};
use kiln_data::synthetic::{Planted, SyntheticConfig, planted_corpus};
use kiln_data::{
    LmBatcher, MlmBatcher, MlmConfig, MlmDataset, PackedLmDataset, ShardMeta, Tokenizer,
    WithSpecialTokens,
};

/// Writes the corpus half as a text file and half as JSONL, with one bad line in each and a
/// missing file; returns the inputs and the planted counts (exact, near).
fn write_inputs(dir: &std::path::Path) -> (Vec<PathBuf>, usize, usize, usize) {
    let corpus = planted_corpus(&SyntheticConfig {
        unique_docs: 300,
        exact_copies: 40,
        near_copies: 40,
        min_words: 30,
        max_words: 120,
        ..Default::default()
    });
    let half = corpus.documents.len() / 2;
    let txt = dir.join("a.txt");
    let mut f = std::fs::File::create(&txt).unwrap();
    for d in &corpus.documents[..half] {
        write!(f, "{d}\n\n").unwrap();
    }
    f.write_all(b"a document with a \xff bad byte\n\n").unwrap();
    let jsonl = dir.join("b.jsonl");
    let mut f = std::fs::File::create(&jsonl).unwrap();
    for d in &corpus.documents[half..] {
        writeln!(f, "{}", serde_json::json!({ "text": d, "source": "test" })).unwrap();
    }
    writeln!(f, "{{\"text\": ").unwrap();
    let count = |p: fn(&Planted) -> bool| corpus.truth.iter().filter(|t| p(t)).count();
    let exact = count(|t| matches!(t, Planted::ExactCopyOf(_)));
    let near = count(|t| matches!(t, Planted::NearCopyOf(_)));
    (
        vec![txt, jsonl, dir.join("missing.txt")],
        corpus.documents.len(),
        exact,
        near,
    )
}

fn prepare(tokenizer: TokenizerSource) -> (tempfile::TempDir, PrepareStats, usize, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, docs, exact, near) = write_inputs(dir.path());
    let mut config = PrepareConfig::new(inputs, dir.path().join("out"));
    config.tokenizer = tokenizer;
    config.val_fraction = 0.1;
    config.shard_tokens = 5_000;
    config.batch_docs = 64;
    let stats = prepare_corpus(&config).unwrap();
    (dir, stats, docs, exact, near)
}

#[test]
fn prepares_a_corpus_and_feeds_the_gpt_batcher() {
    let (dir, stats, docs, exact, near) = prepare(TokenizerSource::TrainBpe(600));
    let out = dir.path().join("out");
    assert_eq!(stats.documents_in, docs);
    assert_eq!(stats.exact_duplicates, exact);
    assert_eq!(stats.near_duplicates, near);
    assert_eq!(stats.documents_out, docs - exact - near);
    assert_eq!(stats.removed_by_cleaning, 0);
    assert_eq!(
        (
            stats.unreadable_files,
            stats.invalid_utf8_lines,
            stats.malformed_lines
        ),
        (1, 1, 1)
    );
    assert!(
        stats
            .input
            .issues
            .iter()
            .any(|i| i.contains("a.txt:") && i.contains("invalid UTF-8"))
    );
    assert_eq!(
        stats.train_documents + stats.val_documents,
        stats.documents_out
    );
    assert!(stats.val_documents > 0 && stats.val_documents < stats.documents_out / 4);

    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    for key in [
        "documents_in",
        "exact_duplicates",
        "near_duplicates",
        "documents_out",
        "tokens",
        "bytes_in",
    ] {
        assert!(written[key].is_u64(), "stats.json lacks {key}");
    }

    let meta = ShardMeta::load(&out).unwrap();
    assert!(meta.splits["train"].len() > 1, "expected several shards");
    let tokenizer = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.vocab_size(), meta.vocab_size);
    assert_eq!(Some(stats.separator), tokenizer.document_separator());

    let seq_len = 32;
    let train = PackedLmDataset::open(&out, seq_len).unwrap();
    assert_eq!(train.tokens(), stats.train_tokens);
    assert_eq!(
        train.len() as u64,
        (stats.train_tokens - 1) / seq_len as u64
    );
    let val = PackedLmDataset::open_split(&out, "val", seq_len).unwrap();
    assert_eq!(val.tokens(), stats.val_tokens);

    // The token stream decodes back to the kept documents, separated by <|endoftext|>.
    let first: Vec<u32> = (0..4)
        .flat_map(|i| train.get(i).unwrap()[..seq_len].to_vec())
        .collect();
    let text = tokenizer.decode(&first).unwrap();
    let kept = std::fs::read_to_string(out.join("documents.jsonl")).unwrap();
    let kept: Vec<String> = kept
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kept.len(), stats.documents_out);
    let head = text
        .split(kiln_data::tokenizer::END_OF_TEXT)
        .next()
        .unwrap();
    assert!(
        head.len() > 20 && kept.iter().any(|d| d.starts_with(head)),
        "{head:?}"
    );

    let batch = LmBatcher.batch(
        vec![train.get(0).unwrap(), train.get(1).unwrap()],
        &Device::flex(),
    );
    assert_eq!(batch.inputs.dims(), [2, seq_len]);
    assert_eq!(batch.target_tokens(), 2 * seq_len);
}

#[test]
fn wordpiece_shards_feed_the_bert_batcher() {
    let (dir, stats, ..) = prepare(TokenizerSource::TrainWordPiece {
        vocab_size: 500,
        lowercase: true,
    });
    let out = dir.path().join("out");
    let tokenizer = Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let special = tokenizer.bert_special_tokens().unwrap();
    assert_eq!(stats.separator, special.sep);
    let max_len = 64;
    let windows = PackedLmDataset::open(&out, max_len - 3).unwrap();
    let seqs = WithSpecialTokens::new(windows, special.cls, special.sep);
    let mlm = MlmDataset::new(
        seqs,
        MlmConfig::for_bert(tokenizer.vocab_size(), special, 5),
    )
    .unwrap();
    let items: Vec<_> = (0..4).map(|i| mlm.get(i).unwrap()).collect();
    assert!(
        items
            .iter()
            .all(|i| i.input_ids.len() == max_len && i.input_ids[0] == special.cls)
    );
    let batch = MlmBatcher::new(special.pad).batch(items.clone(), &Device::flex());
    assert_eq!(batch.input_ids.dims(), [4, max_len]);
    assert!(batch.masked_tokens() >= 4 * 8);

    // Through Burn's loader, with worker threads (batches may arrive in any order): the same
    // masks as direct access.
    let loader = DataLoaderBuilder::new(MlmBatcher::new(special.pad))
        .batch_size(4)
        .num_workers(2)
        .set_device(Device::flex())
        .build(mlm);
    let ids = |b: &kiln_data::MlmBatch| -> Vec<i64> {
        b.input_ids
            .to_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap()
    };
    let expected = ids(&batch);
    assert!(loader.iter().any(|b| ids(&b.unwrap()) == expected));
}

#[test]
fn strict_mode_stops_at_the_first_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, ..) = write_inputs(dir.path());
    let mut config = PrepareConfig::new(inputs, dir.path().join("out"));
    config.tokenizer = TokenizerSource::TrainBpe(300);
    config.strict = true;
    let err = prepare_corpus(&config).unwrap_err();
    assert!(
        err.to_string().contains("a.txt:") && err.to_string().contains("invalid UTF-8"),
        "{err}"
    );
}

/// The output folder's files, without the contents of hidden entries.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Issue 14: `prepare_data --input out/documents.jsonl --output out` truncated its own input
/// before reading it and exited 0 with nothing. The output is now written beside and moved
/// into place at the end, so the input is read whole first.
#[test]
fn output_folder_holding_its_input_is_read_before_it_is_replaced() {
    let (dir, first, ..) = prepare(TokenizerSource::TrainBpe(600));
    let out = dir.path().join("out");
    let old_shards = ShardMeta::load(&out).unwrap().splits["train"].len();
    let mut config = PrepareConfig::new(vec![out.join("documents.jsonl")], &out);
    config.tokenizer = TokenizerSource::Load(out.join("tokenizer.json"));
    config.val_fraction = 0.1;
    config.shard_tokens = 1_000_000; // one shard now: the old ones must go
    let second = prepare_corpus(&config).unwrap();
    assert_eq!(second.documents_in, first.documents_out);
    assert_eq!(second.documents_out, first.documents_out);
    assert_eq!(second.tokens, first.tokens);
    assert!(old_shards > 1);
    assert_eq!(
        listing(&out),
        [
            // What kiln wrote here, so that it may replace it (and nothing else).
            ".kiln-output",
            "documents.jsonl",
            "meta.json",
            "stats.json",
            "tokenizer.json",
            "train-00000.bin",
            "val-00000.bin"
        ]
    );
    let train = PackedLmDataset::open(&out, 16).unwrap();
    assert_eq!(train.tokens(), second.train_tokens);
}

/// A run that fails (here: its tokenizer file is missing, found after the documents were
/// read and deduplicated) leaves the previous output as it was, and no temporary folder.
#[test]
fn failed_preparation_leaves_the_previous_output_intact() {
    let (dir, first, ..) = prepare(TokenizerSource::TrainBpe(300));
    let out = dir.path().join("out");
    let before = listing(&out);
    let read = |name: &str| std::fs::read(out.join(name)).unwrap();
    let (meta, docs) = (read("meta.json"), read("documents.jsonl"));
    let mut config = PrepareConfig::new(vec![out.join("documents.jsonl")], &out);
    config.tokenizer = TokenizerSource::Load(dir.path().join("missing-tokenizer.json"));
    assert!(matches!(
        prepare_corpus(&config),
        Err(kiln_data::DataError::Io { .. })
    ));
    assert_eq!(listing(&out), before);
    assert_eq!((read("meta.json"), read("documents.jsonl")), (meta, docs));
    assert_eq!(
        PackedLmDataset::open(&out, 16).unwrap().tokens(),
        first.train_tokens
    );
}

/// An input folder that holds the output folder would read the output while writing it.
#[test]
fn input_folder_holding_the_output_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "some text\n").unwrap();
    let config = PrepareConfig::new(vec![dir.path().to_path_buf()], dir.path().join("out"));
    let err = prepare_corpus(&config).unwrap_err();
    assert!(err.to_string().contains("holds the output folder"), "{err}");
    assert!(!dir.path().join("out").exists());
}

/// Issue 14: `--train-bpe 1e9` aborted on allocation in the trainer, after the whole corpus
/// had been cleaned and deduplicated; `--batch-docs 1e10` likewise. Both are refused before
/// any input is read.
#[test]
fn train_bpe_vocab_of_1e9_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PrepareConfig::new(vec![dir.path().join("missing.txt")], dir.path());
    for source in [
        TokenizerSource::TrainBpe(1_000_000_000),
        TokenizerSource::TrainWordPiece {
            vocab_size: 1_000_000_000,
            lowercase: true,
        },
    ] {
        config.tokenizer = source;
        let err = prepare_corpus(&config).unwrap_err();
        assert!(matches!(err, kiln_data::DataError::Limit(_)), "{err}");
    }
    config.tokenizer = TokenizerSource::TrainBpe(300);
    config.batch_docs = 10_000_000_000;
    assert!(matches!(
        prepare_corpus(&config),
        Err(kiln_data::DataError::Limit(_))
    ));
    let err = Tokenizer::train_byte_level_bpe(["a b"].iter(), 1_000_000_000, &[]).unwrap_err();
    assert!(matches!(err, kiln_data::DataError::Limit(_)), "{err}");
}
