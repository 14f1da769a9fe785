//! The acceptance check for deduplication: a corpus generated in code with planted
//! exact and near duplicates; at the default threshold, exact and near recall must be at least
//! 0.95 and at most 1% of the unique documents may be removed.

use kiln_data::synthetic::{Planted, SyntheticConfig, planted_corpus};
use kiln_data::{CleanConfig, CorpusPipeline, DedupConfig, DedupMode, Verdict};

struct Scores {
    exact_recall: f64,
    near_recall: f64,
    unique_removed: f64,
}

fn run(config: &SyntheticConfig, dedup: DedupConfig, batch: usize) -> Scores {
    let corpus = planted_corpus(config);
    let mut pipeline = CorpusPipeline::new(CleanConfig::new(), dedup).unwrap();
    let mut verdicts = Vec::new();
    for chunk in corpus.documents.chunks(batch) {
        let out = pipeline.process_with_verdicts(chunk.to_vec());
        assert_eq!(
            out.len(),
            chunk.len(),
            "cleaning dropped a generated document"
        );
        verdicts.extend(out.into_iter().map(|(_, v)| v));
    }
    let (mut exact, mut exact_hit, mut near, mut near_hit, mut unique, mut unique_lost) =
        (0, 0, 0, 0, 0, 0);
    for (truth, verdict) in corpus.truth.iter().zip(&verdicts) {
        match truth {
            Planted::ExactCopyOf(_) => {
                exact += 1;
                exact_hit += matches!(verdict, Verdict::ExactDuplicate { .. }) as usize;
            }
            Planted::NearCopyOf(_) => {
                near += 1;
                near_hit += !verdict.is_unique() as usize;
            }
            Planted::Unique => {
                unique += 1;
                unique_lost += !verdict.is_unique() as usize;
            }
        }
    }
    let report = pipeline.report();
    assert_eq!(report.dedup.documents_in, corpus.documents.len());
    assert_eq!(
        report.dedup.documents_out + report.dedup.exact_duplicates + report.dedup.near_duplicates,
        report.dedup.documents_in
    );
    let s = Scores {
        exact_recall: exact_hit as f64 / exact.max(1) as f64,
        near_recall: near_hit as f64 / near.max(1) as f64,
        unique_removed: unique_lost as f64 / unique.max(1) as f64,
    };
    eprintln!(
        "exact recall {:.4}, near recall {:.4}, unique removed {:.4}",
        s.exact_recall, s.near_recall, s.unique_removed
    );
    s
}

#[test]
fn planted_duplicates_are_found_at_the_default_threshold() {
    let config = SyntheticConfig {
        unique_docs: 2000,
        exact_copies: 300,
        near_copies: 300,
        ..Default::default()
    };
    let s = run(&config, DedupConfig::new(), 512);
    assert!(s.exact_recall >= 0.95, "exact recall {}", s.exact_recall);
    assert!(s.near_recall >= 0.95, "near recall {}", s.near_recall);
    assert!(
        s.unique_removed <= 0.01,
        "unique removed {}",
        s.unique_removed
    );
}

#[test]
fn short_documents_and_heavier_edits() {
    // 20-60 words with 5% of the words edited: harder than the default corpus.
    let config = SyntheticConfig {
        unique_docs: 1500,
        exact_copies: 150,
        near_copies: 150,
        min_words: 20,
        max_words: 60,
        edit_fraction: 0.05,
        seed: 7,
        ..Default::default()
    };
    let s = run(&config, DedupConfig::new(), 100);
    assert!(s.exact_recall >= 0.95, "exact recall {}", s.exact_recall);
    assert!(s.near_recall >= 0.95, "near recall {}", s.near_recall);
    assert!(
        s.unique_removed <= 0.01,
        "unique removed {}",
        s.unique_removed
    );
}

#[test]
fn exact_mode_finds_exact_copies_only() {
    let config = SyntheticConfig {
        unique_docs: 500,
        exact_copies: 50,
        near_copies: 50,
        ..Default::default()
    };
    let s = run(&config, DedupConfig::new().with_mode(DedupMode::Exact), 64);
    assert!(s.exact_recall >= 0.99, "exact recall {}", s.exact_recall);
    assert_eq!(s.near_recall, 0.0);
    assert_eq!(s.unique_removed, 0.0);
}

#[test]
fn the_result_does_not_depend_on_the_batch_size() {
    let config = SyntheticConfig {
        unique_docs: 300,
        exact_copies: 30,
        near_copies: 30,
        ..Default::default()
    };
    let corpus = planted_corpus(&config);
    let kept = |batch: usize| {
        let mut p = CorpusPipeline::new(CleanConfig::new(), DedupConfig::new()).unwrap();
        corpus
            .documents
            .chunks(batch)
            .flat_map(|c| p.process(c.to_vec()))
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(1), kept(97));
}
